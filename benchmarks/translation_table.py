"""The translation table in the shape of CEN Tables 4 and 5, measured on the known-answer data.

Trains (or reuses, when finished) one run per row from `configs/translation/`, every run on the
same generated data, seed and budget, evaluates each on the validation split with the task's own
evaluation (`fusescope eval`'s numbers), and prints / writes:

* the table: L1, RMSE, PSNR, SSIM, FID, KID x 100, with the FID / KID feature network named
  (EfficientNet-Lite0 unless `--fid-weights` gives the Inception file: then comparable with
  CEN's numbers, otherwise only a ranking);
* `results.json`, `results.md` in `--out`;
* `grid.png`: for a few validation frames, the inputs, the target and each method's output.

The known answer: RGB = gain x texture x shade (+ sensor noise), so shade + texture -> RGB can be
near perfect, each alone cannot, and depth + normal cannot know colour.

Usage (CPU, sequential runs; ~25 CPU-minutes with the configs' budgets):
    nice -n 10 python benchmarks/translation_table.py --out runs/translation_table
    python benchmarks/translation_table.py --only cen unimodal_shade --steps 50  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fusescope.config import load_config  # noqa: E402
from fusescope.data.batching import collate  # noqa: E402
from fusescope.data.build import ensure_data  # noqa: E402
from fusescope.data.folder import load_modality  # noqa: E402
from fusescope.data.meta import load_meta  # noqa: E402
from fusescope.engine.checkpoint import WEIGHTS, load_run  # noqa: E402
from fusescope.engine.train import train  # noqa: E402
from fusescope.errors import FusescopeError  # noqa: E402
from fusescope.io import read_json, write_json  # noqa: E402
from fusescope.tasks import task_of  # noqa: E402

# (row label, group, config name): the groups are CEN Table 4's rows and Table 5's columns;
# Table 5's other single inputs, depth and normal, are in OPTIONAL_ROWS (--all, or --only)
ROWS = [
    ("Shade", "1 input", "unimodal_shade"),
    ("Texture", "1 input", "unimodal_texture"),
    ("CEN", "Shade+Texture", "cen"),
    ("AsymFusion", "Shade+Texture", "asymfusion"),
    ("Concat (all)", "Shade+Texture", "baseline_concat_all"),
    ("Self-att. (all)", "Shade+Texture", "baseline_attention_all"),
    ("Early concat", "Shade+Texture", "early_concat"),
    ("CEN", "Depth+Normal", "cen_depth_normal"),
    ("CEN", "Depth+Normal+Texture", "cen_depth_normal_texture"),
    ("CEN", "Depth+Normal+Texture+Shade", "cen_depth_normal_texture_shade"),
]
OPTIONAL_ROWS = [
    ("Depth", "1 input", "unimodal_depth"),
    ("Normal", "1 input", "unimodal_normal"),
    ("CEN, random 30% exchange", "Shade+Texture", "cen_random_exchange"),
]
GRID_INPUTS = ["shade", "texture", "depth", "normal"]


def run_row(name: str, out: Path, overrides: list[str], fid_weights: str | None) -> dict:
    cfg = load_config(ROOT / "configs" / "translation" / f"{name}.yaml", overrides)
    run = out / name
    started = time.perf_counter()
    if not (run / WEIGHTS).is_file():
        train(cfg, run)
    else:  # a finished run is scored again: its known-answer data may need generating here
        ensure_data(cfg.data, progress=False)
    seconds = time.perf_counter() - started
    loaded = load_run(run)
    if fid_weights:  # a finished run evaluates with the features asked for now
        loaded.cfg.eval.fid_weights = fid_weights
    task = task_of(loaded.cfg)
    ds = task.eval_dataset(loaded.cfg, loaded.cfg.eval.split, loaded.stats)
    result = task.evaluate(loaded.model, ds, loaded.cfg, loaded.meta)
    result["train_seconds"] = round(seconds, 1)
    result["steps"] = loaded.step
    return result


def to_display(x: torch.Tensor, kind: str) -> np.ndarray:
    """(C, H, W) -> uint8 (H, W, 3) for the grid: images as they are, depth and normalised inputs
    min-max stretched per image."""
    x = x.float()
    if kind != "unit":
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def sample_grid(out: Path, names: list[str], labels: list[str], frames: int, scale: int) -> Path:
    """Rows: validation frames; columns: the inputs, the target, each run's output."""
    first = load_run(out / names[0])
    task = task_of(first.cfg)
    picks = list(range(frames))
    columns: list[tuple[str, list[np.ndarray]]] = []
    # the inputs as the data set stores them (natural units), and the target
    raw_ds = task.eval_dataset(first.cfg, first.cfg.eval.split, first.stats)
    meta = load_meta(first.cfg.data.root)
    for m in GRID_INPUTS:
        col = []
        for i in picks:
            path = Path(first.cfg.data.root) / m / f"{raw_ds.ids[i]}.png"
            x = torch.from_numpy(load_modality(path, m, meta.modalities[m]))
            col.append(to_display(x, "unit" if meta.modalities[m].kind != "depth" else "depth"))
        columns.append((m, col))
    batch = collate([raw_ds[i] for i in picks])
    target = batch[f"target:{first.cfg.data.targets[0]}"]
    columns.append(("target", [to_display((t + 1) / 2, "unit") for t in target]))
    for name, label in zip(names, labels, strict=True):
        run = load_run(out / name)
        ds = task_of(run.cfg).eval_dataset(run.cfg, run.cfg.eval.split, run.stats)
        b = collate([ds[i] for i in picks])
        with torch.no_grad():
            image = run.model({k: v for k, v in b.items() if k != "id"})["image"]
        columns.append((label, [to_display((y + 1) / 2, "unit") for y in image]))
    h, w = columns[0][1][0].shape[:2]
    cell_w, head = w * scale, 14
    canvas = Image.new("RGB", (cell_w * len(columns), head + h * scale * len(picks)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (title, cells) in enumerate(columns):
        draw.text((c * cell_w + 2, 1), title[: cell_w // 6], fill="black")
        for r, cell in enumerate(cells):
            tile = Image.fromarray(cell).resize((cell_w, h * scale), Image.NEAREST)
            canvas.paste(tile, (c * cell_w, head + r * h * scale))
    path = out / "grid.png"
    canvas.save(path)
    return path


def streams(result: dict) -> str:
    """The multi-stream methods' per-modality outputs' L1 (the scored image is their ensemble)."""
    per = result.get("per_modality_l1") or {}
    return ", ".join(f"{m} {v:.4f}" for m, v in per.items()) or "-"


def table(rows: list[tuple[str, str, str]], results: dict[str, dict]) -> str:
    first = next(iter(results.values()))
    lines = [
        "| inputs -> RGB | method | L1 | RMSE | PSNR (dB) | SSIM | FID | KID x100 | L1 of each "
        "stream | steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, group, name in rows:
        r = results.get(name)
        if r is None:
            continue
        lines.append(
            f"| {group} | {label} | {r['l1']:.4f} | {r['rmse']:.4f} | {r['psnr']:.2f} | "
            f"{r['ssim']:.3f} | {r['fid']:.2f} | {r['kid']:.2f} | {streams(r)} | {r['steps']} |"
        )
    lines.append("")
    lines.append(
        f"FID / KID features: {first['feature_network']} "
        f"({'comparable' if first.get('comparable_to_inception') else 'a ranking only'}); "
        f"{first['per_target'][first['targets'][0]]['images']} validation images."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/translation_table", help="runs and results")
    parser.add_argument("--only", nargs="+", help="config names to run (default: every row)")
    parser.add_argument(
        "--all",
        action="store_true",
        help="also the depth-only, normal-only and CEN random-exchange rows",
    )
    parser.add_argument("--steps", type=int, help="override train.max_steps (quick looks)")
    parser.add_argument("--data-root", help="override data.root")
    parser.add_argument("--fid-weights", help="Inception weights file for FID / KID")
    parser.add_argument("--grid-frames", type=int, default=4)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = ["train.progress=false"]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.fid_weights:
        overrides.append(f"eval.fid_weights={args.fid_weights}")
    order = ROWS[:2] + OPTIONAL_ROWS[:2] + ROWS[2:7] + OPTIONAL_ROWS[2:] + ROWS[7:]
    rows = [r for r in order if (r in ROWS or args.all) and not args.only]
    rows += [r for r in order if args.only and r[2] in args.only]
    # rows measured before (another --only) stay in the table; a row run now replaces its own
    results = read_json(out / "results.json") if (out / "results.json").is_file() else {}
    for label, group, name in rows:
        print(f"{group}: {label} ({name}) ...", flush=True)
        results[name] = run_row(name, out, overrides, args.fid_weights)
        r = results[name]
        print(
            f"  L1 {r['l1']:.4f}  PSNR {r['psnr']:.2f}  SSIM {r['ssim']:.3f}  FID "
            f"{r['fid']:.2f}  KID x100 {r['kid']:.2f}  ({r['train_seconds']} s)",
            flush=True,
        )
    shown = [r for r in order if r[2] in results]
    text = table(shown, results)
    print(text)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(text + "\n")
    in_grid = [r for r in shown if (out / r[2] / WEIGHTS).is_file()]
    grid = sample_grid(
        out,
        [r[2] for r in in_grid],
        [f"{r[1]}: {r[0]}" for r in in_grid],
        args.grid_frames,
        scale=2,
    )
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {grid}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except FusescopeError as err:  # bad input: one line, as the CLI
        raise SystemExit(f"translation_table: error: {err}") from None
