"""The training loop: explicit, on Lightning Fabric (devices, DDP, mixed precision).

Determinism and resumption come from the data order, not from luck: every global batch is a
function of (seed, samples consumed), each sample's augmentation of (seed, epoch, index), and
`train.batch_size` is the *global* batch, split over processes. A run killed and resumed from its
last checkpoint therefore ends with the same weights as an uninterrupted run, and a run on two
processes matches the one-process run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

import fusescope
from fusescope.config import check_config, config_from_dict, to_container
from fusescope.data.batching import GlobalBatchSampler, collate
from fusescope.data.build import ensure_data
from fusescope.data.folder import fingerprint
from fusescope.data.kinds import kind_of
from fusescope.data.meta import load_meta
from fusescope.engine.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    load_checkpoint,
    load_weights,
    record_weights_digest,
    run_folder_lock,
    save_checkpoint,
    save_weights,
)
from fusescope.engine.distributed import convert_batchnorm
from fusescope.engine.memory import is_out_of_memory, out_of_memory_error
from fusescope.engine.missing import blank_texts, drop_modalities, dropout_probabilities
from fusescope.errors import FusescopeError
from fusescope.io import (
    atomic_path,
    cannot_write_error,
    disk_full_error,
    read_json,
    remove_stale_temps,
    write_json,
)
from fusescope.nn.norm import is_norm, tracks_batch_stats
from fusescope.tasks import task_of


def lr_factor(step: int, warmup: int, max_steps: int, power: float) -> float:
    """Linear warmup from 1/warmup, then polynomial decay to 0 at max_steps."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, max_steps - warmup)) ** power


# a stage's warm-up starts from this fraction of its lr (the authors' PolyWarmupAdamW)
STAGE_WARMUP_RATIO = 1e-6


def stage_lr_factor(step: int, warmup: int, decay: int, power: float) -> float:
    """The lr factor `step` steps into a stage, as TokenFusion's / GeminiFusion's
    `PolyWarmupAdamW` computes it: linear from `STAGE_WARMUP_RATIO` to 1 over `warmup` steps,
    then `(1 - step / decay) ** power` (counted from the stage's start, so it is already below 1
    when the warm-up ends), 0 from `decay` on."""
    if step < warmup:
        return 1 - (1 - step / warmup) * (1 - STAGE_WARMUP_RATIO)
    return max(0.0, 1 - step / decay) ** power


def stage_starts(stages) -> list[int]:
    """The global step at which each stage begins."""
    starts, total = [], 0
    for stage in stages:
        starts.append(total)
        total += stage.steps
    return starts


def schedule(t: DictConfig) -> Callable[[int], float]:
    """The factor on each group's initial lr (`train.lr x` its scale) at a global step:
    `lr_factor` over the run, or with `train.stages` the stage's lr / `train.lr` times its
    `stage_lr_factor`."""
    if not t.get("stages"):
        return lambda s: lr_factor(s, t.warmup_steps, t.max_steps, t.poly_power)
    stages = [
        (
            start,
            stage.lr / t.lr,
            t.warmup_steps if stage.warmup_steps is None else stage.warmup_steps,
            stage.decay_steps or stage.steps,
        )
        for start, stage in zip(stage_starts(t.stages), t.stages, strict=True)
    ]

    def factor(step: int) -> float:
        start, ratio, warmup, decay = next(s for s in reversed(stages) if s[0] <= step)
        return ratio * stage_lr_factor(step - start, warmup, decay, t.poly_power)

    return factor


