"""Power of the dissection's known-answer check on fresh data seeds, at the demo's size and budget.

For every seed folder `RUNS/s<seed>` holding `rgb_only/` and `depth_only/` runs trained as the
demo trains them (320 frames of 96x128, 250 steps; `data/` beside them) this script makes one
feature pass of the two encoders over the probe images at every level, then reads the
known-answer check ("RGB leads on the appearance-only classes, depth on the geometry-only
ones") under each probe setting with the protocol's own functions: `Net2Vec.held_out` (held out
and noise floor) and `specialisation` (the margin rule: a lead beyond max(0.02, 2 sd over probe
splits), the leader that far above its floor). Only the separately trained runs enter the check,
so the joint run is not needed here.

It prints, per setting and level, each seed's two verdicts with their leads, and the rate of
seeds where both say "yes". Settings (`--settings`, default: `default`): `default` is the
protocol's own on these folders (200 new frames of the generator, `fresh_probe_frames`; 2 folds
x 3 splits; 1024 sampled pixels), the others vary one thing (`SETTINGS`; `test-split` is the
default before: the folder's 48-image test split, 3 splits). The runs:

    for s in 11 12 ...; do for c in rgb_only depth_only; do
      fusescope train configs/synthetic/$c.yaml --out runs/power/s$s/$c \\
        data.root=runs/power/s$s/data "data.synth={num: 320, seed: $s, size: [96, 128]}" \\
        train.max_steps=250
    done; done
    python benchmarks/dissect_power.py --runs runs/power --seeds 11 12 13 14 15 16 17 18
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fusescope.data.batching import collate
from fusescope.dissect.net2vec import HeldOutSplit, Net2Vec
from fusescope.dissect.protocol import (
    PROBE_PIXELS,
    DissectOptions,
    ProbeSet,
    RunInput,
    probe_splits,
    render_probe_frames,
    specialisation,
)
from fusescope.dissect.taps import Tap, stream_features
from fusescope.engine.checkpoint import load_run


@dataclass(frozen=True)
class Setting:
    """One way of probing: which images, how the probes are split and trained (unset fields:
    the protocol's defaults, `DissectOptions`)."""

    name: str
    split: str = "test"
    folds: int = DissectOptions.folds
    seeds: int = DissectOptions.seeds
    epochs: int = DissectOptions.epochs
    pixels: int | None = PROBE_PIXELS
    fresh: int | None = None  # probe on this many newly rendered frames instead of `split`

    @property
    def images(self) -> str:
        """Which probe images: the key the feature cache is shared under."""
        return f"fresh{self.fresh}" if self.fresh else self.split


SETTINGS = {
    s.name: s
    for s in (
        # the protocol's default on a known-answer folder whose test split is small: probe_size
        # (200) new frames of its generator (`fresh_probe_frames`), 3 k-fold splits
        Setting("default", fresh=200),
        Setting("fresh200,seeds5", fresh=200, seeds=5),
        Setting("fresh200,pixels256", fresh=200, pixels=256, seeds=3),
        Setting("fresh200,pixels256,seeds5", fresh=200, pixels=256, seeds=5),
        Setting("fresh400,pixels256,seeds5", fresh=400, pixels=256, seeds=5),
        # the default before this setting: the folder's test split (60 images of the demo's
        # data, 48 of 320 frames), 3 splits; and larger or differently split probes of it
        Setting("test-split", split="test", seeds=3),
        Setting("val+test", split="val+test", seeds=3),
        Setting("folds4", folds=4, seeds=3),
        Setting("val+test,folds4", split="val+test", folds=4, seeds=3),
        Setting("val+test,folds4,seeds5", split="val+test", folds=4, seeds=5),
        Setting("every-pixel", pixels=None, seeds=3),
    )
}


def features(seed_dir: Path, setting: Setting, levels: list[int], batch_size: int = 16):
    """{(modality, level): (acts (N, K, h, w), labels (N, H, W))} and the data's meta."""
    runs = {m: load_run(seed_dir / f"{m}_only") for m in ("rgb", "depth")}
    root, splits = runs["rgb"].cfg.data.root, probe_splits(setting.split)
    if setting.fresh:
        # new frames of the same generator, as `dissect` renders them (a seed the runs never
        # drew from), kept beside the runs for the other settings and later calls
        record = ProbeSet(root, splits, ["rgb", "depth"]).meta.extra["generator"]
        root, splits = seed_dir / f"probe{setting.fresh}", ["train", "val", "test"]
        if not root.exists():
            render_probe_frames(record, setting.fresh, root, progress=False)
    ds = ProbeSet(root, splits, ["rgb", "depth"])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    taps = {(m, lvl): (m, Tap("encoder", index=lvl)) for m in runs for lvl in levels}
    adapt = {m: RunInput(run, "cpu") for m, run in runs.items()}
    cache: dict = {k: ([], []) for k in taps}
    models = {m: r.model.eval() for m, r in runs.items()}
    for batch, feats in stream_features(models, taps, loader, adapt=adapt):
        for k in taps:
            cache[k][0].append(feats[k].cpu())
            cache[k][1].append(batch["label"].cpu())
    out = {k: (torch.cat(a), torch.cat(b)) for k, (a, b) in cache.items()}
    return out, runs["rgb"].meta


def verdicts(feats, meta, setting: Setting, level: int) -> dict:
    """The protocol's known-answer reading of the two separate encoders at `level`."""
    opts = DissectOptions()
    net2vec = Net2Vec(
        meta.num_classes,
        epochs=setting.epochs,
        lr=opts.lr,
        ignore_index=meta.ignore_index,
        pixels=setting.pixels,
    )
    splits = [HeldOutSplit(s, floor) for floor in (False, True) for s in range(setting.seeds)]
    held, floors = {}, {}
    for m in ("rgb", "depth"):
        acts, labels = feats[(m, level)]
        scores = net2vec.held_out(acts, labels, splits, folds=setting.folds)
        held[f"{m}_sep"], floors[f"{m}_sep"] = scores[: setting.seeds], scores[setting.seeds :]
    spec = specialisation(held, floors, meta, level, opts.margin, opts.margin_known)
    return {
        key: {
            "verdict": verdict,
            "lead": round(spec["known_answer_detail"][key]["lead"], 4),
            "threshold": round(spec["known_answer_detail"][key]["threshold"], 4),
        }
        for key, verdict in spec.get("known_answer", {}).items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/power"))
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=["default"], choices=list(SETTINGS))
    args = parser.parse_args()
    settings = [SETTINGS[name] for name in args.settings]
    table: dict = {}
    for seed in args.seeds:
        seed_dir = args.runs / f"s{seed}"
        by_split: dict = {}
        for setting in settings:
            if setting.images not in by_split:
                by_split[setting.images] = features(seed_dir, setting, args.levels)
            feats, meta = by_split[setting.images]
            for level in args.levels:
                start = time.perf_counter()
                result = verdicts(feats, meta, setting, level)
                row = {"seconds": round(time.perf_counter() - start, 1), **result}
                table.setdefault(setting.name, {}).setdefault(f"stage {level + 1}", {})[seed] = row
                print(json.dumps({"seed": seed, "setting": setting.name, "level": level, **row}))
    summary = {}
    for name, by_level in table.items():
        for stage, by_seed in by_level.items():
            both = sum(
                len(row) == 3  # seconds + the two checks
                and all(v["verdict"] == "yes" for k, v in row.items() if k != "seconds")
                for row in by_seed.values()
            )
            summary[f"{name} / {stage}"] = f"{both}/{len(by_seed)} seeds both yes"
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "settings": {s.name: asdict(s) for s in settings},
                "rate": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
