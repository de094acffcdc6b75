"""The training loop: explicit, on Lightning Fabric (devices, DDP, mixed precision).

Determinism and resumption come from the data order, not from luck: every global batch is a
function of (seed, samples consumed), each sample's augmentation of (seed, epoch, index), and
`train.batch_size` is the *global* batch, split over processes. A run killed and resumed from its
last checkpoint therefore ends with the same weights as an uninterrupted run, and a run on two
processes matches the one-process run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

import fusescope
from fusescope.config import to_container
from fusescope.data.build import ensure_data, normalisation_stats, train_dataset
from fusescope.data.folder import fingerprint
from fusescope.data.meta import load_meta
from fusescope.engine.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    build_run_model,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from fusescope.engine.distributed import convert_batchnorm
from fusescope.engine.loss import label_weight, total_loss
from fusescope.engine.missing import drop_modalities, dropout_probabilities
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, read_json, write_json


class GlobalBatchSampler:
    """Yields this process's share of each global batch, forever, from a given position.

    Global batch t holds positions [t*B, (t+1)*B) of an endless stream made of per-epoch
    permutations (seeded by (seed, epoch); the last partial batch of an epoch is dropped).
    Items are (epoch, index) pairs, which seed each sample's augmentation.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int,
                 start: int = 0):
        if batch_size % world_size:
            raise FusescopeError(f"train.batch_size={batch_size} must be divisible by the "
                                 f"number of processes ({world_size})")
        if n < batch_size:
            raise FusescopeError(f"train.batch_size={batch_size} exceeds the {n} training "
                                 f"samples")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.local = batch_size // world_size
        self.rank = rank

    def __iter__(self):
        per_epoch = (self.n // self.batch_size) * self.batch_size
        pos = self.start
        while True:
            epoch, offset = divmod(pos, per_epoch)
            perm = np.random.default_rng([self.seed, 7, epoch]).permutation(self.n)
            batch = perm[offset:offset + self.batch_size]
            mine = batch[self.rank * self.local:(self.rank + 1) * self.local]
            yield [(epoch, int(i)) for i in mine]
            pos += self.batch_size


def collate(samples: list[dict]) -> dict:
    ids = [s.pop("id") for s in samples]
    try:
        batch = default_collate(samples)
    except RuntimeError as err:
        raise FusescopeError(f"cannot batch samples {ids[:4]} of different sizes: set "
                             f"data.crop_size, or eval.batch_size=1 ({err})") from None
    batch["id"] = ids
    return batch


def lr_factor(step: int, warmup: int, max_steps: int, power: float) -> float:
    """Linear warmup from 1/warmup, then polynomial decay to 0 at max_steps."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, max_steps - warmup)) ** power


def make_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on norms and biases (decaying BN gammas would fight CEN's
    sparsity rule). A parameter's lr is `lr x` the scale of the longest `train.lr_scales` prefix
    of its name `x` the scale the model gives it in `lr_scales()` (e.g. CEN's exchange gammas);
    each distinct scale is its own group, and the scheduler multiplies every group's lr alike."""
    from fusescope.models.multistream import ModalityBatchNorm

    model_scale = {id(p): s for p, s in getattr(model, "lr_scales", list)()}
    prefix_scale = {str(k): float(v) for k, v in (cfg.get("lr_scales") or {}).items()}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for prefix, scale in prefix_scale.items():
        if scale <= 0:
            raise FusescopeError(f"train.lr_scales.{prefix} must be > 0, got {scale}")
        if not any(n == prefix or n.startswith(prefix + ".") for n, _ in named):
            tops = sorted({n.split(".")[0] for n, _ in named})
            raise FusescopeError(f"train.lr_scales: no parameter under {prefix!r}; the model's "
                                 f"top-level modules are {', '.join(tops)}")

    def scale_of(name: str, p: torch.nn.Parameter) -> float:
        matches = [k for k in prefix_scale if name == k or name.startswith(k + ".")]
        by_name = prefix_scale[max(matches, key=len)] if matches else 1.0
        return by_name * model_scale.get(id(p), 1.0)

    # per-modality BN parameters are (M, C): their module, not their shape, marks them as norms
    norms = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm,
             ModalityBatchNorm)
    undecayed = {id(p) for m in model.modules() if isinstance(m, norms)
                 for p in m.parameters(recurse=False)}
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, p in named:
        decayed = p.ndim > 1 and id(p) not in undecayed
        groups.setdefault((decayed, scale_of(name, p)), []).append(p)
    param_groups = [
        {"params": params, "lr": cfg.lr * scale,
         "weight_decay": cfg.weight_decay if decayed else 0.0}
        for (decayed, scale), params in groups.items()
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)
    raise FusescopeError(f"train.optimizer {cfg.optimizer!r} unknown; known: adamw, sgd")