def make_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on norms and biases (decaying BN gammas would fight CEN's
    sparsity rule) unless `cfg.decay_all` (the CEN / AsymFusion code decays every parameter).
    A parameter's lr is `lr x` the scale of the longest `train.lr_scales` prefix
    of its name `x` the scale the model gives it in `lr_scales()` (e.g. CEN's exchange gammas);
    each distinct scale is its own group, and the scheduler multiplies every group's lr alike."""
    model_scale = {id(p): s for p, s in getattr(model, "lr_scales", list)()}
    prefix_scale = {str(k): float(v) for k, v in (cfg.get("lr_scales") or {}).items()}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for prefix, scale in prefix_scale.items():
        if scale < 0:
            raise FusescopeError(f"train.lr_scales.{prefix} must be >= 0, got {scale}")
        if not any(n == prefix or n.startswith(prefix + ".") for n, _ in named):
            tops = sorted({n.split(".")[0] for n, _ in named})
            raise FusescopeError(
                f"train.lr_scales: no parameter under {prefix!r}; the model's "
                f"top-level modules are {', '.join(tops)}"
            )

    def scale_of(name: str, p: torch.nn.Parameter) -> float:
        matches = [k for k in prefix_scale if name == k or name.startswith(k + ".")]
        by_name = prefix_scale[max(matches, key=len)] if matches else 1.0
        return by_name * model_scale.get(id(p), 1.0)

    # per-modality BN parameters are (M, C): their module, not their shape, marks them as norms
    undecayed = {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, p in named:
        decayed = cfg.get("decay_all", False) or (p.ndim > 1 and id(p) not in undecayed)
        groups.setdefault((decayed, scale_of(name, p)), []).append(p)
    param_groups = [
        {
            "params": params,
            "lr": cfg.lr * scale,
            "weight_decay": cfg.weight_decay if decayed else 0.0,
        }
        for (decayed, scale), params in groups.items()
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
    raise FusescopeError(f"train.optimizer {cfg.optimizer!r} unknown; known: adamw, sgd")


# settings a resumed run may change: they do not alter the weights' trajectory (logging,
# checkpoint cadence, hardware: `train.batch_size` is the global batch) or they only describe
# evaluation; train.max_steps may grow (extending a run) and is recorded like these
RESUME_FREE_KEYS = (
    "train.progress",
    "train.tensorboard",
    "train.log_every",
    "train.ckpt_every",
    "train.ckpt_minutes",
    "train.eval_every",
    "train.accelerator",
    "train.devices",
    "train.num_nodes",
    "train.strategy",
    "train.compile",
    "data.num_workers",
)
RESUME_FREE_SECTIONS = ("eval.",)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def config_differences(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """`{dotted key: (saved value, current value)}` for every leaf that differs."""
    a, b = _flatten(saved), _flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} ({old} -> {new})" for k, (old, new) in changes.items())


def freeze_bn_statistics(model: torch.nn.Module) -> None:
    """Put every BatchNorm (per-modality ones included) in eval mode inside a training model:
    it normalises with its running statistics and leaves them unchanged, while its gamma and
    beta still train (the CEN / AsymFusion code's FREEZE_BN, `train.freeze_bn_stats`)."""
    for module in model.modules():
        if tracks_batch_stats(module):
            module.eval()


def _same_run(saved: dict, current: dict) -> bool:
    """A folder may be resumed only by the same data and model config."""
    return not _run_identity_changes(saved, current)


def _run_identity_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    changes = config_differences(
        {k: saved.get(k) or {} for k in ("data", "model")},
        {k: current.get(k) or {} for k in ("data", "model")},
    )
    return {k: v for k, v in changes.items() if k not in RESUME_FREE_KEYS}


def resume_changes(out: Path, saved: dict, current: dict, step: int) -> dict[str, tuple]:
    """The settings that differ between a run folder's config and this command's.

    Raises:
        FusescopeError: a setting that decides the weights (lr, batch size, schedule, seed ...)
            differs, which the resumed optimiser and schedule would not honour, or
            train.max_steps is below the checkpoint's step.
    """
    changes = config_differences(saved, current)
    refused = {
        k: v
        for k, v in changes.items()
        if k not in RESUME_FREE_KEYS
        and k != "train.max_steps"
        and not k.startswith(RESUME_FREE_SECTIONS)
    }
    if refused:
        raise FusescopeError(
            f"{out}: resuming with changed settings {_describe(refused)}; the "
            f"checkpoint's optimiser and schedule were made with the saved "
            f"values: use those, a new --out, or --no-resume to start over"
        )
    if current["train"]["max_steps"] < step:
        raise FusescopeError(
            f"{out}: its checkpoint is at step {step}, past "
            f"train.max_steps={current['train']['max_steps']}; give "
            f"train.max_steps>={step} (or a new --out)"
        )
    return changes


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop the rows of metrics.jsonl logged after `step` (a killed run logged them before its
    last checkpoint was overwritten; the resumed run logs those steps again), and a row cut
    short by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept))


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what creating it would make),
    or None if `path` exists."""
    if path.exists() or path.is_symlink():
        return None
    top = path
    while not (top.parent.exists() or top.parent.is_symlink()) and top.parent != top:
        top = top.parent
    return top


def _remove_created(path: Path, top: Path) -> None:
    """Remove `path` and the empty folders above it up to `top`, all made by this process."""
    shutil.rmtree(path, ignore_errors=True)
    folder = path.parent
    while folder != top.parent and top in (folder, *folder.parents):
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent


def claim_run_folder(out: Path, stack: contextlib.ExitStack) -> Path | None:
    """Lock first, then create: make `out` if it is missing (exactly one process can), then
    hold its lock for the rest of `stack`. Two commands started together on a new folder
    cannot both pass: the second is refused by the lock, whoever created the folder.

    Returns:
        The outermost folder this process created (for `_remove_created`), None if `out`
        existed.

    Raises:
        FusescopeError: `out` is a file or cannot be created, or another process holds it.
    """
    top = _first_missing(out)
    if top is not None:
        try:
            out.mkdir(parents=True)
        except FileExistsError:
            top = None  # another process made it meanwhile: the lock decides
        except OSError as err:
            raise cannot_write_error(out, err) from None
    if not out.is_dir():
        raise FusescopeError(f"--out {out}: a file, not a run folder; choose another --out")
    stack.enter_context(run_folder_lock(out))
    return top


def train(
    cfg: DictConfig,
    out: str | Path,
    resume: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Path | None:
    """Train `cfg` into the run folder `out` (resuming from its checkpoint if there is one).

    Every check (config values, data, model, a resume's settings) runs before the first write,
    so a refused run leaves no folder behind. One process at a time trains into a folder (it
    holds RUN/.lock).

    Args:
        cfg: a config from `fusescope.config.load_config`.
        out: run folder.
        resume: continue from `out/checkpoints/last.ckpt` if present.
        on_step: called with the step number after each optimiser step (tests use it to
            interrupt a run).

    Returns:
        The run folder on the first process, None on the others.
    """
    check_config(cfg)
    out = Path(out)
    fabric = make_fabric(cfg.train)
    fabric.launch()
    rank0 = fabric.global_rank == 0
    with contextlib.ExitStack() as lock:
        created = claim_run_folder(out, lock) if rank0 else None
        try:
            return _train_locked(cfg, out, resume, on_step, fabric)
        except BaseException:
            # a refused or crashed run that never checkpointed leaves no folder behind
            if created is not None and not (out / CHECKPOINT).exists():
                _remove_created(out, created)
            raise


def make_fabric(t: DictConfig):
    """Lightning Fabric for `train.accelerator / devices / num_nodes / strategy / precision`;
    a value it does not accept is a one-line error."""
    from lightning_fabric import Fabric

    try:
        return Fabric(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=t.precision,
        )
    except (ValueError, RuntimeError) as err:
        raise FusescopeError(
            f"train.accelerator / devices / strategy / precision: {str(err).splitlines()[0]}"
        ) from None


def _train_locked(cfg: DictConfig, out: Path, resume: bool, on_step, fabric) -> Path | None:
    t = cfg.train
    rank0 = fabric.global_rank == 0
    resolved = to_container(cfg)

    # what the run folder holds is checked before the data is made or read
    saved_cfg = out / "config.yaml"
    saved = _read_saved_config(saved_cfg) if saved_cfg.is_file() else None
    if saved is not None and not _same_run(saved, resolved):
        raise FusescopeError(
            f"{out}: holds a run of another data/model config "
            f"({_describe(_run_identity_changes(saved, resolved))}); choose a "
            f"new --out"
        )
    ckpt_path = out / CHECKPOINT
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    changes = {}
    if state is not None and saved is not None:
        changes = resume_changes(out, saved, resolved, state["step"])

    root = Path(cfg.data.root)
    generating = cfg.data.synth is not None and not (root / "meta.json").is_file()
    made_data = _first_missing(root) if generating else None
    try:
        if rank0:
            ensure_data(cfg.data, progress=t.progress)
        fabric.barrier()
        prepared = _prepare(cfg, out, state, fabric)
    except BaseException:
        # the known-answer data this command generated goes with the refused run (checks that
        # need the data come after it is made)
        if rank0 and generating:
            if made_data is not None:
                _remove_created(root, made_data)
            elif root.is_dir():  # an empty folder before: only what is in it now is ours
                _clear(root)
        raise
    meta, task, info, stats, dataset, model, optimizer, scheduler, step, consumed = prepared
    dropout = dropout_probabilities(t.get("modality_dropout"), list(cfg.data.modalities))
    # with train.stages, the steps at which a fresh optimiser state begins (the first stage's
    # is the run's own start)
    fresh_state_at = (
        set(stage_starts(t.stages)[1:]) if t.get("stages") and t.stage_fresh_optimizer else set()
    )
    # each dropped modality gets its kind's fill (an image: zeros after normalisation; a text:
    # a text that says nothing in the run's tokenizer)
    dropout_kinds = {m: kind_of(meta.modalities[m]) for m in dropout}
    dropout_texts = blank_texts(cfg, dropout_kinds)

    if rank0 and t.tensorboard:
        require_tensorboard()
    # everything is checked: only now is the run folder written
    if rank0:
        # under the lock no other process writes here: temp files are a killed run's leftovers
        remove_stale_temps(out, ["config.yaml", "run.json", WEIGHTS, "metrics.jsonl"])
        remove_stale_temps(ckpt_path.parent, [ckpt_path.name])
        if state is None:
            # starting over (--no-resume): the previous run's checkpoint, weights and results
            # would otherwise sit beside a config that no longer describes them
            ckpt_path.unlink(missing_ok=True)
            (out / WEIGHTS).unlink(missing_ok=True)
            for old in [*out.glob("eval_*.json"), out / "curves.png"]:
                old.unlink(missing_ok=True)
        with atomic_path(saved_cfg) as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if info is None:
            write_json(
                out / "run.json",
                {
                    "fusescope_version": fusescope.__version__,
                    "torch_version": torch.__version__,
                    # what decides a CPU run's last bits besides the code and data: the
                    # kernels' instruction set and the thread count (engine/device.cpu_threads)
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch_threads": torch.get_num_threads(),
                    # absolute: `fusescope eval RUN` from another working directory finds it
                    "data_root": str(root.resolve()),
                    "data_fingerprint": fingerprint(
                        cfg.data.root,
                        list(cfg.data.modalities),
                        [cfg.data.train_split, cfg.data.val_split],
                    ),
                    "normalization": stats,
                    "meta": meta.to_dict(),
                },
            )
        elif changes or step < t.max_steps:
            # a resumed run keeps the record of what started it (version, fingerprint,
            # statistics) and adds when it resumed and which settings changed there
            info.setdefault("resumed", []).append(
                {
                    "step": step,
                    "fusescope_version": fusescope.__version__,
                    "changed": {k: list(v) for k, v in changes.items()},
                }
            )
            write_json(out / "run.json", info)
        _keep_metrics_until(out / "metrics.jsonl", step)
        if state is not None:
            print(
                f"resuming {out} from step {step}"
                + (f" with {_describe(changes)}" if changes else "")
            )
    raw_model, raw_optimizer = model, optimizer
    if t.compile:  # Fabric keeps the compiled module and applies its strategy underneath
        model = torch.compile(model)
    model, optimizer = fabric.setup(model, optimizer)

    sampler = GlobalBatchSampler(
        len(dataset),
        t.batch_size * t.grad_accum,
        fabric.global_rank,
        fabric.world_size,
        t.seed,
        start=consumed,
    )
    # one sampler batch feeds one optimiser step; split it into grad_accum micro-batches
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        persistent_workers=cfg.data.num_workers > 0,
    )
    stats_fn = getattr(raw_model, "training_stats", None)
    last_save = time.monotonic()

    def save(path_step: int) -> None:
        nonlocal last_save
        if rank0:
            save_checkpoint(
                ckpt_path,
                {
                    "model": raw_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": path_step,
                    "samples_consumed": consumed,
                    "torch_rng": torch.get_rng_state(),
                    "fusescope_version": fusescope.__version__,
                },
            )
        fabric.barrier()
        last_save = time.monotonic()

    def save_is_due() -> bool:
        """train.ckpt_minutes passed since the last checkpoint (asked once per log interval;
        every process must agree, as saving ends with a barrier)."""
        if not t.ckpt_minutes:
            return False
        due = time.monotonic() - last_save >= 60 * t.ckpt_minutes
        if fabric.world_size > 1:
            due = bool(fabric.broadcast(due, src=0))
        return due

    log_file = (out / "metrics.jsonl").open("a") if rank0 else None
    tensorboard = open_tensorboard(out) if rank0 and t.tensorboard else None
    bar = tqdm(
        total=t.max_steps,
        initial=step,
        desc=f"train {cfg.model.name}",
        unit="step",
        disable=not (rank0 and t.progress),
        dynamic_ncols=True,
    )
    batches = iter(loader)
    if state is not None:
        # after iter(loader), which draws a seed from this generator
        torch.set_rng_state(state["torch_rng"])
    model.train()
    if t.freeze_bn_stats:
        freeze_bn_statistics(raw_model)
    start_time, start_step = time.perf_counter(), step
    try:
        while step < t.max_steps:
            if step in fresh_state_at:  # a new stage: the authors build a new optimiser here
                raw_optimizer.state.clear()
            big = next(batches)
            # the loss is a mean over the whole global batch (e.g. its labelled pixels)
            weight = task.loss_denominator(
                fabric.to_device({k: v for k, v in big.items() if k != "id"}), meta, t
            )
            if fabric.world_size > 1:
                weight = fabric.all_reduce(weight, reduce_op="sum") / fabric.world_size
            # each micro-batch's loss is its share of the step's (the global denominator, aux
            # losses / grad_accum): the step's loss and parts are their sums, kept on the device
            step_loss, step_parts = None, {}
            for i in range(t.grad_accum):
                micro = {k: v[i :: t.grad_accum] for k, v in big.items()}
                micro = fabric.to_device({k: v for k, v in micro.items() if k != "id"})
                micro = drop_modalities(
                    micro, dropout, list(cfg.data.modalities), dropout_kinds, dropout_texts
                )
                with fabric.no_backward_sync(model, enabled=i < t.grad_accum - 1):
                    output = model(micro)
                    loss, parts = task.loss(
                        output, micro, meta, t, weight, aux_scale=1 / t.grad_accum
                    )
                    fabric.backward(loss)
                step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
                for k, v in parts.items():
                    step_parts[k] = v if k not in step_parts else step_parts[k] + v
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            consumed += t.batch_size * t.grad_accum
            bar.update(1)
            logged = step % t.log_every == 0 or step == t.max_steps
            if logged:
                # the only host sync of the loop, once per log interval
                record = {
                    "step": step,
                    "loss": float(step_loss),
                    **{k: float(v) for k, v in step_parts.items()},
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": (step - start_step)
                    * t.batch_size
                    * t.grad_accum
                    / (time.perf_counter() - start_time),
                }
                if stats_fn is not None:
                    record.update({k: float(v) for k, v in stats_fn().items()})
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}", img_s=f"{record['samples_per_s']:.1f}"
                )
                if log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if tensorboard is not None:
                    for key, value in record.items():
                        if key != "step":
                            tensorboard.add_scalar(key, value, step)
                if not math.isfinite(record["loss"]):
                    raise FusescopeError(
                        f"loss became {record['loss']} at step {step}; lower "
                        f"train.lr or check the data"
                    )
            if step % t.ckpt_every == 0 or step == t.max_steps or (logged and save_is_due()):
                save(step)
            if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
                _evaluate_during_training(fabric, raw_model, cfg, stats, meta, step, log_file)
                model.train()
                if t.freeze_bn_stats:
                    freeze_bn_statistics(raw_model)
            if on_step is not None:
                on_step(step)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise disk_full_error(Path(err.filename or out / "metrics.jsonl")) from None
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise out_of_memory_error(
            err,
            f"at step {step + 1} with train.batch_size={t.batch_size}, "
            f"data.crop_size={cfg.data.crop_size}",
            "them (or raise train.grad_accum), or the model's sizes (model.*)",
        ) from None
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if tensorboard is not None:
            tensorboard.close()
    if rank0:
        # the digest in run.json names these weights only once they are written
        record_weights_digest(out, None)
        record_weights_digest(out, save_weights(out / WEIGHTS, raw_model, step=step))
        from fusescope.engine.curves import write_curves

        write_curves(out)
    fabric.barrier()
    return out if rank0 else None


def _clear(folder: Path) -> None:
    """Remove what is inside `folder` (an empty folder before this process filled it)."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _prepare(cfg: DictConfig, out: Path, state: dict | None, fabric) -> tuple:
    """Every check and object a run needs before its folder is written: the data, its
    statistics, the model, the optimiser and schedule (restored from `state` on a resume)."""
    t = cfg.train
    meta = load_meta(cfg.data.root)
    task = task_of(cfg)
    task.check_data(cfg, meta, fabric.world_size)
    if state is not None and (out / "run.json").is_file():
        info = read_json(out / "run.json")
        stats = info["normalization"]
        _check_same_data(out, cfg, info)
    else:
        info = None
        stats = task.normalisation_stats(cfg, progress=t.progress and fabric.global_rank == 0)
    dataset = task.train_dataset(cfg, stats, t.seed)

    torch.manual_seed(t.seed)  # same initial weights on every process
    # a resumed run's checkpoint replaces the pretrained weights: don't fetch them
    try:
        model = task.build_model(cfg, meta, pretrained=state is None, stats=stats)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise out_of_memory_error(
            err, f"building model {cfg.model.name}", "the model's sizes (model.*)"
        ) from None
    if fabric.world_size > 1 and t.sync_bn:
        model = convert_batchnorm(model, fabric.device.type)
    optimizer = make_optimizer(model, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(t))
    step, consumed = 0, 0
    if state is not None:
        ckpt_path = out / CHECKPOINT
        load_weights(model, state["model"], ckpt_path)
        step, consumed = state["step"], state["samples_consumed"]
        if step < t.max_steps:  # a finished run needs no optimiser state to be evaluated
            try:
                optimizer.load_state_dict(state["optimizer"])
            except ValueError as err:
                raise FusescopeError(
                    f"{ckpt_path}: its optimiser state does not fit this model's parameter "
                    f"groups ({err}); it was saved by another fusescope version or with other "
                    f"train.lr_scales: resume it with those, or start a new --out"
                ) from None
            scheduler.load_state_dict(state["scheduler"])
    return meta, task, info, stats, dataset, model, optimizer, scheduler, step, consumed


def _check_same_data(out: Path, cfg: DictConfig, info: dict) -> None:
    """A resumed run reads the data it started with (its fingerprint in run.json), not another
    folder that `data.root` names from this working directory or that was regenerated.

    Raises:
        FusescopeError: the fingerprints differ.
    """
    recorded = info.get("data_fingerprint")
    if not isinstance(recorded, str):
        return
    now = fingerprint(
        cfg.data.root, list(cfg.data.modalities), [cfg.data.train_split, cfg.data.val_split]
    )
    if now != recorded:
        raise FusescopeError(
            f"{out}: the data at {Path(cfg.data.root).resolve()} is not the data this run "
            f"started with (fingerprint {now}, run.json has {recorded}); point data.root at "
            f"that data ({info.get('data_root', 'recorded in run.json')}) or start a new --out"
        )


def _read_saved_config(path: Path) -> dict:
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise FusescopeError(
            f"{path}: cannot read the run's config ({type(err).__name__}); choose a new --out"
        ) from None
    if not isinstance(loaded, dict):
        raise FusescopeError(f"{path}: not a run config; choose a new --out")
    return to_container(config_from_dict(loaded))


def require_tensorboard():
    """TensorBoard's `SummaryWriter`, or a one-line error (asked before the run folder is
    written, so a missing package leaves nothing behind)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FusescopeError(
            "train.tensorboard=true needs the tensorboard package: pip install "
            "'fusescope[tensorboard]'"
        ) from None
    return SummaryWriter


def open_tensorboard(out: Path):
    """A TensorBoard writer under RUN/tensorboard (optional: metrics.jsonl is always written)."""
    return require_tensorboard()(str(out / "tensorboard"))


def _evaluate_during_training(fabric, model, cfg, stats, meta, step, log_file) -> None:
    """`train.eval_every`'s validation, under a private random state: whatever it draws (the
    DataLoader's seed, a feature network's initialisation) is drawn from a copy that is thrown
    away after, so training, and a run resumed from a checkpoint taken before this evaluation,
    see the same random numbers as a run without it."""
    task = task_of(cfg)
    device = fabric.device
    forked = [device] if device.type in ("cuda", "mps") else []
    with torch.random.fork_rng(devices=forked, device_type=device.type if forked else "cuda"):
        torch.manual_seed(cfg.train.seed)
        ds = task.eval_dataset(cfg, cfg.data.val_split, stats)
        result = task.evaluate(model, ds, cfg, meta, device=device, fabric=fabric)
    if log_file is not None:
        logged = {f"val_{k}": v for k, v in task.logged_during_training(result).items()}
        log_file.write(json.dumps({"step": step, **logged}) + "\n")
