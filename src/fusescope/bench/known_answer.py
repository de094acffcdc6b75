"""The known-answer benchmark: train several configs under one budget on the procedural RGB-D
data, evaluate on the test split, and report mIoU overall and per cue group.

By construction an RGB-only model cannot segment geometry-only classes and a depth-only model
cannot segment appearance-only classes; a fusion model should do well on both. `fusescope demo`
is this benchmark with three configs plus a picture of the predictions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import fusescope
from fusescope.bench import DEMO_DEFAULTS
from fusescope.config import load_config
from fusescope.data.build import eval_dataset
from fusescope.data.folder import FolderDataset
from fusescope.data.meta import CUES
from fusescope.engine.checkpoint import load_run
from fusescope.engine.device import cpu_threads, training_device
from fusescope.engine.dry_run import plan_training
from fusescope.engine.evaluate import evaluate_run, save_eval
from fusescope.engine.train import train
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, write_json
from fusescope.tasks.segmentation.evaluation import predict_probs

CUE_COLUMNS = ("appearance", "geometry", "both")  # always in a row; thermal where the data has it


def config_dir() -> Path:
    """configs/ of the source tree (editable install) or of the working directory."""
    for base in (Path(fusescope.__file__).resolve().parents[2], Path.cwd()):
        if (base / "configs" / "synthetic").is_dir():
            return base / "configs"
    raise FusescopeError("configs/synthetic not found: run from the fusescope repository")


def resolve_config(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FusescopeError(f"{path}: config not found")
        return path
    path = config_dir() / "synthetic" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FusescopeError(f"no config {name!r} in {path.parent}; known: {', '.join(known)}")
    return path


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _trained_to(run_dir: Path, max_steps: int) -> bool:
    """Whether the run folder already holds final weights for at least `max_steps` steps."""
    from omegaconf import OmegaConf

    saved = run_dir / "config.yaml"
    return (
        (run_dir / "model.safetensors").is_file()
        and saved.is_file()
        and OmegaConf.load(saved).train.max_steps >= max_steps
    )


def train_and_evaluate(
    config: Path,
    run_dir: Path,
    overrides: list[str],
    split: str = "test",
    device: str | None = None,
    batch_size: int | None = None,
) -> dict:
    """Train one config (or resume a finished run) and evaluate it; returns a table row.

    The evaluation runs on `device` (default: where the training ran) with `batch_size`
    (default: the config's eval.batch_size)."""

    cfg = load_config(config, overrides)
    finished = _trained_to(run_dir, cfg.train.max_steps)  # then train() only resumes: no time
    if finished:
        from omegaconf import OmegaConf

        # a run trained further than asked is used as it is: resuming it with a smaller
        # max_steps would be refused, so resume it with its own (train() still checks the rest)
        cfg.train.max_steps = OmegaConf.load(run_dir / "config.yaml").train.max_steps
    start = time.perf_counter()
    train(cfg, run_dir)
    seconds = None if finished else time.perf_counter() - start
    device = device or str(training_device(cfg.train.accelerator))
    # saved as `fusescope eval` saves it, so `fusescope compare` reads these runs too
    result = save_eval(
        run_dir,
        evaluate_run(run_dir, split=split, device=device, batch_size=batch_size, progress=True),
    )
    params = count_params(load_run(run_dir).model)
    groups = result.get("cue_group_miou", {})
    return {
        "method": config.stem,
        "run": str(run_dir),
        "miou": result["miou"],
        **{cue: groups.get(cue) for cue in (*CUE_COLUMNS, *groups)},
        "params_m": params / 1e6,
        "train_s": seconds,
        "per_class_iou": result["per_class_iou"],
        "class_names": result["class_names"],
    }


def format_table(rows: list[dict]) -> str:
    def pct(x):
        return "  n/a" if x is None or x != x else f"{100 * x:5.1f}"

    width = max([22, *(len(r["method"]) for r in rows)])
    # the cue groups in the data's order, thermal only where the data has it (M = 3)
    cues = [c for c in CUES if c in CUE_COLUMNS or any(r.get(c) is not None for r in rows)]
    names = [f"{c}-only" if c != "both" else "both-cue" for c in cues]
    head = f"| {'method':{width}s} | mIoU  | {' | '.join(names)} | params (M) | train (s) |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        seconds = "earlier" if r["train_s"] is None else f"{r['train_s']:.0f}"
        cells = " | ".join(f"{pct(r.get(c)):>{len(n)}s}" for c, n in zip(cues, names, strict=True))
        lines.append(
            f"| {r['method']:{width}s} | {pct(r['miou'])} | {cells} | "
            f"{r['params_m']:10.2f} | {seconds:>9s} |"
        )
    return "\n".join(lines)


def run_benchmark(
    configs: list[str],
    out: Path,
    steps: int | None = None,
    data_root: Path | None = None,
    num: int = 600,
    size=(120, 160),
    extra: list[str] = (),
    device: str | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
) -> list[dict]:
    """Train and evaluate every config on one data set with one budget; writes results.json
    and results.md in `out` and returns the rows (evaluation device and batch size as in
    `train_and_evaluate`). `threads` fixes torch's CPU threads for the trainings and
    evaluations (`fusescope.engine.device.cpu_threads`: the table's last digits depend on
    it); None leaves them as they are. Each row records the count it ran with."""
    if data_root is not None and (data_root / "meta.json").is_file():
        common = [f"data.root={data_root}", "data.synth=null", *extra]  # the folder as it is
    else:
        data_root = data_root or out / "data"
        common = [
            f"data.root={data_root}",
            f"data.synth.num={num}",
            f"data.synth.size=[{size[0]},{size[1]}]",
            *extra,
        ]
    if steps is not None:
        common.append(f"train.max_steps={steps}")
    # every name, key and option is checked before the first training (a typo in the last
    # config must not cost the minutes the others train)
    resolved = [resolve_config(name) for name in configs]
    for config in resolved:
        plan_training(load_config(config, common), out / config.stem)
    with cpu_threads(threads):  # checked before anything is written
        import torch

        count = torch.get_num_threads()
        out.mkdir(parents=True, exist_ok=True)
        print(f"torch CPU threads: {count}" + (" (fixed)" if threads else ""), flush=True)
        rows = []
        for config in resolved:
            print(f"\n== {config.stem} ==", flush=True)
            row = train_and_evaluate(
                config, out / config.stem, common, device=device, batch_size=batch_size
            )
            rows.append({**row, "threads": count})
    table = format_table(rows)
    write_json(out / "results.json", rows)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table + "\n")
    print("\n" + table)
    print(f"table and per-class IoU: {out / 'results.md'}, {out / 'results.json'}")
    return rows


