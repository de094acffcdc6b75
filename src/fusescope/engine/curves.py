"""Training curves of a run (RUN/curves.png) and the comparison of several runs.

    RUN/curves.png                 loss, learning rate, validation mIoU over steps (and CEN's
                                   exchanged fraction per stage when logged)
    fusescope compare RUN... --out DIR
        DIR/compare.md, compare.json   one row per run: method, steps, final loss, best
                                       validation metric, and the task's own test/val metrics
                                       (segmentation: mIoU and per cue group; translation: L1,
                                       PSNR, SSIM, FID, KID per target; classification: micro
                                       / macro F1, mAP, F1 per cue group)
        DIR/curves.png                 the runs' curves overlaid

Everything is read from the run folder (`metrics.jsonl`, `eval_*.json`, `config.yaml`), so
curves can be redrawn for any run, finished or not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, write_json

CURVES = "curves.png"


def read_metrics(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} from RUN/metrics.jsonl, sorted by step.

    A resumed run logs some steps twice (before the kill and again after resuming): the later
    record of a step wins, as it belongs to the run that went on.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FusescopeError(f"{path}: not found; is {run_dir} a fusescope run folder?")
    series: dict[str, dict[int, float]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record.pop("step"))
        except (ValueError, KeyError, TypeError):
            raise FusescopeError(f"{path}:{number}: not a metrics record") from None
        for key, value in record.items():
            if isinstance(value, int | float) and value == value:
                series.setdefault(key, {})[step] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def final_eval(run_dir: str | os.PathLike) -> dict | None:
    """The run's plain evaluation (`eval_<split>_none.json`, test split first), if any."""
    run_dir = Path(run_dir)
    for split in ("test", "val"):
        path = run_dir / f"eval_{split}_none.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _panels(series_list: list[dict]) -> list[tuple[str, list[str]]]:
    """(title, keys) of each panel that some run has data for."""
    keys = set().union(*(s.keys() for s in series_list))
    exchanged = sorted(k for k in keys if k.startswith("exchanged/"))
    panels = [("training loss", ["loss"]), ("learning rate", ["lr"])]
    # each task logs its own validation metric as val_<metric> (segmentation: val_miou)
    validation = sorted(k for k in keys if k.startswith("val_")) or ["val_miou"]
    names = {"val_miou": "mIoU"}
    panels += [(f"validation {names.get(k, k[4:])}", [k]) for k in validation]
    if exchanged:
        panels.append(("CEN exchanged fraction", exchanged))
    return panels


def draw(
    series_list: list[dict], labels: list[str], out: str | os.PathLike, title: str = ""
) -> Path:
    """Draw the curves of one or more runs (overlaid) into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(series_list)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, keys) in zip(axes[0], panels, strict=True):
        drawn = False
        for i, (series, label) in enumerate(zip(series_list, labels, strict=True)):
            for j, key in enumerate(keys):
                points = series.get(key)
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                suffix = f" {key.split('/', 1)[1]}" if "/" in key else ""
                ax.plot(
                    steps,
                    values,
                    color=colours[i % len(colours)],
                    linestyle=["-", "--", ":", "-."][j % 4],
                    marker="o" if len(points) < 12 else None,
                    markersize=3,
                    label=f"{label}{suffix}" if len(labels) > 1 or suffix else None,
                )
                drawn = True
        ax.set_title(name)
        ax.set_xlabel("step")
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if name == "validation mIoU" and not drawn:
            ax.text(
                0.5,
                0.5,
                "not logged during training\n(set train.eval_every)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


def write_curves(run_dir: str | os.PathLike) -> Path:
    """RUN/curves.png from RUN/metrics.jsonl."""
    run_dir = Path(run_dir)
    return draw(
        [read_metrics(run_dir)],
        [run_dir.name],
        run_dir / CURVES,
        title=f"{run_dir.name} ({_method(run_dir)})",
    )


def _method(run_dir: Path) -> str:
    from omegaconf import OmegaConf

    cfg = run_dir / "config.yaml"
    return str(OmegaConf.load(cfg).model.name) if cfg.is_file() else "?"


def run_task(run_dir: Path) -> str:
    """The task a run folder's config names (segmentation when it names none)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(run_dir / "config.yaml").get("task", "segmentation"))


def compare_runs(runs: list[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """Write DIR/compare.md, DIR/compare.json and DIR/curves.png for `runs`: one row per run
    with its task's own metrics (`Task.compare_columns` of its evaluation result).

    Raises:
        FusescopeError: a folder that is not a run, or runs of different tasks (their metrics
            do not share a table).
    """
    from fusescope.tasks import task_of

    runs = [Path(r) for r in runs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # runs of the same folder name in different places
        names = [str(r) for r in runs]
    for run in runs:
        if not (run / "config.yaml").is_file():
            raise FusescopeError(f"{run}: not a fusescope run folder (no config.yaml)")
    tasks = {run: run_task(run) for run in runs}
    if len(set(tasks.values())) > 1:
        listed = ", ".join(f"{run.name} ({task})" for run, task in tasks.items())
        raise FusescopeError(
            f"fusescope compare takes runs of one task (their metrics differ): {listed}"
        )
    task = task_of(tasks[runs[0]])
    val_key = f"val_{task.primary_metric}"
    series_list, rows = [], []
    for run, name in zip(runs, names, strict=True):
        series = read_metrics(run)
        series_list.append(series)
        result = final_eval(run)
        val = [v for _, v in series.get(val_key) or []]
        best = (max if task.higher_is_better else min)(val) if val else None
        columns = task.compare_columns(result) if result else {}
        rows.append(
            {
                "run": name,
                "method": _method(run),
                "steps": series["loss"][-1][0] if series.get("loss") else None,
                "final_loss": series["loss"][-1][1] if series.get("loss") else None,
                f"best val {task.primary_metric}": best,
                "eval split": result.get("split") if result else None,
                **columns,
            }
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FusescopeError(f"{out}: exists and is not a folder")
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    header = "| " + " | ".join(c.replace("_", " ") for c in columns) + " |"
    lines = [header, "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    md = out / "compare.md"
    with atomic_path(md) as tmp:
        tmp.write_text(
            f"{task.name} runs; metrics from each run's eval_<split>_none.json (n/a: not "
            f"evaluated yet, run `fusescope eval RUN`); best val {task.primary_metric} from "
            f"validation during training (train.eval_every)\n\n" + "\n".join(lines) + "\n"
        )
    write_json(out / "compare.json", rows)
    png = draw(series_list, names, out / CURVES, title="training curves")
    return [md, out / "compare.json", png]
