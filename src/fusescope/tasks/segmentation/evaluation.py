"""Segmentation's evaluation protocols, those of the field: single scale, flip, multi-scale +
flip, sliding window.

Predictions are averaged as softmax probabilities at the input resolution. Inputs are rescaled
and mirrored as their kinds say (`fusescope.data.kinds`): depth by nearest neighbour (no invented
depth between surfaces), images bilinearly; a normal map's x turns around when mirrored. Under
several processes each takes every world_size-th sample and the confusion matrices are summed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from fusescope.data.batching import collate
from fusescope.data.kinds import KINDS
from fusescope.engine.memory import check_fits
from fusescope.errors import FusescopeError
from fusescope.tasks.segmentation.metrics import SegMetrics, group_miou, metrics_from_confusion

TTA_MODES = ("none", "flip", "ms-flip")


def _resize_inputs(batch: dict[str, Tensor], kinds: dict[str, str], size) -> dict[str, Tensor]:
    out = {}
    for name, kind in kinds.items():
        x = batch[name]
        if tuple(x.shape[-2:]) != tuple(size):
            mode = KINDS[kind].interpolation  # nearest where holes must stay holes
            x = F.interpolate(
                x, size=size, mode=mode, **({} if mode == "nearest" else {"align_corners": False})
            )
        out[name] = x
    return out


def _windows(length: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - window, 0) + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@torch.no_grad()
def sliding_logits(
    model: nn.Module,
    inputs: dict[str, Tensor],
    num_classes: int,
    window: tuple[int, int],
    stride: tuple[int, int],
) -> Tensor:
    """Logits from overlapping windows, averaged where they overlap. All windows of the batch
    go through the model as one batch (no per-tile loop on the device)."""
    first = next(iter(inputs.values()))
    b, _, h, w = first.shape
    wh, ww = window
    ph, pw = max(wh - h, 0), max(ww - w, 0)  # pad images smaller than the window
    H, W = h + ph, w + pw
    tops, lefts = _windows(H, wh, stride[0]), _windows(W, ww, stride[1])
    # the padded frames, their windows and the windows' logits, before any of it is allocated
    channels = sum(v.shape[1] for v in inputs.values())
    crops = len(tops) * len(lefts) * b * wh * ww
    check_fits(
        4 * (b * H * W * (channels + num_classes + 1) + crops * (channels + num_classes)),
        f"eval.window / --window {wh} {ww} on {b} frame(s) of {h}x{w} ({len(tops) * len(lefts)} "
        f"windows each)",
    )
    padded = {k: F.pad(v, (0, pw, 0, ph)) for k, v in inputs.items()}
    crops = {
        k: torch.cat([v[..., t : t + wh, l : l + ww] for t in tops for l in lefts])
        for k, v in padded.items()
    }  # (nWin*B, C, wh, ww), window-major
    logits = model(crops)["logits"].float()
    logits = logits.view(len(tops) * len(lefts), b, num_classes, wh, ww)
    total = first.new_zeros(b, num_classes, H, W, dtype=torch.float32)
    count = first.new_zeros(1, 1, H, W, dtype=torch.float32)
    for n, (t, l) in enumerate((t, l) for t in tops for l in lefts):
        total[..., t : t + wh, l : l + ww] += logits[n]
        count[..., t : t + wh, l : l + ww] += 1
    return (total / count)[..., :h, :w]


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    batch: dict[str, Tensor],
    kinds: dict[str, str],
    num_classes: int,
    tta: str = "none",
    scales=(0.75, 1.0, 1.25),
    window=None,
    stride=None,
    mirror: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
) -> Tensor:
    """Class probabilities (B, K, H, W) under the chosen test-time augmentation.

    `mirror` flips the normalised inputs left-right as their kinds say (`Normalize.mirror`: a
    normal's x turns around); None flips the pixels only."""
    if tta not in TTA_MODES:
        raise FusescopeError(f"--tta {tta!r} unknown; choose from {', '.join(TTA_MODES)}")
    inputs = {k: batch[k] for k in kinds}
    size = next(iter(inputs.values())).shape[-2:]
    scales = list(scales) if tta == "ms-flip" else [1.0]
    flips = [False, True] if tta in ("flip", "ms-flip") else [False]
    if window is not None:
        window = tuple(window)
        stride = tuple(stride) if stride else tuple(max(1, 2 * s // 3) for s in window)
    probs = None
    for scale in scales:
        scaled_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        scaled = _resize_inputs(inputs, kinds, scaled_size)
        for flip in flips:
            if flip:
                x = (
                    mirror(scaled)
                    if mirror is not None
                    else {k: v.flip(-1) for k, v in scaled.items()}
                )
            else:
                x = scaled
            if window is None:
                logits = model(x)["logits"].float()
            else:
                logits = sliding_logits(model, x, num_classes, window, stride)
            if flip:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            p = logits.softmax(1)
            probs = p if probs is None else probs + p
    return probs / (len(scales) * len(flips))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    eval_cfg: DictConfig,
    device="cpu",
    fabric=None,
    progress: bool = False,
) -> dict:
    """Metrics of `model` on `dataset` (a FolderDataset with normalisation) under `eval_cfg`."""
    meta = dataset.meta
    kinds = {m: meta.modalities[m].kind for m in dataset.modalities}
    indices = list(range(len(dataset)))
    if fabric is not None and fabric.world_size > 1:
        indices = indices[fabric.global_rank :: fabric.world_size]
    loader = DataLoader(
        Subset(dataset, indices), batch_size=eval_cfg.batch_size, collate_fn=collate
    )
    # the flip of flip TTA in normalised units, with the statistics on the batches' device
    normalize = getattr(dataset, "normalize", None)
    mirror = copy.copy(normalize).to(device).mirror if normalize is not None else None
    was_training = model.training
    model.eval()
    metrics = SegMetrics(meta.num_classes, meta.ignore_index, device=str(device))
    # closed (and cleared) before an error propagates, so the error's line stands alone
    with tqdm(loader, desc="eval", disable=not progress, leave=False) as batches:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items() if k != "id"}
            probs = predict_probs(
                model,
                batch,
                kinds,
                meta.num_classes,
                eval_cfg.tta,
                eval_cfg.scales,
                eval_cfg.window,
                eval_cfg.stride,
                mirror=mirror,
            )
            metrics.update(probs.argmax(1), batch["label"])
    model.train(was_training)
    confusion = metrics.confusion
    if fabric is not None and fabric.world_size > 1:
        confusion = fabric.all_reduce(confusion, reduce_op="sum")
    result = metrics_from_confusion(confusion)
    groups = meta.cue_groups()
    if groups:
        result["cue_group_miou"] = group_miou(result["per_class_iou"], groups)
    result["class_names"] = meta.class_names
    return result
