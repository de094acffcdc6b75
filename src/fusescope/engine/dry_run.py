"""`fusescope train CONFIG --out RUN --dry-run`: what the training would do, writing nothing.

It prints the resolved config, the data (found, or what `data.synth` would generate), the run
folder (new or resumed), the model's parameter count, and the device, running the checks the
training runs before its first write (config values, the data's match with `data.synth`, the
task's data checks, the model's options). No folder, data set, lock or file is created.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fusescope.config import check_config
from fusescope.data.meta import load_meta, read_split
from fusescope.errors import FusescopeError


def data_plan(cfg: DictConfig) -> tuple[object | None, dict[str, int], str]:
    """(meta or None, frames per split, a sentence) for the run's data, as `ensure_data` would
    find or make it; None when the meta cannot be known before the data exists."""
    from fusescope.data.build import check_synth_matches

    d = cfg.data
    root = Path(d.root)
    splits = [d.train_split, d.val_split]
    if (root / "meta.json").is_file():
        if d.synth is not None:
            check_synth_matches(root, d.synth)
        meta = load_meta(root)
        sizes = {s: len(read_split(root, s)) for s in dict.fromkeys(splits)}
        return meta, sizes, f"{root} (exists)"
    if d.synth is None:
        raise FusescopeError(
            f"{root}: no data set here (no meta.json); prepare one with "
            f"'fusescope data synth' or 'fusescope data prepare'"
        )
    if root.exists() and any(root.iterdir()):
        raise FusescopeError(f"{root}: folder exists without meta.json; not overwriting it")
    s = d.synth
    what = f"{s.num} frames of {s.size[0]}x{s.size[1]}, seed {s.seed}"
    if s.get("kind", "rooms") == "posters":
        return None, {}, f"{root}: would generate {what} of known-answer posters"
    from fusescope.data.synthetic.writing import planned

    meta, sizes = planned(s.num, s.seed, tuple(s.size), s.get("modalities"))
    sizes = {split: sizes[split] for split in dict.fromkeys(splits) if split in sizes}
    return meta, sizes, f"{root}: would generate {what} (known-answer rooms)"


def run_plan(out: Path, max_steps: int) -> str:
    """A sentence on the run folder: a new run, or the step a resume starts from."""
    from fusescope.engine.checkpoint import CHECKPOINT, load_checkpoint

    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        step = int(load_checkpoint(ckpt)["step"])
        if step >= max_steps:
            return f"{out}: finished at step {step}; nothing to train (evaluation only)"
        return f"{out}: resumes from step {step} of {max_steps}"
    if out.exists() and any(out.iterdir()):
        return f"{out}: exists without a checkpoint; a new run would start in it"
    return f"{out}: new run"


def describe_training(cfg: DictConfig, out: str | Path) -> str:
    """The lines `--dry-run` prints. Raises the errors the training would raise first."""
    import torch

    from fusescope.engine.device import training_device
    from fusescope.tasks import task_of

    check_config(cfg)
    out = Path(out)
    task = task_of(cfg)
    t = cfg.train
    meta, sizes, data_line = data_plan(cfg)
    lines = ["resolved config:", OmegaConf.to_yaml(cfg, resolve=True).rstrip(), ""]
    lines.append(f"task:       {task.name}")
    lines.append(f"data:       {data_line}")
    if sizes:
        per_split = ", ".join(f"{split} {n}" for split, n in sizes.items())
        lines.append(f"            frames: {per_split}")
    if meta is not None:
        if (Path(cfg.data.root) / "meta.json").is_file():
            task.check_data(cfg, meta)  # only data that exists can be checked
        kinds = ", ".join(
            f"{m} ({meta.modalities[m].kind}, {meta.modalities[m].channels} ch)"
            for m in cfg.data.modalities
            if m in meta.modalities
        )
        lines.append(f"            modalities: {kinds}; {meta.num_classes} classes")
        model = task.build_model(cfg, meta, pretrained=False)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lines.append(
            f"model:      {cfg.model.name}: {total / 1e6:.2f} M parameters "
            f"({trainable / 1e6:.2f} M trainable)"
        )
    else:
        lines.append("model:      parameters counted once the data exists (its classes decide)")
    train_size = sizes.get(cfg.data.train_split)
    epochs = f", {t.max_steps * t.batch_size / train_size:.1f} epochs" if train_size else ""
    lines.append(
        f"training:   {t.max_steps} steps of batch {t.batch_size}{epochs}; lr {t.lr}, {t.optimizer}"
    )
    device = training_device(t.accelerator)
    lines.append(
        f"device:     {device} (train.accelerator={t.accelerator}, devices={t.devices}, "
        f"precision={t.precision}; {torch.get_num_threads()} CPU threads)"
    )
    lines.append(f"run folder: {run_plan(out, int(t.max_steps))}")
    lines.append("dry run: nothing was written")
    return "\n".join(lines)
