"""Dissection speed, as ratios measured in one run on one machine.

Headline (the default): the README's dissection of the demo's runs against the time it takes to
train them. Generates the demo's data (`fusescope demo`'s size: 400 frames of 96x128, untimed),
trains rgb_only, depth_only and two_stream_concat for the demo's 250 steps each (timed: the
training alone), then runs `fusescope dissect`'s protocol and report on them with its defaults
(timed: loading, feature pass, Net2Vec, SVar / CKA, Grad-CAM, report), and prints

    ratio = dissection seconds / seconds to train the three runs

with the dissection's breakdown and its known-answer verdicts. `--every-pixel` also times the
dissection with Net2Vec trained on every label pixel (`--pixels 0`) in the same run.

`--micro` runs the component benchmarks instead (seconds each):
1. Net2Vec: all concepts of a layer at once (one C-output 1x1 conv, one pass per epoch) vs one
   concept at a time (the textbook loop), same epochs, same data.
2. Net2Vec held-out scoring: the 12 probes of one feature (3 splits x 2 folds, held out and
   noise floor) as one `ProbeBank` vs trained one after another, every pixel; and the bank
   on sampled pixels.
3. CKA of every pair of L tapped layers on a probe set: one streaming pass with
   `CKAAccumulator` (one (L, B*B) matmul per batch) vs `linear_cka` called per pair on stored
   activations (the usual notebook way).
4. Memory as the probe set grows: peak resident memory of a fresh process that streams N probe
   images through the CKA accumulator (activations made on the fly, as a model would), for
   growing N. Bounded means flat.

Times of the micro benchmarks: the contenders of each table run interleaved round by round
after warm-up rounds (benchmarks/timing.py); medians, printed with their ratio.

    python benchmarks/dissect_speed.py [--out DIR] [--every-pixel]
    python benchmarks/dissect_speed.py --micro [--quick] [--steps 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import interleave  # benchmarks/timing.py

from fusescope.dissect import CKAAccumulator, Net2Vec, linear_cka
from fusescope.dissect.net2vec import HeldOutSplit, cached_batches, probe_stats

DEMO_RUNS = ("rgb_only", "depth_only", "two_stream_concat")


def net2vec_data(n: int, channels: int, concepts: int, size=(60, 80), stride: int = 8):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, concepts, (n, size[0] // 10, size[1] // 10), generator=g)
    labels = labels.repeat_interleave(10, 1).repeat_interleave(10, 2)  # blocky regions
    acts = torch.randn(n, channels, size[0] // stride, size[1] // stride, generator=g)
    return [(acts[i : i + 16], labels[i : i + 16]) for i in range(0, n, 16)]


def bench_net2vec(quick: bool, steps: int, warmup: int) -> dict:
    """Cached activations (pure probe compute) and activations recomputed by a small conv net
    every pass (a probe set too large to cache: one-at-a-time needs C times the passes)."""
    concepts, channels, epochs = 15, 256, 2 if quick else 4
    pairs = net2vec_data(64 if quick else 128, channels, concepts)
    cached = cached_batches(pairs)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 128, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(128, channels, 3, 2, 1),
        torch.nn.ReLU(),
    ).eval()
    images = [torch.randn(a.shape[0], 3, 60, 80) for a, _ in pairs]

    def recomputed():
        for image, (_, labels) in zip(images, pairs, strict=True):
            with torch.no_grad():  # not around the yield: grad mode would leak to the consumer
                acts = net(image)
            yield acts, labels

    out = {"concepts": concepts, "channels": channels, "epochs": epochs}
    for name, source in (("cached", cached), ("recomputed", recomputed)):
        net2vec = Net2Vec(concepts, epochs=epochs)
        stats = probe_stats(source, concepts)
        t = interleave(
            {
                "together": lambda n=net2vec, s=source, st=stats: n.fit(s, stats=st),
                "alone": lambda n=net2vec, s=source, st=stats: [
                    n.fit_one_concept(s, c, stats=st) for c in range(concepts)
                ],
            },
            steps,
            warmup,
        )
        together, alone = t["together"], t["alone"]
        out[name] = {
            "all_at_once_s": together,
            "one_at_a_time_s": alone,
            "speedup": alone / together,
            "data_passes": {"all_at_once": epochs + 1, "one_at_a_time": concepts * (epochs + 1)},
        }
    return out


def bench_probe_bank(quick: bool, steps: int, warmup: int) -> dict:
    """One feature's 12 held-out probes (3 splits x 2 folds, held out and noise floor) at the
    demo's probe size (60 images, 96x128 labels, a stride-8 layer of 256 channels, 14 classes):
    trained as one bank vs one after another (`Net2Vec.cross_validated` per split), both on
    every pixel, and the bank on the protocol's sampled pixels."""
    from fusescope.dissect.protocol import PROBE_PIXELS

    g = torch.Generator().manual_seed(0)
    n, concepts, channels = (24 if quick else 60), 14, 256
    labels = torch.randint(0, concepts, (n, 12, 16), generator=g)
    labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (n, 96, 128)
    acts = torch.randn(n, channels, 12, 16, generator=g)
    epochs = 3 if quick else 10
    splits = [HeldOutSplit(s, floor) for floor in (False, True) for s in range(3)]
    every, sampled = (
        Net2Vec(concepts, epochs=epochs),
        Net2Vec(concepts, epochs=epochs, pixels=PROBE_PIXELS),
    )
    t = interleave(
        {
            "one_after_another": lambda: [
                every.cross_validated(acts, labels, seed=s.seed, noise_floor=s.noise_floor)
                for s in splits
            ],
            "bank": lambda: every.held_out(acts, labels, splits),
            "bank_sampled": lambda: sampled.held_out(acts, labels, splits),
        },
        steps,
        warmup,
    )
    return {
        "probes": 2 * len(splits),
        "images": n,
        "epochs": epochs,
        "pixels_sampled": PROBE_PIXELS,
        "seconds": t,
        "bank_speedup_every_pixel": t["one_after_another"] / t["bank"],
        "bank_sampled_speedup": t["one_after_another"] / t["bank_sampled"],
    }


