"""Run folders: what a training run writes, and how a run is loaded back.

    RUN/config.yaml           the resolved config
    RUN/run.json              package version, data root (absolute) and fingerprint, normaliser,
                              data meta, classes, SHA-256 of model.safetensors
    RUN/checkpoints/last.ckpt model, optimiser, scheduler, step, data position, RNG (atomic)
    RUN/model.safetensors     final weights (safe to share: no code in the file)
    RUN/metrics.jsonl         one JSON object per logged step; eval_<split>_<tta>...json
    RUN/.lock                 held (flock) by the one `fusescope train` writing the folder

`load_run(RUN)` needs nothing else: `fusescope eval RUN` and `fusescope predict RUN` work from the
folder alone (eval also reads the data folder recorded in the config).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
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
from fusescope.io import atomic_path, read_json, release_lock, try_lock, write_json
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


def _disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT OSError behind an exception, if any: torch.save reports a failed
    write of its file object as a RuntimeError ("unexpected pos ...") chained from it."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = err.__cause__ or err.__context__
    return None


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    # through a Python file object, so a full disk surfaces as an OSError (ENOSPC) that
    # atomic_path names; torch wraps it in a RuntimeError, unwrapped here
    with atomic_path(path, suffix=".tmp", size_hint=_tensor_bytes(state)) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
        except RuntimeError as err:
            full = _disk_full_cause(err)
            if full is None:
                raise
            raise OSError(full.errno, full.strerror, str(tmp)) from None


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
    model, step = state["model"], state["step"]
    if (
        not isinstance(model, dict)
        or not all(isinstance(v, torch.Tensor) for v in model.values())
        or isinstance(step, bool)
        or not isinstance(step, int)
        or step < 0
    ):
        raise FusescopeError(
            f"{path} is not a fusescope checkpoint (its model is not a table of tensors or its "
            f"step not a count); refusing to load it"
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


def save_weights(path: str | os.PathLike, model: nn.Module, step: int | None = None) -> str:
    """Final weights as safetensors; `step` (the optimiser steps they were trained for) goes in
    the file's metadata. Returns the file's SHA-256 (hex), which a run records in run.json."""
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"step": str(int(step))} if step is not None else None)
    # written from Python, so a full disk is an OSError that atomic_path reports
    with atomic_path(path, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _metadata_step(metadata: dict | None, path: str | os.PathLike) -> int | None:
    step = (metadata or {}).get("step")
    if step is None:
        return None
    try:
        value = int(step)
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise FusescopeError(
            f"{path}: metadata step {step!r} is not a step count; the file was not "
            f"written by fusescope train"
        )
    return value


def weights_step(path: str | os.PathLike) -> int | None:
    """The step recorded in a weights file's metadata (None: written before steps were kept).

    Raises:
        FusescopeError: the file is unreadable or its step is not a count.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
    except (SafetensorError, OSError) as err:
        raise FusescopeError(f"{path}: cannot read weights ({err})") from None
    return _metadata_step(metadata, path)


def read_weights(path: Path, sha256: str | None = None) -> tuple[dict, int | None]:
    """A weights file's tensors and step, read once; checked against the SHA-256 its run
    recorded when it was written (`sha256`; None: a run from before digests were kept).

    Raises:
        FusescopeError: the file is unreadable, damaged or not the one its run wrote.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as err:
        raise FusescopeError(f"{path}: cannot read weights ({err.strerror})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise FusescopeError(
            f"{path}: its SHA-256 differs from the one run.json recorded when training wrote "
            f"it: the file was changed or damaged; restore it or train the run again"
        )
    try:
        state = load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise FusescopeError(f"{path}: cannot read weights ({err})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return state, _metadata_step(metadata if isinstance(metadata, dict) else None, path)


def record_weights_digest(run_dir: str | os.PathLike, sha256: str | None) -> None:
    """Keep (or, with None, drop) the SHA-256 of RUN/model.safetensors in RUN/run.json.

    Training drops the old digest before it replaces the weights and records the new one
    after, so a kill in between leaves no digest (an unchecked file), never a wrong one."""
    path = Path(run_dir) / "run.json"
    info = read_json(path)
    if sha256 is None and "weights_sha256" not in info:
        return
    if sha256 is None:
        del info["weights_sha256"]
    else:
        info["weights_sha256"] = sha256
    write_json(path, info)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold RUN/.lock (an exclusive `flock`) while the block runs: one process per run folder.

    The lock belongs to the open file, so the kernel drops it when the process ends, however
    it ends (kill -9 included): a stale lock file never blocks the next run. Forked children
    (DataLoader workers) close their copy, so they cannot keep it after the trainer died.

    Raises:
        FusescopeError: another process holds the folder.
    """
    run_dir = Path(run_dir)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        # DataLoader workers forked while it is held do not keep it (fusescope.io.try_lock)
        if not try_lock(fd):
            raise FusescopeError(
                f"{run_dir}: another fusescope process is training in this run "
                f"folder; wait for it to end or choose another --out"
            )
        yield
    finally:
        release_lock(fd)


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
    cfg = read_run_config(cfg_path)
    info_path = run_dir / "run.json"
    info = read_json(info_path)
    if not isinstance(info, dict) or not isinstance(info.get("normalization"), dict):
        raise FusescopeError(
            f"{info_path}: not a run record (an object with 'normalization' and 'meta'); "
            f"the run folder is damaged"
        )
    meta = meta_from_dict(_require_key(info, "meta", info_path), where=f"{info_path}: meta")
    # the data root as an absolute path (runs since it was recorded): a run evaluated from
    # another working directory reads the data it trained on, not a folder of the same name
    root = info.get("data_root")
    if isinstance(root, str) and Path(root).is_dir():
        cfg.data.root = root
    return cfg, info, meta


def _require_key(info: dict, key: str, path: Path):
    if key not in info:
        raise FusescopeError(f"{path}: no {key!r}; the run folder is damaged")
    return info[key]


def read_run_config(path: Path) -> DictConfig:
    """A run folder's config.yaml, re-validated.

    Raises:
        FusescopeError: the file does not parse or is not a run config, naming it.
    """
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise FusescopeError(
            f"{path}: cannot read the run's config ({type(err).__name__}); the run folder "
            f"is damaged"
        ) from None
    if not isinstance(loaded, dict):
        raise FusescopeError(f"{path}: not a run config; the run folder is damaged")
    try:
        return config_from_dict(loaded)
    except FusescopeError as err:
        raise FusescopeError(f"{path}: {err}") from None


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
        digest = info.get("weights_sha256")
        state, step = read_weights(weights, digest if isinstance(digest, str) else None)
        load_weights(model, state, weights)
        # final weights are written only when training reaches max_steps; files from before
        # the step was recorded are taken as finished at their config's max_steps
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
