"""Classification as a task of the one engine: a set of labels (or one label) per sample.

Data: `fusescope.data.classification` (image and text modalities; `target` is a (K,) multi-hot
float vector, or an int64 class id for single-label folders). Models: `CLASSIFICATION_METHODS`
(`fusescope.models.classification`), which return `{"logits": (B,K), "per_modality": {m: (B,K)},
"aux_losses": {...}}`.

Loss: multi-label: binary cross-entropy with logits summed over samples and classes and divided
by the global batch's count of (sample, class) entries, i.e. the mean over the global batch
however it is split over micro-batches and processes; single-label: cross-entropy summed and
divided by the global batch's sample count. Each `per_modality` output is supervised the same
way with weight `train.per_modality_weight`; `aux_losses` are added as the model weighted them.

Metrics (`engine/classification_metrics.py`): micro / macro / weighted / samples F1 at one
threshold chosen on the validation split (`data.val_split`) and applied unchanged to the split
evaluated; per-class F1; per-cue-group F1 where classes declare a cue (the known-answer data);
accuracy and mean class accuracy for single-label data (there micro-F1 is the accuracy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from fusescope.data import classification as data
from fusescope.data.batching import collate
from fusescope.data.text import PAD_ID
from fusescope.engine.classification_metrics import (
    chance_f1,
    choose_threshold,
    cue_group_f1,
    multilabel_f1,
    per_class_ap,
    per_class_f1,
    single_label_scores,
)
from fusescope.errors import FusescopeError
from fusescope.models.classification import CLASSIFICATION_METHODS, build_classifier
from fusescope.tasks.base import Task, check_global_batch


def in_specs(
    meta,
    modalities: list[str],
    data_cfg: DictConfig,
    vocabularies: dict[str, list[str]] | None = None,
) -> dict:
    """What each modality is, for the model builder: image kind and channels; for text, an
    embedding table of `data.vocab_size` rows (every vocabulary the run can build fits it, so
    the model's shapes follow from the config alone) and, when known, the vocabulary itself
    (GloVe initialisation looks its words up)."""
    specs = {}
    for m in modalities:
        spec = meta.modalities[m]
        if spec.kind == "text":
            specs[m] = {
                "kind": "text",
                "pad_id": PAD_ID,
                "vocab_size": int(data_cfg.vocab_size),
                "vocab": (vocabularies or {}).get(m),
            }
        else:
            specs[m] = {"kind": spec.kind, "channels": int(spec.channels)}
    return specs


@torch.no_grad()
def predict_logits(
    model: nn.Module, dataset: Dataset, batch_size: int, device, fabric=None, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """Logits (N, K) float32 and targets of every sample of `dataset`, on the CPU.

    Under several processes each takes every world_size-th sample and the results are gathered
    (in a different sample order, which no metric here depends on).
    """
    indices = list(range(len(dataset)))
    world = fabric.world_size if fabric is not None else 1
    if world > 1:
        indices = indices[fabric.global_rank :: world]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate)
    was_training = model.training
    model.eval()
    logits, targets = [], []
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items() if k != "id"}
        logits.append(model(batch)["logits"].float())
        targets.append(batch["target"])
    model.train(was_training)
    logits, targets = torch.cat(logits), torch.cat(targets)
    if world > 1:
        logits, targets = (
            _gather(fabric, logits, len(dataset)),
            _gather(fabric, targets, len(dataset)),
        )
    return logits.cpu(), targets.cpu()


def _gather(fabric, x: Tensor, total: int) -> Tensor:
    """Every process's rows (rank r holds samples r, r + W, ...), padded to equal counts for
    the collective, unpadded after."""
    world = fabric.world_size
    rows = math.ceil(total / world)
    padded = torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])
    stacked = fabric.all_gather(padded)  # (W, rows, ...)
    counts = [len(range(r, total, world)) for r in range(world)]
    return torch.cat([stacked[r, :n] for r, n in enumerate(counts)])


def sibling_split(dataset, split: str):
    """The same data set (folder, vocabularies, normaliser) over another split."""
    twin = data.ClassificationFolderDataset(
        dataset.root,
        split,
        dataset.modalities,
        vocabularies=dataset.vocabularies,
        max_tokens=dataset.max_tokens,
        min_pixels=dataset.min_pixels,
        normalize=dataset.normalize,
        seed=dataset.seed,
    )
    return twin


def scores(logits: Tensor, targets: Tensor, meta, threshold: float | None) -> dict:
    """Every metric of one split's logits (see the module docstring)."""
    if not targets.is_floating_point():  # single-label
        out = single_label_scores(logits, targets)
        from torchmetrics.functional.classification import multiclass_f1_score

        out["micro_f1"] = out["accuracy"]
        out["macro_f1"] = float(
            multiclass_f1_score(logits.argmax(1), targets, logits.shape[1], average="macro")
        )
        return out
    probs = logits.sigmoid()
    out = multilabel_f1(probs, targets, threshold)
    out["threshold"] = threshold
    at_half = multilabel_f1(probs, targets, 0.5)
    out["micro_f1_at_0.5"], out["macro_f1_at_0.5"] = at_half["micro_f1"], at_half["macro_f1"]
    out["per_class_f1"] = per_class_f1(probs, targets, threshold)
    out["per_class_ap"] = per_class_ap(probs, targets)
    present = [v for v in out["per_class_ap"] if not math.isnan(v)]
    out["map"] = sum(present) / len(present) if present else math.nan
    out["per_class_chance_f1"] = chance_f1(targets)
    cues = [c.cue for c in meta.classes]
    if any(cues):
        out["cue_group_f1"] = cue_group_f1(out["per_class_f1"], cues)
        out["cue_group_ap"] = cue_group_f1(out["per_class_ap"], cues)
        out["cue_group_chance_f1"] = cue_group_f1(out["per_class_chance_f1"], cues)
    return out


class ClassificationTask(Task):
    name = "classification"
    methods = CLASSIFICATION_METHODS
    primary_metric = "micro_f1"

    def check_data(self, cfg: DictConfig, meta, world_size: int = 1) -> None:
        """The modalities exist, both splits are readable with their labels, the global batch
        fits the train split, and no segmentation-only setting is set."""
        d = cfg.data
        missing = [m for m in d.modalities if m not in meta.modalities]
        if missing:
            raise FusescopeError(
                f"{d.root}: data.modalities {missing} are not in its "
                f"meta.json (has {', '.join(meta.modalities)})"
            )
        if cfg.train.class_weights is not None:
            raise FusescopeError(
                "train.class_weights is for segmentation; classification "
                "weighs every (sample, class) entry alike"
            )
        CLASSIFICATION_METHODS.get(str(cfg.model.get("name")))  # an unknown name lists them
        options = dict(min_pixels=d.min_pixels)
        train_set = data.ClassificationFolderDataset(
            d.root, d.train_split, list(d.modalities), **options
        )
        data.ClassificationFolderDataset(d.root, d.val_split, list(d.modalities), **options)
        check_global_batch(cfg, len(train_set), world_size)

    def normalisation_stats(self, cfg: DictConfig, progress: bool = False) -> dict:
        return data.normalisation_stats(cfg.data, progress=progress)

    def train_dataset(self, cfg: DictConfig, stats: dict, seed: int) -> Dataset:
        ds = data.train_dataset(cfg.data, stats, seed)
        if not ds.images:  # text alone: the joint image augmentation has nothing to act on
            ds.transform = None
        return ds

    def eval_dataset(
        self, cfg: DictConfig, split: str, stats: dict, corruption=None, seed: int = 0
    ) -> Dataset:
        if corruption is not None:
            raise FusescopeError(
                "corruptions are defined for segmentation's depth and RGB "
                "frames, not for classification data"
            )
        return data.eval_dataset(cfg.data, split, stats)

    def build_model(
        self, cfg: DictConfig, meta, pretrained: bool = True, stats: dict | None = None
    ) -> nn.Module:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        if not pretrained:  # the run's own weights replace them: nothing to read or download
            for key in ("pretrained", "glove"):
                if key in model_cfg:
                    model_cfg[key] = None if key == "glove" else False
        modalities = list(cfg.data.modalities)
        # GloVe initialisation reads the run's vocabularies (saved with the normaliser's
        # statistics); a run loaded from its folder gets its own weights instead
        vocabularies = None
        if pretrained and stats is not None:
            vocabularies = {
                m: list(entry["vocab"])
                for m, entry in stats.items()
                if isinstance(entry, dict) and "vocab" in entry
            }
        return build_classifier(
            model_cfg,
            modalities,
            in_specs(meta, modalities, cfg.data, vocabularies),
            meta.num_classes,
        )

    def loss_denominator(self, batch: dict, meta, train_cfg: DictConfig) -> Tensor:
        target = batch["target"]
        count = target.numel() if target.is_floating_point() else target.shape[0]
        return torch.tensor(float(count), device=target.device)

    def loss(
        self,
        output: dict,
        batch: dict,
        meta,
        train_cfg: DictConfig,
        denominator: Tensor,
        aux_scale: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        target = batch["target"]
        denominator = denominator.clamp(min=1e-6)
        if target.is_floating_point():

            def term(logits: Tensor) -> Tensor:
                return (
                    F.binary_cross_entropy_with_logits(
                        logits.float(), target.float(), reduction="sum"
                    )
                    / denominator
                )

            name = "bce"
        else:

            def term(logits: Tensor) -> Tensor:
                return F.cross_entropy(logits.float(), target, reduction="sum") / denominator

            name = "ce"
        parts = {name: term(output["logits"])}
        for m, logits in output.get("per_modality", {}).items():
            parts[f"{name}_{m}"] = train_cfg.per_modality_weight * term(logits)
        for key, value in output.get("aux_losses", {}).items():
            parts[key] = aux_scale * value
        total = torch.stack([v.float() for v in parts.values()]).sum()
        return total, {k: v.detach() for k, v in parts.items()}

    def evaluate(
        self,
        model: nn.Module,
        dataset,
        cfg: DictConfig,
        meta,
        device,
        fabric=None,
        progress: bool = True,
    ) -> dict:
        batch = int(cfg.eval.batch_size)
        logits, targets = predict_logits(model, dataset, batch, device, fabric, progress)
        threshold = None
        val_split = str(cfg.data.val_split)
        if targets.is_floating_point():
            if dataset.split == val_split:
                val_logits, val_targets = logits, targets
            else:
                val_logits, val_targets = predict_logits(
                    model, sibling_split(dataset, val_split), batch, device, fabric, progress
                )
            threshold = choose_threshold(val_logits.sigmoid(), val_targets)
        result = scores(logits, targets, meta, threshold)
        result.update(
            {
                "task": self.name,
                "split": dataset.split,
                "threshold_split": val_split if threshold is not None else None,
                "num_samples": int(targets.shape[0]),
                "multi_label": bool(targets.is_floating_point()),
                "class_names": meta.class_names,
            }
        )
        return result

    def format_result(self, result: dict) -> str:
        lines = [
            f"{result.get('model', 'model')} on {result.get('split')} "
            f"({result.get('num_samples')} samples)"
        ]
        if result.get("multi_label", True) and "samples_f1" in result:
            lines.append(
                f"  micro-F1 {100 * result['micro_f1']:.1f}  macro-F1 "
                f"{100 * result['macro_f1']:.1f}  weighted-F1 {100 * result['weighted_f1']:.1f}"
                f"  samples-F1 "
                f"{100 * result['samples_f1']:.1f}  (threshold {result['threshold']:.2f}, "
                f"chosen on {result['threshold_split']})"
            )
            lines.append(f"  mAP {100 * result['map']:.1f}")
            for cue, f1 in result.get("cue_group_f1", {}).items():
                lines.append(
                    f"  {cue + '-cue classes':24s} F1 {100 * f1:5.1f}  AP "
                    f"{100 * result['cue_group_ap'][cue]:5.1f}  (predicting every sample: F1 "
                    f"{100 * result['cue_group_chance_f1'][cue]:.1f})"
                )
            for name, f1 in zip(result["class_names"], result["per_class_f1"], strict=True):
                lines.append(f"  {name:24s} F1 {100 * f1:5.1f}")
        else:
            lines.append(
                f"accuracy {100 * result['accuracy']:.1f}  mean class accuracy "
                f"{100 * result['mean_class_accuracy']:.1f}  macro-F1 "
                f"{100 * result['macro_f1']:.1f}"
            )
        return "\n".join(lines)

    def compare_columns(self, result: dict) -> dict[str, float | None]:
        def pct(key: str, within: dict | None = None) -> float | None:
            value = (result if within is None else within).get(key)
            return None if value is None else 100 * value

        if result.get("multi_label", True) and "micro_f1" in result:
            columns = {
                "micro-F1 (%)": pct("micro_f1"),
                "macro-F1 (%)": pct("macro_f1"),
                "mAP (%)": pct("map"),
            }
            for cue in result.get("cue_group_f1") or {}:
                columns[f"{cue} F1 (%)"] = pct(cue, result["cue_group_f1"])
            return columns
        return {
            "accuracy (%)": pct("accuracy"),
            "mean class accuracy (%)": pct("mean_class_accuracy"),
            "macro-F1 (%)": pct("macro_f1"),
        }


TASK = ClassificationTask()