def layer_features(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """ResNet-like stage shapes of three models at a 60x80 probe, L = 12 features."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 15, 20), (128, 8, 10), (256, 4, 5), (512, 2, 3)]
    return {
        f"m{m}/s{s}": torch.randn(n, *shape, generator=g).relu()
        for m in range(3)
        for s, shape in enumerate(shapes)
    }


def bench_cka(quick: bool, steps: int, warmup: int) -> dict:
    n, batch = (64, 16) if quick else (192, 32)
    feats = layer_features(n)
    names = list(feats)

    def streaming():
        acc = CKAAccumulator(names, debiased=True)
        for i in range(0, n, batch):
            acc.update({k: v[i : i + batch] for k, v in feats.items()})
        return acc.result()

    def pairwise():
        return [[linear_cka(feats[a], feats[b], debiased=True) for b in names] for a in names]

    t = interleave({"streaming": streaming, "pairwise": pairwise}, steps, warmup)
    stream_s, pair_s = t["streaming"], t["pairwise"]
    return {
        "layers": len(names),
        "pairs": len(names) ** 2,
        "examples": n,
        "batch": batch,
        "accumulator_s": stream_s,
        "pairwise_full_s": pair_s,
        "speedup": pair_s / stream_s,
    }


def memory_child(n: int) -> None:
    """Stream n probe images (made batch by batch) through the accumulator; print peak RSS."""
    torch.set_num_threads(1)
    names = list(layer_features(1))
    acc = CKAAccumulator(names, debiased=True)
    for i in range(0, n, 16):
        acc.update(layer_features(min(16, n - i), seed=i))
    acc.result()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def bench_memory(quick: bool) -> dict:
    sizes = [64, 256] if quick else [64, 256, 1024]
    peaks = {}
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[n] = int(out.stdout.split()[-1]) / 1024  # MiB
    per_image_mib = sum(v[0].numel() for v in layer_features(1).values()) * 4 / 2**20
    return {
        "probe_sizes": sizes,
        "peak_rss_mib": peaks,
        "growth_largest_vs_smallest": peaks[sizes[-1]] / peaks[sizes[0]],
        "stored_activations_mib_at_largest": per_image_mib * sizes[-1],
    }


def train_demo_runs(out: Path, steps: int, num: int) -> dict[str, float]:
    """The demo's data (untimed), then the three runs trained one after another; seconds of
    each training."""
    from fusescope.bench import DEMO_DEFAULTS
    from fusescope.bench.known_answer import resolve_config
    from fusescope.config import load_config
    from fusescope.data.build import ensure_data
    from fusescope.engine.train import train

    size = DEMO_DEFAULTS["size"]
    common = [
        f"data.root={out / 'data'}",
        f"data.synth={{num: {num}, seed: 0, size: [{size[0]}, {size[1]}]}}",
        f"train.max_steps={steps}",
        "train.progress=false",
    ]
    ensure_data(load_config(resolve_config("rgb_only"), common).data, progress=False)
    seconds = {}
    for name in DEMO_RUNS:
        cfg = load_config(resolve_config(name), common)
        start = time.perf_counter()
        train(cfg, out / name)
        seconds[name] = time.perf_counter() - start
    return seconds


def time_dissection(out: Path, pixels: int | None) -> dict:
    """`fusescope dissect`'s work on the three runs (defaults but `pixels`), timed in parts."""
    from fusescope.dissect import net2vec as net2vec_module
    from fusescope.dissect.protocol import DissectOptions, dissect, load_runs
    from fusescope.dissect.report import write_report

    probe_s = 0.0
    held_out = net2vec_module.Net2Vec.held_out

    def timed_held_out(self, *args, **kwargs):
        nonlocal probe_s
        start = time.perf_counter()
        try:
            return held_out(self, *args, **kwargs)
        finally:
            probe_s += time.perf_counter() - start

    net2vec_module.Net2Vec.held_out = timed_held_out
    try:
        start = time.perf_counter()
        runs = load_runs(*(out / name for name in DEMO_RUNS))
        result = dissect(runs, DissectOptions(pixels=pixels))
        protocol_s = time.perf_counter() - start
        write_report(result, out / f"report_pixels{pixels or 0}")
        total = time.perf_counter() - start
    finally:
        net2vec_module.Net2Vec.held_out = held_out
    by_level = result.results["specialisation_by_level"]
    return {
        "pixels": pixels,
        "seconds": total,
        "net2vec_s": probe_s,
        "rest_of_protocol_s": protocol_s - probe_s,
        "report_s": total - protocol_s,
        "verdicts": {
            f"stage {int(lvl) + 1}": {
                key: f"{verdict} (lead {spec['known_answer_detail'][key]['lead']:+.3f})"
                for key, verdict in spec.get("known_answer", {}).items()
            }
            for lvl, spec in by_level.items()
        },
    }


def headline(out: Path | None, steps: int, num: int, every_pixel: bool) -> dict:
    from fusescope.dissect.protocol import PROBE_PIXELS

    with tempfile.TemporaryDirectory(prefix="dissect_speed-") as tmp:
        folder = out or Path(tmp)
        train_s = train_demo_runs(folder, steps, num)
        dissections = [time_dissection(folder, PROBE_PIXELS)]
        if every_pixel:
            dissections.append(time_dissection(folder, None))
    total_train = sum(train_s.values())
    return {
        "threads": torch.get_num_threads(),
        "demo": {"frames": num, "steps": steps, "train_s": train_s, "train_total_s": total_train},
        "dissection": dissections,
        "ratio_dissection_over_training": {
            f"pixels={d['pixels'] or 'all'}": d["seconds"] / total_train for d in dissections
        },
    }


def main() -> None:
    from fusescope.bench import DEMO_DEFAULTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the runs and reports here (default: temp)")
    parser.add_argument("--steps", type=int, default=DEMO_DEFAULTS["steps"], help="per run")
    parser.add_argument("--num", type=int, default=DEMO_DEFAULTS["num"], help="frames generated")
    parser.add_argument(
        "--every-pixel", action="store_true", help="also time Net2Vec on every label pixel"
    )
    parser.add_argument("--micro", action="store_true", help="the component benchmarks instead")
    parser.add_argument("--quick", action="store_true", help="micro: smaller sizes (seconds)")
    parser.add_argument("--rounds", type=int, default=3, help="micro: timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="micro: untimed rounds first")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    torch.manual_seed(0)
    if not args.micro:
        print(json.dumps(headline(args.out, args.steps, args.num, args.every_pixel), indent=2))
        return
    result = {
        "threads": torch.get_num_threads(),
        "rounds": {"timed": args.rounds, "warmup": args.warmup, "statistic": "median"},
        "net2vec": bench_net2vec(args.quick, args.rounds, args.warmup),
        "probe_bank": bench_probe_bank(args.quick, args.rounds, args.warmup),
        "cka": bench_cka(args.quick, args.rounds, args.warmup),
        "memory": bench_memory(args.quick),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