def _same_run(saved: dict, current: dict) -> bool:
    """A folder may be resumed only by the same data and model config."""
    return all(saved.get(k) == current.get(k) for k in ("data", "model"))


def train(cfg: DictConfig, out: str | Path, resume: bool = True,
          on_step: Callable[[int], None] | None = None) -> Path | None:
    """Train `cfg` into the run folder `out` (resuming from its checkpoint if there is one).

    Args:
        cfg: a config from `fusescope.config.load_config`.
        out: run folder.
        resume: continue from `out/checkpoints/last.ckpt` if present.
        on_step: called with the step number after each optimiser step (tests use it to
            interrupt a run).

    Returns:
        The run folder on the first process, None on the others.
    """
    from lightning_fabric import Fabric

    out = Path(out)
    t = cfg.train
    fabric = Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                    strategy=t.strategy, precision=t.precision)
    fabric.launch()
    rank0 = fabric.global_rank == 0
    resolved = to_container(cfg)

    if rank0:
        ensure_data(cfg.data, progress=t.progress)
        saved_cfg = out / "config.yaml"
        if saved_cfg.is_file() and not _same_run(
                OmegaConf.to_container(OmegaConf.load(saved_cfg)), resolved):
            raise FusescopeError(f"{out}: holds a run of another data/model config; choose a "
                                 f"new --out")
    fabric.barrier()
    meta = load_meta(cfg.data.root)
    ckpt_path = out / CHECKPOINT
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if state is not None and (out / "run.json").is_file():
        stats = read_json(out / "run.json")["normalization"]
    else:
        stats = normalisation_stats(cfg.data, progress=t.progress and rank0)
    dataset = train_dataset(cfg.data, stats, t.seed)

    torch.manual_seed(t.seed)  # same initial weights on every process
    # a resumed run's checkpoint replaces the pretrained weights: don't fetch them
    model = build_run_model(cfg, meta, pretrained=state is None)
    if fabric.world_size > 1 and t.sync_bn:
        model = convert_batchnorm(model, fabric.device.type)
    optimizer = make_optimizer(model, t)
    dropout = dropout_probabilities(t.get("modality_dropout"), list(cfg.data.modalities))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.warmup_steps, t.max_steps, t.poly_power))
    # the run folder is written only once the model and optimiser are known to build
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    # a resumed run keeps the record of what started it (version, fingerprint, statistics)
    if rank0 and not (state is not None and (out / "run.json").is_file()):
        write_json(out / "run.json", {
            "fusescope_version": fusescope.__version__,
            "torch_version": torch.__version__,
            "data_fingerprint": fingerprint(cfg.data.root, list(cfg.data.modalities),
                                            [cfg.data.train_split, cfg.data.val_split]),
            "normalization": stats,
            "meta": meta.to_dict(),
        })

    step, consumed = 0, 0
    if state is not None:
        load_weights(model, state["model"], ckpt_path)
        step, consumed = state["step"], state["samples_consumed"]
        if step < t.max_steps:  # a finished run needs no optimiser state to be evaluated
            try:
                optimizer.load_state_dict(state["optimizer"])
            except ValueError as err:
                raise FusescopeError(
                    f"{ckpt_path}: its optimiser state does not fit this model's parameter "
                    f"groups ({err}); it was saved by another fusescope version or with other "
                    f"train.lr_scales: resume it with those, or start a new --out") from None
            scheduler.load_state_dict(state["scheduler"])
        if rank0:
            print(f"resuming {out} from step {step}")
    raw_model = model
    model, optimizer = fabric.setup(model, optimizer)

    sampler = GlobalBatchSampler(len(dataset), t.batch_size * t.grad_accum, fabric.global_rank,
                                 fabric.world_size, t.seed, start=consumed)
    # one sampler batch feeds one optimiser step; split it into grad_accum micro-batches
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=collate, persistent_workers=cfg.data.num_workers > 0)
    class_weights = (torch.tensor(list(t.class_weights), device=fabric.device)
                     if t.class_weights is not None else None)
    stats_fn = getattr(raw_model, "training_stats", None)

    def save(path_step: int) -> None:
        if rank0:
            save_checkpoint(ckpt_path, {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": path_step,
                "samples_consumed": consumed, "torch_rng": torch.get_rng_state(),
                "fusescope_version": fusescope.__version__})
        fabric.barrier()

    log_file = (out / "metrics.jsonl").open("a") if rank0 else None
    tensorboard = open_tensorboard(out) if rank0 and t.tensorboard else None
    bar = tqdm(total=t.max_steps, initial=step, desc=f"train {cfg.model.name}", unit="step",
               disable=not (rank0 and t.progress), dynamic_ncols=True)
    batches = iter(loader)
    if state is not None:
        # after iter(loader), which draws a seed from this generator
        torch.set_rng_state(state["torch_rng"])
    model.train()
    start_time, start_step = time.perf_counter(), step
    try:
        while step < t.max_steps:
            big = next(batches)
            # the loss is a mean over the labelled pixels of the whole global batch
            weight = label_weight(fabric.to_device(big["label"]), meta.ignore_index,
                                  class_weights)
            if fabric.world_size > 1:
                weight = fabric.all_reduce(weight, reduce_op="sum") / fabric.world_size
            for i in range(t.grad_accum):
                micro = {k: v[i::t.grad_accum] for k, v in big.items()}
                micro = fabric.to_device({k: v for k, v in micro.items() if k != "id"})
                micro = drop_modalities(micro, dropout, list(cfg.data.modalities))
                with fabric.no_backward_sync(model, enabled=i < t.grad_accum - 1):
                    output = model(micro)
                    loss, parts = total_loss(output, micro["label"], meta.ignore_index,
                                             t.per_modality_weight, class_weights, weight,
                                             aux_scale=1 / t.grad_accum)
                    fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            consumed += t.batch_size * t.grad_accum
            bar.update(1)
            if step % t.log_every == 0 or step == t.max_steps:
                # the only host sync of the loop, once per log interval
                record = {"step": step, "loss": float(loss.detach()),
                          **{k: float(v) for k, v in parts.items()},
                          "lr": scheduler.get_last_lr()[0],
                          "samples_per_s": (step - start_step) * t.batch_size * t.grad_accum
                          / (time.perf_counter() - start_time)}
                if stats_fn is not None:
                    record.update({k: float(v) for k, v in stats_fn().items()})
                bar.set_postfix(loss=f"{record['loss']:.3f}",
                                img_s=f"{record['samples_per_s']:.1f}")
                if log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if tensorboard is not None:
                    for key, value in record.items():
                        if key != "step":
                            tensorboard.add_scalar(key, value, step)
                if not math.isfinite(record["loss"]):
                    raise FusescopeError(f"loss became {record['loss']} at step {step}; lower "
                                         f"train.lr or check the data")
            if step % t.ckpt_every == 0 or step == t.max_steps:
                save(step)
            if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
                _evaluate_during_training(fabric, raw_model, cfg, stats, meta, step, log_file)
                model.train()
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if tensorboard is not None:
            tensorboard.close()
    if rank0:
        save_weights(out / WEIGHTS, raw_model)
        from fusescope.engine.curves import write_curves

        write_curves(out)
    fabric.barrier()
    return out if rank0 else None


def open_tensorboard(out: Path):
    """A TensorBoard writer under RUN/tensorboard (optional: metrics.jsonl is always written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FusescopeError("train.tensorboard=true needs the tensorboard package: pip install "
                             "'fusescope[tensorboard]'") from None
    return SummaryWriter(str(out / "tensorboard"))


def _evaluate_during_training(fabric, model, cfg, stats, meta, step, log_file) -> None:
    from fusescope.data.build import eval_dataset
    from fusescope.engine.evaluate import evaluate

    ds = eval_dataset(cfg.data, cfg.data.val_split, stats)
    result = evaluate(model, ds, cfg.eval, device=fabric.device, fabric=fabric)
    if log_file is not None:
        log_file.write(json.dumps({"step": step, "val_miou": result["miou"]}) + "\n")
