"""`fusescope train CONFIG --out RUN --dry-run`: what the training would do, writing nothing.

It prints the resolved config, the data (found, or what `data.synth` would generate), the run
folder (new or resumed), the model's parameter count, and the device, running the checks the
training runs before its first write (config values, the data's match with `data.synth`, the
task's data checks, the model's options). No folder, data set, lock or file is created.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class TrainingPlan:
    """What a training of `cfg` into a run folder would use (see `plan_training`)."""

    task: str
    data: str  # where the data is, or what would be generated
    sizes: dict[str, int]  # frames of the train and val splits (empty: not known yet)
    meta: object | None  # the data's DatasetMeta (None: known once the data exists)
    parameters: tuple[int, int] | None  # (total, trainable) of the model built
    run: str  # the run folder: new, resumed from a step, or finished


def plan_training(cfg: DictConfig, out: str | Path) -> TrainingPlan:
    """The training's checks before its first write (config values, the data's match with
    `data.synth`, the task's data checks, the model's name and options, by building it without
    pretrained weights), writing nothing.

    Raises:
        FusescopeError: what the training would refuse.
    """
    from fusescope.tasks import task_of

    check_config(cfg)
    task = task_of(cfg)
    meta, sizes, data_line = data_plan(cfg)
    parameters = None
    if meta is not None:
        if (Path(cfg.data.root) / "meta.json").is_file():
            task.check_data(cfg, meta)  # only data that exists can be checked
        model = task.build_model(cfg, meta, pretrained=False)
        parameters = (
            sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad),
        )
    else:
        task.methods.get(cfg.model.name)  # the name at least: an unknown one lists the known
    run = run_plan(Path(out), int(cfg.train.max_steps))
    return TrainingPlan(task.name, data_line, sizes, meta, parameters, run)


def describe_training(cfg: DictConfig, out: str | Path) -> str:
    """The lines `--dry-run` prints (after `plan_training`'s checks)."""
    import torch

    from fusescope.engine.device import training_device

    plan = plan_training(cfg, out)
    t = cfg.train
    lines = ["resolved config:", OmegaConf.to_yaml(cfg, resolve=True).rstrip(), ""]
    lines.append(f"task:       {plan.task}")
    lines.append(f"data:       {plan.data}")
    if plan.sizes:
        per_split = ", ".join(f"{split} {n}" for split, n in plan.sizes.items())
        lines.append(f"            frames: {per_split}")
    if plan.meta is not None:
        meta = plan.meta
        kinds = ", ".join(
            f"{m} ({meta.modalities[m].kind}, {meta.modalities[m].channels} ch)"
            for m in cfg.data.modalities
            if m in meta.modalities
        )
        lines.append(f"            modalities: {kinds}; {meta.num_classes} classes")
    if plan.parameters is not None:
        total, trainable = plan.parameters
        lines.append(
            f"model:      {cfg.model.name}: {total / 1e6:.2f} M parameters "
            f"({trainable / 1e6:.2f} M trainable)"
        )
    else:
        lines.append(
            f"model:      {cfg.model.name}: parameters counted once the data exists (its "
            f"classes decide)"
        )
    train_size = plan.sizes.get(cfg.data.train_split)
    epochs = f", {t.max_steps * t.batch_size / train_size:.1f} epochs" if train_size else ""
    lines.append(
        f"training:   {t.max_steps} steps of batch {t.batch_size}{epochs}; lr {t.lr}, {t.optimizer}"
    )
    device = training_device(t.accelerator)
    lines.append(
        f"device:     {device} (train.accelerator={t.accelerator}, devices={t.devices}, "
        f"precision={t.precision}; {torch.get_num_threads()} CPU threads)"
    )
    lines.append(f"run folder: {plan.run}")
    lines.append("dry run: nothing was written")
    return "\n".join(lines)
