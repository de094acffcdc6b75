"""Run folders: what a training run writes, and how a run is loaded back.

    RUN/config.yaml           the resolved config
    RUN/run.json              package version, data fingerprint, normaliser, data meta, classes
    RUN/checkpoints/last.ckpt model, optimiser, scheduler, step, data position, RNG (atomic)
    RUN/model.safetensors     final weights (safe to share: no code in the file)
    RUN/metrics.jsonl         one JSON object per logged step; eval_<split>_<tta>...json
    RUN/.lock                 held (flock) by the one `fusescope train` writing the folder

`load_run(RUN)` needs nothing else: `fusescope eval RUN` and `fusescope predict RUN` work from the
folder alone (eval also reads the data folder recorded in the config).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fusescope.config import config_from_dict
from fusescope.data.meta import DatasetMeta, meta_from_dict
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, read_json
from fusescope.tasks import task_of

CHECKPOINT = "checkpoints/last.ckpt"
WEIGHTS = "model.safetensors"


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested state (the bulk of a checkpoint's size)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    # through a Python file object, so a full disk is an OSError (ENOSPC) that atomic_path
    # names, not torch's "unexpected pos" RuntimeError
    with (
        atomic_path(path, suffix=".tmp", size_hint=_tensor_bytes(state)) as tmp,
        open(tmp, "wb") as f,
    ):
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FusescopeError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused an object: the file is foreign or holds code
        raise FusescopeError(
            f"{path} is not a fusescope checkpoint or holds code; refusing to load it"
        ) from None
    except Exception as err:  # truncated or not a torch file at all
        raise FusescopeError(
            f"{path}: cannot read checkpoint, truncated or not a fusescope "
            f"checkpoint ({type(err).__name__})"
        ) from None
    if not (isinstance(state, dict) and {"model", "step"} <= set(state)):
        raise FusescopeError(
            f"{path} is not a fusescope checkpoint (no model and step in it); refusing to load it"
        )
    return state


def load_weights(model: nn.Module, state: dict, source: str | os.PathLike) -> None:
    """Strict load with a message that names the file and the first disagreements."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {keys[:3]}"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape differs", wrong),
            )
            if keys
        )
        raise FusescopeError(
            f"{source}: weights do not fit this model (a checkpoint of another "
            f"model or config?) - {detail}"
        )
    model.load_state_dict(state, strict=True)


def save_weights(path: str | os.PathLike, model: nn.Module, step: int | None = None) -> None:
    """Final weights as safetensors; `step` (the optimiser steps they were trained for) goes in
    the file's metadata."""
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"step": str(int(step))} if step is not None else None)
    # written from Python, so a full disk is an OSError that atomic_path reports
    with atomic_path(path, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)


def weights_step(path: str | os.PathLike) -> int | None:
    """The step recorded in a weights file's metadata (None: written before steps were kept)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None


LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold RUN/.lock (an exclusive `flock`) while the block runs: one process per run folder.

    The lock belongs to the open file, so the kernel drops it when the process ends, however
    it ends (kill -9 included): a stale lock file never blocks the next run.

    Raises:
        FusescopeError: another process holds the folder.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    run_dir = Path(run_dir)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FusescopeError(
                f"{run_dir}: another fusescope process is training in this run "
                f"folder; wait for it to end or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


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
    """The run's model, built by its task; `pretrained=False` skips `model.pretrained` (for a
    model whose weights are loaded next from a run or checkpoint: no download, no need for the
    original file)."""
    return task_of(cfg).build_model(cfg, meta, pretrained=pretrained)


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


def require_task(run: Run, task: str, command: str) -> None:
    """Refuse a run of another task than `command` handles (a translation run given to
    `fusescope predict`, say), naming both, instead of failing deep inside.

    Raises:
        FusescopeError: the run's task is not `task`.
    """
    found = run.cfg.get("task", "segmentation")
    if found != task:
        raise FusescopeError(
            f"{run.path}: a {found} run; {command} handles {task} runs "
            f"(fusescope eval scores every task)"
        )
