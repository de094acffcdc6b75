"""SA-Gate maps of a trained sagate run, like the paper's Fig. 4: per pixel, how much each gate
trusts the first modality (red) versus the second (blue); optionally on corrupted inputs too, to
see whether the gates move away from bad depth.

Run: python benchmarks/sagate_gates.py RUN [--corrupt depth_noise:4] [--split val] [--num 4]
     [--out RUN/gates.png]
Prints the mean first-modality weight per stage (clean, and corrupted if asked) and writes one
PNG per condition.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fusescope.data.build import eval_dataset
from fusescope.data.corruptions import make_corruption
from fusescope.dissect.taps import FeatureTaps, Tap
from fusescope.engine.checkpoint import load_run
from fusescope.models.fusion.sagate import SAGateNet, save_gate_figure


@torch.no_grad()
def record_gate_maps(model: SAGateNet, batch: dict, stages: list[int]) -> dict[int, torch.Tensor]:
    """The gate maps {stage: (B, 1, h, w)} of an eval-mode pass, read by taps on `fuse.<stage>`
    (element 3 of a gate's output: the first modality's weight, with aggregation 'proposed')."""
    taps = {str(s): Tap(f"fuse.{s}", index=3) for s in stages}
    was_training = model.training
    model.eval()
    try:
        with FeatureTaps(model, taps) as tapped:
            model(batch)
            return {int(s): a for s, a in tapped.features.items()}
    finally:
        model.train(was_training)


def gate_maps(run, split: str, num: int, corrupt: str | None) -> tuple[dict, dict]:
    """Gate maps and the raw (unnormalised) inputs for the first `num` samples of `split`."""
    corruption = make_corruption(corrupt) if corrupt else None
    ds = eval_dataset(
        run.cfg.data, split, run.stats, corruption=corruption, seed=run.cfg.train.seed
    )
    samples = [ds[i] for i in range(min(num, len(ds)))]
    batch = {m: torch.stack([s[m] for s in samples]) for m in run.model.modalities}
    raw = [ds.load_raw(i) for i in range(len(samples))]
    if corruption is not None:  # the same per-sample seeds the data set used
        import numpy as np

        raw = [
            corruption(r, np.random.default_rng([ds.seed, 1, i]), ds.meta)
            for i, r in enumerate(raw)
        ]
    images = {m: torch.stack([torch.as_tensor(r[m]) for r in raw]) for m in run.model.modalities}
    proposed = run.cfg.model.get("aggregation", "proposed") == "proposed"
    stages = run.model.gated if proposed else []
    return record_gate_maps(run.model, batch, stages), images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--split", default="val")
    p.add_argument("--num", type=int, default=4)
    p.add_argument("--corrupt", default=None, metavar="KIND:SEVERITY")
    p.add_argument("--out", default=None, help="PNG path (default RUN/gates.png)")
    args = p.parse_args()
    run = load_run(args.run)
    if not isinstance(run.model, SAGateNet):
        raise SystemExit(f"{args.run}: not a sagate run ({run.cfg.model.name})")
    out = Path(args.out) if args.out else Path(args.run) / "gates.png"
    names = tuple(run.model.modalities)
    for corrupt in [None, args.corrupt] if args.corrupt else [None]:
        gates, images = gate_maps(run, args.split, args.num, corrupt)
        path = (
            out
            if corrupt is None
            else out.with_name(f"{out.stem}_{corrupt.replace(':', '')}{out.suffix}")
        )
        save_gate_figure(path, gates, images, names=names)
        means = ", ".join(f"stage {s}: {a.mean():.3f}" for s, a in sorted(gates.items()))
        print(f"{corrupt or 'clean':>16}  mean {names[0]} weight  {means}  -> {path}")


if __name__ == "__main__":
    main()
