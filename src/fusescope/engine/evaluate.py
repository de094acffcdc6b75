"""`fusescope eval`: a run folder evaluated by its task (`Task.evaluate`) under the options
given, the result named by every option that changes its numbers and written into the run."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from fusescope.config import check_config
from fusescope.data.corruptions import make_corruption
from fusescope.data.folder import fingerprint
from fusescope.engine.checkpoint import load_run
from fusescope.engine.memory import is_out_of_memory, out_of_memory_error
from fusescope.engine.missing import leave_out
from fusescope.errors import FusescopeError
from fusescope.io import json_safe, write_json
from fusescope.tasks import task_of


def evaluate_run(
    run_dir: str | Path,
    split: str | None = None,
    tta: str | None = None,
    corrupt: str | None = None,
    window=None,
    batch_size: int | None = None,
    data_root: str | None = None,
    device: str = "cpu",
    progress: bool = False,
    drop: list[str] | None = None,
) -> dict:
    """Evaluate a run folder; arguments left None take the run's `eval` config. `drop` lists
    modalities to leave out (`fusescope.engine.missing`: zeros, or the method's own rule)."""
    run = load_run(run_dir, device=device)
    task = task_of(run.cfg)
    task.check_eval_options(tta=tta, corrupt=corrupt, window=window, drop=drop)
    if drop:
        leave_out(run, drop)
    cfg = run.cfg
    trained_root = cfg.data.root
    if split is not None:
        cfg.eval.split = split
    if tta is not None:
        cfg.eval.tta = tta
    if window is not None:
        cfg.eval.window = list(window)
    if batch_size is not None:
        cfg.eval.batch_size = batch_size
    if data_root is not None:
        cfg.data.root = data_root
    check_config(cfg)  # the options given here, e.g. a window of positive sizes
    corruption = make_corruption(corrupt) if corrupt else None
    ds = task.eval_dataset(
        cfg, cfg.eval.split, run.stats, corruption=corruption, seed=cfg.train.seed
    )
    model = torch.compile(run.model) if cfg.train.get("compile", False) else run.model
    try:
        result = task.evaluate(model, ds, cfg, run.meta, device=device, progress=progress)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise out_of_memory_error(
            err,
            f"evaluating {run_dir} on split {cfg.eval.split!r}",
            f"--batch-size (now {cfg.eval.batch_size}), --window or --tta, or use smaller frames",
        ) from None
    # every option that changes the numbers, so a result file says what it measured
    result.update(
        {
            "task": task.name,
            "split": cfg.eval.split,
            "tta": cfg.eval.tta,
            "corrupt": corrupt,
            "model": cfg.model.name,
            "step": run.step,
            "max_steps": int(cfg.train.max_steps),
            "finished": run.finished,
            "scales": list(cfg.eval.scales) if cfg.eval.tta == "ms-flip" else None,
            "window": list(cfg.eval.window) if cfg.eval.window else None,
            "stride": list(cfg.eval.stride) if cfg.eval.window and cfg.eval.stride else None,
            "data_root": str(Path(cfg.data.root).resolve()),
            "data_fingerprint": fingerprint(
                cfg.data.root, list(cfg.data.modalities), [cfg.eval.split]
            ),
            "own_data": is_own_data(cfg, run.info, trained_root),
        }
    )
    if drop:
        result["drop"] = sorted(drop)
    return result


def is_own_data(cfg: DictConfig, info: dict, trained_root: str) -> bool:
    """Whether `cfg.data.root` holds the data the run trained on: the same fingerprint of its
    train and val splits as run.json records (a folder of the same name seen from another
    working directory, or regenerated, is other data); runs from before the fingerprint was
    recorded compare the resolved paths."""
    recorded = info.get("data_fingerprint")
    if not isinstance(recorded, str):
        return Path(cfg.data.root).resolve() == Path(trained_root).resolve()
    d = cfg.data
    try:
        return fingerprint(d.root, list(d.modalities), [d.train_split, d.val_split]) == recorded
    except FusescopeError:  # e.g. a folder without the run's train or val split
        return False


def eval_file_name(result: dict) -> str:
    """`eval_<split>_<tta>[_<corruption>][_win<H>x<W>[s<H>x<W>]][_data-<fingerprint>][_no-<modality>].json`.

    Named by every option that changes the numbers, so evaluating on other data, windows or
    corruptions never replaces the run's own result (the ms-flip scales are the run's own
    config). The data tag appears only for data other than the run's own (another --data-root).
    """
    parts = [f"eval_{result['split']}_{result['tta']}"]
    if result.get("corrupt"):
        parts.append(result["corrupt"].replace(":", ""))
    if result.get("window"):
        tag = "win{}x{}".format(*result["window"])
        if result.get("stride"):
            tag += "s{}x{}".format(*result["stride"])
        parts.append(tag)
    if result.get("own_data") is False:
        parts.append(f"data-{result['data_fingerprint']}")
    parts.extend(f"no-{m}" for m in result.get("drop") or [])
    name = "_".join(parts)
    return "".join(c if c.isalnum() or c in "_-." else "-" for c in name) + ".json"


def save_eval(run_dir: str | Path, result: dict) -> dict:
    """Write `result` as RUN/<eval_file_name(result)> (the options are recorded inside too);
    returns it JSON-safe."""

    result = json_safe(result)
    write_json(Path(run_dir) / eval_file_name(result), result)
    return result
