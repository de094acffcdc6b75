"""How CEN's channel exchanging switches on: the exchanged fraction of each stage's exchangeable
channels as training goes (from the run's metrics.jsonl), and the final |gamma| of every
exchange BN per modality against the threshold theta (from its weights).

Run: python benchmarks/cen_exchange.py RUN [RUN ...] [--out cen_exchange.png]
Prints, per run, the step at which each stage first exchanges a channel and its final fraction,
and writes one PNG with a row per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fusescope.engine.checkpoint import load_run
from fusescope.io import atomic_path
from fusescope.models.fusion.exchange import ChannelExchange


def exchange_curves(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{stage key: (steps, fractions)} read from metrics.jsonl."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    with open(run_dir / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            for key, value in row.items():
                if key.startswith("exchanged/"):
                    steps, values = curves.setdefault(key.split("/", 1)[1], ([], []))
                    steps.append(row["step"])
                    values.append(value)
    return curves


def final_gammas(run_dir: Path) -> tuple[list[str], list[torch.Tensor], float]:
    """Per modality, |gamma| of the exchangeable part of every exchange BN, and theta."""
    run = load_run(run_dir)
    ops = [m for m in run.model.modules() if isinstance(m, ChannelExchange)]
    if not ops:
        raise SystemExit(f"{run_dir}: not a CEN run ({run.cfg.model.name})")
    per_modality = [
        torch.cat([op.gamma.detach().abs()[m][op.own[m]] for op in ops])
        for m in range(len(run.model.modalities))
    ]
    return run.model.modalities, per_modality, ops[0].theta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("cen_exchange.png"))
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.runs), 2, figsize=(10, 3.2 * len(args.runs)), squeeze=False)
    for row, run_dir in zip(axes, args.runs, strict=True):
        curves = exchange_curves(run_dir)
        print(f"{run_dir}:")
        for stage, (steps, values) in curves.items():
            first = next((s for s, v in zip(steps, values, strict=True) if v > 0), None)
            print(f"  {stage}: first exchange at step {first}, final fraction {values[-1]:.3f}")
            row[0].plot(steps, values, label=stage)
        row[0].set(
            title=f"{run_dir.name}: exchanged fraction",
            xlabel="step",
            ylabel="fraction of exchangeable channels",
            ylim=(-0.02, 1.02),
        )
        row[0].legend(fontsize=8)
        names, gammas, theta = final_gammas(run_dir)
        top = max(float(g.max()) for g in gammas)
        bins = torch.logspace(-4, float(torch.log10(torch.tensor(max(top, 1e-3)))), 40)
        for name, g in zip(names, gammas, strict=True):
            row[1].hist(g.clamp_min(1e-4).numpy(), bins=bins.numpy(), alpha=0.6, label=name)
        row[1].axvline(theta, color="k", linestyle="--", label=f"theta = {theta:g}")
        row[1].set(
            xscale="log",
            title="final |gamma| of the exchangeable channels",
            xlabel="|gamma|",
            ylabel="channels",
        )
        row[1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
