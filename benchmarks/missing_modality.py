"""mIoU with depth missing at inference, on the known-answer data, per cue group.

Trains, under one budget on one data set: (a) a fused RGB-D model with `train.modality_dropout`,
(b) the same model without it, (c) the RGB-only model; then evaluates (a) and (b) on the test
split with depth present and with depth absent (`eval --drop depth`: zeros after normalisation,
or the method's own rule), and (c) as it is. Prints a markdown table (also results.md/.json).

    python benchmarks/missing_modality.py --out runs/missing [--steps 300] [--fusion early_concat]
        [--dropout 0.3] [--num 300] [--size 60 80]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fusescope.bench.known_answer import CUE_COLUMNS, resolve_config
from fusescope.config import load_config
from fusescope.engine.evaluate import evaluate_run
from fusescope.engine.train import train


def pct(x) -> str:
    return "  n/a" if x is None or x != x else f"{100 * x:5.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/missing_modality")
    parser.add_argument("--fusion", default="early_concat", help="config under configs/synthetic")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--dropout",
        default="0.3",
        help="train.modality_dropout of model (a), e.g. 0.5 or '{depth: 0.5}'",
    )
    parser.add_argument("--num", type=int, default=300, help="frames generated")
    parser.add_argument("--size", type=int, nargs=2, default=[60, 80], metavar=("H", "W"))
    args = parser.parse_args()

    out = Path(args.out)
    common = [
        f"data.root={out / 'data'}",
        f"data.synth.num={args.num}",
        f"data.synth.size=[{args.size[0]},{args.size[1]}]",
        f"train.max_steps={args.steps}",
        "train.progress=false",
    ]
    models = [
        ("(a) fused + dropout", args.fusion, [f"train.modality_dropout={args.dropout}"]),
        ("(b) fused, no dropout", args.fusion, []),
        ("(c) RGB only", "rgb_only", []),
    ]
    rows = []
    for label, name, extra in models:
        run = out / f"{name}{'_dropout' if extra else ''}"
        start = time.perf_counter()
        train(load_config(resolve_config(name), [*common, *extra]), run)
        seconds = time.perf_counter() - start
        evals = (
            [("rgb", None)]
            if name == "rgb_only"
            else [("rgb + depth", None), ("rgb, depth missing", ["depth"])]
        )
        for inputs, drop in evals:
            result = evaluate_run(run, split="test", drop=drop)
            groups = result.get("cue_group_miou", {})
            rows.append(
                {
                    "model": label,
                    "config": name,
                    "inputs": inputs,
                    "miou": result["miou"],
                    **{c: groups.get(c) for c in CUE_COLUMNS},
                    "train_s": seconds,
                }
            )
            print(rows[-1], flush=True)
    head = "| model | inputs at test | mIoU | appearance-only | geometry-only | both-cue |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['inputs']} | {pct(r['miou'])} | "
            f"{pct(r['appearance'])} | {pct(r['geometry'])} | {pct(r['both'])} |"
        )
    table = "\n".join(lines)
    settings = (
        f"{args.fusion}, {args.steps} steps, modality_dropout {args.dropout}, "
        f"{args.num} frames of {args.size[0]}x{args.size[1]}, test split"
    )
    (out / "results.md").write_text(f"{settings}\n\n{table}\n")
    (out / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"\n{settings}\n\n{table}")


if __name__ == "__main__":
    main()
