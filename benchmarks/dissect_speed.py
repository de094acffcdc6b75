"""Dissection speed and memory, as ratios measured in one run on one machine.

1. Net2Vec: all concepts of a layer at once (one C-output 1x1 conv, one pass per epoch) vs one
   concept at a time (the textbook loop), same epochs, same data.
2. CKA of every pair of L tapped layers on a probe set: one streaming pass with
   `CKAAccumulator` (one (L, B*B) matmul per batch) vs `linear_cka` called per pair on stored
   activations (the usual notebook way).
3. Memory as the probe set grows: peak resident memory of a fresh process that streams N probe
   images through the CKA accumulator (activations made on the fly, as a model would), for
   growing N. Bounded means flat.

Times: the contenders of each table run interleaved round by round after warm-up rounds
(benchmarks/timing.py); medians, printed with their ratio.

    python benchmarks/dissect_speed.py [--quick] [--steps 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from timing import interleave  # benchmarks/timing.py

from fusescope.dissect import CKAAccumulator, Net2Vec, linear_cka
from fusescope.dissect.net2vec import cached_batches, probe_stats


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    torch.manual_seed(0)
    result = {
        "threads": torch.get_num_threads(),
        "rounds": {"timed": args.steps, "warmup": args.warmup, "statistic": "median"},
        "net2vec": bench_net2vec(args.quick, args.steps, args.warmup),
        "cka": bench_cka(args.quick, args.steps, args.warmup),
        "memory": bench_memory(args.quick),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