def prediction_figure(
    run_dirs: list[Path], labels: list[str], out: Path, num: int = 4, split: str = "test"
) -> None:
    """RGB, depth, ground truth and each model's prediction, side by side, for a few frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    runs = [load_run(r) for r in run_dirs]
    root = runs[0].cfg.data.root
    raw_ds = FolderDataset(root, split, ["rgb", "depth"])
    colors = np.asarray([c.color for c in runs[0].meta.classes] + [(0, 0, 0)] * 256, np.uint8)
    picks = np.linspace(0, len(raw_ds) - 1, num).astype(int)
    cols = 3 + len(runs)
    fig, axes = plt.subplots(num, cols, figsize=(2.2 * cols, 1.8 * num), squeeze=False)
    preds = []
    for run in runs:
        ds = eval_dataset(run.cfg.data, split, run.stats)
        kinds = {m: ds.meta.modalities[m].kind for m in ds.modalities}
        batch = [ds[int(i)] for i in picks]
        stacked = {m: torch.stack([b[m] for b in batch]) for m in ds.modalities}
        probs = predict_probs(run.model, stacked, kinds, ds.meta.num_classes)
        preds.append(probs.argmax(1).numpy())
    for row, i in enumerate(picks):
        raw = raw_ds.load_raw(int(i))
        depth = raw["depth"][0]
        panels = [raw["rgb"].transpose(1, 2, 0), depth, colors[raw["label"]]]
        panels += [colors[p[row]] for p in preds]
        titles = ["RGB", "depth", "ground truth", *labels]
        for col, (img, title) in enumerate(zip(panels, titles, strict=True)):
            ax = axes[row, col]
            ax.imshow(img, cmap="viridis" if img.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    meta = runs[0].meta
    handles = [
        Patch(color=np.asarray(c.color) / 255, label=f"{c.name} ({c.cue})" if c.cue else c.name)
        for c in meta.classes
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=min(7, len(handles)), fontsize=7, frameon=False
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def run_demo(
    out: Path,
    steps: int | None = None,
    fusion: str | None = None,
    num: int | None = None,
    backbone: str | None = None,
    threads: int | None = None,
) -> list[dict]:
    """The README's first command: data, RGB-only, depth-only and a fusion model, the table and
    a figure, all under `out`, on `threads` CPU threads (default `DEMO_DEFAULTS["threads"]`,
    the count the README's table was measured with, so any machine with the same kernels
    prints the same table)."""
    steps = steps or DEMO_DEFAULTS["steps"]
    fusion = fusion or DEMO_DEFAULTS["fusion"]
    num = num or DEMO_DEFAULTS["num"]
    extra = [f"model.backbone={backbone}"] if backbone else []
    configs = ["rgb_only", "depth_only", fusion]
    start = time.perf_counter()
    threads = DEMO_DEFAULTS["threads"] if threads is None else threads
    rows = run_benchmark(
        configs,
        out,
        steps=steps,
        num=num,
        size=DEMO_DEFAULTS["size"],
        extra=extra,
        threads=threads,
    )
    figure = out / "predictions.png"
    with cpu_threads(threads):
        prediction_figure([Path(r["run"]) for r in rows], [r["method"] for r in rows], figure)
    print(f"\nfigure: {figure}  ({time.perf_counter() - start:.0f} s in all)")
    print(json.dumps({r["method"]: round(100 * r["miou"], 1) for r in rows}))
    return rows
