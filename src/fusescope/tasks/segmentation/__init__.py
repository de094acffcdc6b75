"""Semantic segmentation: per-pixel classes, cross-entropy over labelled pixels, mIoU under the
field's test-time protocols. The task (`Segmentation`, registered as `segmentation`) is here;
beside it, what only segmentation has:

    loss.py        cross-entropy over labelled pixels (main, per-stream and aux-head logits)
    metrics.py     the confusion matrix: pixel accuracy, mean accuracy, mIoU, per-class IoU
    evaluation.py  single scale, flip, multi-scale + flip, sliding window (`predict_probs`)
    predict.py     `fusescope predict`: masks and overlays for the user's frames
    frames.py      folder prediction's reader (DataLoader workers)
    export.py      `fusescope export`: the ONNX graph and `OnnxSegmentor` (`predict --onnx`)
"""

from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor, nn

from fusescope.data.build import eval_dataset, normalisation_stats, train_dataset
from fusescope.data.folder import FolderDataset
from fusescope.data.meta import LABEL_DIR
from fusescope.engine.memory import physical_memory
from fusescope.errors import FusescopeError
from fusescope.models import FUSION_METHODS, build_model
from fusescope.tasks.base import Task, check_global_batch, register_task
from fusescope.tasks.segmentation.evaluation import evaluate
from fusescope.tasks.segmentation.loss import label_weight, total_loss


class Segmentation(Task):
    name = "segmentation"
    methods = FUSION_METHODS
    primary_metric = "miou"

    def check_data(self, cfg: DictConfig, meta, world_size: int = 1) -> None:
        """Both splits present and non-empty with their files, the global batch no larger than
        the train split, class weights for every class, and a batch that fits in memory."""
        t, d = cfg.train, cfg.data
        modalities = list(d.modalities)
        train_set = FolderDataset(d.root, d.train_split, modalities)
        FolderDataset(d.root, d.val_split, modalities)  # read at the end: check it now
        check_global_batch(cfg, len(train_set), world_size)
        if t.class_weights is not None and len(t.class_weights) != meta.num_classes:
            raise FusescopeError(
                f"train.class_weights has {len(t.class_weights)} values; the "
                f"data set has {meta.num_classes} classes"
            )
        first = train_set.files[LABEL_DIR][train_set.ids[0]]
        try:
            with Image.open(first) as image:
                width, height = image.size
        except OSError as err:
            raise FusescopeError(f"{first}: cannot read image ({err})") from None
        check_batch_memory(cfg, meta, (height, width), world_size)

    def normalisation_stats(self, cfg: DictConfig, progress: bool = False) -> dict:
        return normalisation_stats(cfg.data, progress=progress)

    def train_dataset(self, cfg: DictConfig, stats: dict, seed: int):
        return train_dataset(cfg.data, stats, seed)

    def eval_dataset(
        self, cfg: DictConfig, split: str, stats: dict, corruption=None, seed: int = 0
    ):
        return eval_dataset(cfg.data, split, stats, corruption=corruption, seed=seed)

    def build_model(
        self, cfg: DictConfig, meta, pretrained: bool = True, stats: dict | None = None
    ) -> nn.Module:
        modalities = list(cfg.data.modalities)
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        if not pretrained and "pretrained" in model_cfg:
            model_cfg["pretrained"] = False
        return build_model(
            model_cfg,
            modalities,
            {m: meta.modalities[m].channels for m in modalities},
            meta.num_classes,
        )

    def loss_denominator(self, batch: dict[str, Tensor], meta, train_cfg: DictConfig) -> Tensor:
        return label_weight(batch["label"], meta.ignore_index, _class_weights(train_cfg, batch))

    def loss(
        self,
        output: dict,
        batch: dict[str, Tensor],
        meta,
        train_cfg: DictConfig,
        denominator: Tensor,
        aux_scale: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return total_loss(
            output,
            batch["label"],
            meta.ignore_index,
            train_cfg.per_modality_weight,
            _class_weights(train_cfg, batch),
            denominator,
            aux_scale=aux_scale,
        )

    def evaluate(
        self,
        model: nn.Module,
        dataset,
        cfg: DictConfig,
        meta,
        device="cpu",
        fabric=None,
        progress: bool = False,
    ) -> dict:
        if dataset.meta.num_classes != meta.num_classes:
            raise FusescopeError(
                f"{cfg.data.root}: {dataset.meta.num_classes} classes, the "
                f"run was trained on {meta.num_classes}"
            )
        return evaluate(model, dataset, cfg.eval, device=device, fabric=fabric, progress=progress)

    def check_eval_options(self, **options) -> None:
        """Segmentation supports every `fusescope eval` option."""

    def format_result(self, result: dict) -> str:
        def pct(x):
            return "  n/a" if x is None else f"{100 * x:5.1f}"

        lines = [
            f"{result['model']} on {result['split']} (tta {result['tta']}"
            f"{', ' + result['corrupt'] if result.get('corrupt') else ''}"
            f"{''.join(', without ' + m for m in result.get('drop') or [])}): "
            f"mIoU {pct(result['miou'])}  pixel acc {pct(result['pixel_acc'])}  "
            f"mean acc {pct(result['mean_acc'])}"
        ]
        for name, value in (result.get("cue_group_miou") or {}).items():
            lines.append(f"  {name + '-cue classes':24s} mIoU {pct(value)}")
        width = max(len(n) for n in result["class_names"])
        for name, iou in zip(result["class_names"], result["per_class_iou"], strict=True):
            lines.append(f"  {name:{width}s} IoU {pct(iou)}")
        return "\n".join(lines)

    def compare_columns(self, result: dict) -> dict[str, float | None]:
        columns = {"mIoU (%)": _percent(result.get("miou"))}
        for name, value in (result.get("cue_group_miou") or {}).items():
            columns[f"{name} mIoU (%)"] = _percent(value)
        return columns


def _percent(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _class_weights(train_cfg: DictConfig, like: dict[str, Tensor]) -> Tensor | None:
    if train_cfg.class_weights is None:
        return None
    return _weights_on(tuple(train_cfg.class_weights), like["label"].device)


@functools.cache
def _weights_on(weights: tuple[float, ...], device: torch.device) -> Tensor:
    return torch.tensor(weights, device=device)  # once per run, not once per step


def check_batch_memory(cfg: DictConfig, meta, frame: tuple[int, int], world_size: int = 1) -> None:
    """Refuse a crop or rescale so large that one batch of inputs alone (a lower bound of what
    a step needs) exceeds this machine's memory, before anything is allocated."""
    t, d = cfg.train, cfg.data
    total = physical_memory()
    if total is None:
        return
    per_pixel = 4 * sum(meta.modalities[m].channels for m in d.modalities) + 8  # float32, int64
    top = max(d.scale_range)
    resized = (round(frame[0] * top), round(frame[1] * top))
    crop = tuple(d.crop_size) if d.crop_size else tuple(frame)
    one = max(resized[0], crop[0]) * max(resized[1], crop[1]) * per_pixel  # before the crop
    batch = t.batch_size * t.grad_accum // world_size * crop[0] * crop[1] * per_pixel
    needed = one + batch
    if needed > total:
        raise FusescopeError(
            f"data.crop_size={list(crop)} (frames {frame[0]}x{frame[1]}, data.scale_range up to "
            f"{top}) with train.batch_size={t.batch_size} x grad_accum={t.grad_accum}: one batch "
            f"of inputs alone needs {needed / 2**30:.1f} GiB, more than this machine's "
            f"{total / 2**30:.1f} GiB of memory; lower them"
        )


TASK = register_task(Segmentation())
