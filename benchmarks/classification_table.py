"""The measured known answer of classification: every config of configs/classification trained
in turn (finished runs are kept), evaluated on its test split, printed as two tables
(known-answer posters, RGB-D frames): micro / macro F1 overall and F1 per cue group at the
published threshold 0.5 (every MM-IMDB paper's), and beside them micro / macro F1 at the
threshold tuned on validation (`fusescope eval`'s "tuned").

Run:  nice -n 10 python benchmarks/classification_table.py --runs runs/classification
      [--only posters] [--configs NAME ...] [KEY=VALUE ...]  (overrides for every config)
Several such processes may share one --runs folder (e.g. one per table, or one from each end
with --reverse): a run another process is training is skipped, and `--table-only` prints the
tables of the finished runs at the end.

What the tables must show (the data are built so): the poster-only model fails the text-cue
genres, the text-only model the appearance-cue genres, and fusion recovers both; on the RGB-D
frames, RGB alone fails the geometry-cue classes and depth alone the appearance-cue classes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fusescope.config import load_config
from fusescope.engine.evaluate import evaluate_run
from fusescope.engine.train import train
from fusescope.errors import FusescopeError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "classification"
GROUPS = {"posters": ("appearance", "text", "both"), "frames": ("appearance", "geometry", "both")}


def run_one(config: Path, runs: Path, overrides: list[str]) -> dict | None:
    """Train (or keep) the run of `config` and evaluate it; the result plus the CPU seconds of
    its training and evaluation (None: another process is training it)."""
    out = runs / config.stem
    row = out / "table_row.json"
    if row.is_file():
        return json.loads(row.read_text())
    cfg = load_config(config, ["train.progress=false", *overrides])
    start = time.process_time()
    try:
        train(cfg, out)
    except FusescopeError as err:
        if "another fusescope process" not in str(err):
            raise
        print(f"{config.stem}: skipped, {err}", flush=True)
        return None
    result = evaluate_run(out)
    result["cpu_seconds"] = time.process_time() - start
    row.write_text(json.dumps(result))
    return result


def table(kind: str, rows: list[tuple[str, dict]]) -> str:
    """Markdown: overall micro / macro F1 at 0.5, the same tuned on validation (threshold in
    brackets) and mAP, then per cue group F1 at 0.5 (beside the F1 of predicting the label for
    every sample, what a label whose cue is invisible still gets) and average precision
    (threshold-free; chance = the label's prevalence)."""
    groups = GROUPS[kind]
    head = (
        "| config | micro-F1 | macro-F1 | tuned micro / macro (t) | mAP | "
        + " | ".join(f"{g}: F1 (all-on) / AP" for g in groups)
        + " |"
    )
    lines = [head, "|" + "---|" * (5 + len(groups))]
    for name, r in rows:
        f1, ap, floor = (
            r.get(k, {}) for k in ("cue_group_f1", "cue_group_ap", "cue_group_chance_f1")
        )
        cells = [
            f"{100 * r['micro_f1']:.1f}",
            f"{100 * r['macro_f1']:.1f}",
            (
                f"{100 * r['tuned']['micro_f1']:.1f} / {100 * r['tuned']['macro_f1']:.1f} "
                f"({r['tuned']['threshold']:.2f})"
                if "tuned" in r
                else "-"
            ),
            f"{100 * r['map']:.1f}" if "map" in r else "-",
        ]
        cells += [
            f"{100 * f1[g]:.1f} ({100 * floor[g]:.1f}) / {100 * ap[g]:.1f}"
            if g in f1 and g in ap
            else "-"
            for g in groups
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/classification", help="folder of the runs")
    parser.add_argument("--only", choices=sorted(GROUPS), help="one table only")
    parser.add_argument("--configs", nargs="+", metavar="NAME", help="these configs only")
    parser.add_argument("--reverse", action="store_true", help="configs in reverse order")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: print the tables of the finished runs",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)  # each run is measured on one core
    runs = Path(args.runs)
    for kind in sorted(GROUPS, reverse=True):
        if args.only and kind != args.only:
            continue
        configs = sorted(CONFIGS.glob(f"{kind}_*.yaml"), reverse=args.reverse)
        if args.configs:
            configs = [c for c in configs if c.stem in args.configs]
        rows = []
        for config in configs:
            if args.table_only:
                row = runs / config.stem / "table_row.json"
                result = None
                if row.is_file():  # evaluated again: the metrics of this version
                    result = {
                        **evaluate_run(runs / config.stem),
                        "cpu_seconds": json.loads(row.read_text())["cpu_seconds"],
                    }
            else:
                result = run_one(config, runs, args.overrides)
            if result is None:
                continue
            rows.append((config.stem, result))
            print(
                f"{config.stem}: micro-F1 {100 * result['micro_f1']:.1f}  macro-F1 "
                f"{100 * result['macro_f1']:.1f}  ({result['cpu_seconds']:.0f} CPU s)",
                flush=True,
            )
        rows.sort()
        print(
            f"\n{kind} (test split, F1 at threshold 0.5; tuned: threshold chosen on val)\n"
            f"{table(kind, rows)}\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
