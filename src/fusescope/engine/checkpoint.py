"""Run folders: what a training run writes, and how a run is loaded back.

    RUN/config.yaml           the resolved config
    RUN/run.json              package version, data fingerprint, normaliser, data meta, classes
    RUN/checkpoints/last.ckpt model, optimiser, scheduler, step, data position, RNG (atomic)
    RUN/model.safetensors     final weights (safe to share: no code in the file)
    RUN/metrics.jsonl         one JSON object per logged step; eval_<split>.json at the end

`load_run(RUN)` needs nothing else: `fusescope eval RUN` and `fusescope predict RUN` work from the
folder alone (eval also reads the data folder recorded in the config).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fusescope.config import config_from_dict
from fusescope.data.meta import DatasetMeta, meta_from_dict
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, read_json

CHECKPOINT = "checkpoints/last.ckpt"
WEIGHTS = "model.safetensors"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FusescopeError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise FusescopeError(f"{path}: cannot read checkpoint ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]})") from None


def load_weights(model: nn.Module, state: dict, source: str | os.PathLike) -> None:
    """Strict load with a message that names the file and the first disagreements."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {keys[:3]}" for what, keys in
                           (("missing", missing), ("unexpected", unexpected),
                            ("shape differs", wrong)) if keys)
        raise FusescopeError(f"{source}: weights do not fit this model (a checkpoint of another "
                             f"model or config?) - {detail}")
    model.load_state_dict(state, strict=True)


def save_weights(path: str | os.PathLike, model: nn.Module, step: int | None = None) -> None:
    """Final weights as safetensors; `step` (the optimiser steps they were trained for) goes in
    the file's metadata."""
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    metadata = {"step": str(int(step))} if step is not None else None
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def weights_step(path: str | os.PathLike) -> int | None:
    """The step recorded in a weights file's metadata (None: written before steps were kept)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None


@dataclass
class Run:
    """A trained run loaded from its folder.

    `step` is the number of optimiser steps the loaded weights were trained for; the run is
    `finished` when that reaches the config's `train.max_steps` (a run killed early, or extended
    with a larger `train.max_steps` and not resumed yet, is not).
    """

    path: Path
    cfg: DictConfig
    info: dict
    meta: DatasetMeta
    model: nn.Module
    step: int | None = None

    @property
    def stats(self) -> dict:
        return self.info["normalization"]

    @property
    def finished(self) -> bool:
        return self.step is not None and self.step >= self.cfg.train.max_steps


def read_run_info(run_dir: str | os.PathLike) -> tuple[DictConfig, dict, DatasetMeta]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FusescopeError(f"{run_dir}: run folder not found")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FusescopeError(f"{cfg_path}: not found; is {run_dir} a fusescope run folder?")
    cfg = config_from_dict(OmegaConf.to_container(OmegaConf.load(cfg_path)))
    info = read_json(run_dir / "run.json")
    meta = meta_from_dict(info["meta"], where=f"{run_dir / 'run.json'}: meta")
    return cfg, info, meta


def build_run_model(cfg: DictConfig, meta: DatasetMeta, pretrained: bool = True) -> nn.Module:
    """The run's model; `pretrained=False` skips `model.pretrained` (for a model whose weights
    are loaded next from a run or checkpoint: no download, no need for the original file)."""
    from fusescope.models import build_model

    modalities = list(cfg.data.modalities)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if not pretrained and "pretrained" in model_cfg:
        model_cfg["pretrained"] = False
    return build_model(model_cfg, modalities,
                       {m: meta.modalities[m].channels for m in modalities}, meta.num_classes)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Load a run folder: config, info, data meta and the model (eval mode, final weights if the
    run finished, else its last checkpoint)."""
    run_dir = Path(run_dir)
    cfg, info, meta = read_run_info(run_dir)
    model = build_run_model(cfg, meta, pretrained=False)
    weights = run_dir / WEIGHTS
    if weights.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            raise FusescopeError(f"{weights}: cannot read weights ({err})") from None
        load_weights(model, state, weights)
        # final weights are written only when training reaches max_steps; files from before
        # the step was recorded are taken as finished at their config's max_steps
        step = weights_step(weights)
        step = cfg.train.max_steps if step is None else step
    else:
        ckpt = run_dir / CHECKPOINT
        state = load_checkpoint(ckpt)
        load_weights(model, state["model"], ckpt)
        step = int(state["step"])
    return Run(run_dir, cfg, info, meta, model.to(device).eval(), step)
