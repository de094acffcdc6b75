"""Run configuration: YAML files merged over typed defaults, with dotted command-line overrides.

A config has four sections. `model` is free-form because each fusion method's builder signature is
its schema (checked when the model is built); the other sections are fixed here, so an unknown key
anywhere is an error naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fusescope.errors import FusescopeError


@dataclass
class SynthSpec:
    """How to generate the known-answer data set when `data.root` does not exist yet."""

    num: int = 600
    seed: int = 0
    size: list[int] = field(default_factory=lambda: [120, 160])


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    modalities: list[str] = field(default_factory=lambda: ["rgb", "depth"])
    synth: SynthSpec | None = None  # generate the known-answer set at `root` if it is missing
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] | None = None  # [H, W]; null trains on whole (rescaled) frames
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    hflip: bool = True
    color_jitter: float = 0.2  # brightness/contrast/saturation strength, colour modality only
    num_workers: int = 0


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 400
    batch_size: int = 8
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 20
    poly_power: float = 0.9
    # learning-rate multipliers by module name prefix, e.g. {decoder: 6.0} (CEN trains its
    # decoder at 6x the encoder's lr); the longest matching prefix wins
    lr_scales: dict[str, float] = field(default_factory=dict)
    grad_accum: int = 1
    per_modality_weight: float = 1.0  # weight of each `per_modality` output's task loss
    # probability of zeroing a modality per sample (a number, or {modality: p}); never all of a
    # sample's modalities at once (fusescope.engine.missing)
    modality_dropout: Any = None
    class_weights: list[float] | None = None
    ckpt_every: int = 200
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate on data.val_split at the end only
    precision: str = "32-true"  # any Lightning Fabric precision, e.g. bf16-mixed
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    sync_bn: bool = True  # with several processes; keeps BN statistics equal to one process
    tensorboard: bool = False
    progress: bool = True


@dataclass
class EvalConfig:
    split: str = "val"
    tta: str = "none"  # none | flip | ms-flip
    scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25])
    window: list[int] | None = None  # [H, W] sliding-window crop; null: whole image
    stride: list[int] | None = None  # default: 2/3 of the window
    batch_size: int = 8


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "early_concat"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _structured() -> DictConfig:
    return OmegaConf.structured(RunConfig)


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> DictConfig:
    """Read a YAML config over the defaults, then apply `key=value` overrides.

    Raises:
        FusescopeError: missing file, bad YAML, unknown key or a value of the wrong type.
    """
    cfg = _structured()
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FusescopeError(f"{path}: config file not found")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        for item in overrides:
            if "=" not in item:
                raise FusescopeError(f"override {item!r} is not key=value")
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        where = f"{path}: " if path is not None else ""
        raise FusescopeError(f"{where}{_explain(err)}") from None
    return cfg


def config_from_dict(d: dict[str, Any]) -> DictConfig:
    """Re-validate a saved (resolved) config, e.g. the one in a run folder."""
    try:
        return OmegaConf.merge(_structured(), OmegaConf.create(d))
    except OmegaConfBaseException as err:
        raise FusescopeError(_explain(err)) from None


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return f"unknown config key {key}" if key else msg
    return f"config key {key}: {msg}" if key else msg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
