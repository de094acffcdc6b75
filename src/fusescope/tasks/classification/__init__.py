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

Metrics (`metrics.py` beside this module): micro / macro / weighted / samples F1, per-class
and per-cue-group F1 (where classes declare a cue: the known-answer data) with sigmoid outputs
thresholded at 0.5, as every published MM-IMDB F1 is (`"threshold": 0.5`); the same F1s at one
threshold chosen on the validation split (`data.val_split`) and applied unchanged to the split
evaluated, under `"tuned"`; per-class average precision (threshold-free); accuracy and mean
class accuracy for single-label data (there micro-F1 is the accuracy).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from fusescope.data import classification as data
from fusescope.data.batching import collate
from fusescope.data.kinds import kind_of
from fusescope.data.text import PAD_ID
from fusescope.engine.memory import check_fits
from fusescope.errors import FusescopeError
from fusescope.models.classification import CLASSIFICATION_METHODS, build_classifier
from fusescope.tasks.base import Task, aggregate_loss, check_global_batch, register_task
from fusescope.tasks.classification.metrics import (
    HEADLINE_THRESHOLD,
    chance_f1,
    choose_threshold,
    cue_group_f1,
    multilabel_f1,
    per_class_ap,
    per_class_f1,
    single_label_scores,
)


def in_specs(
    meta,
    modalities: list[str],
    data_cfg: DictConfig,
    vocabularies: dict[str, list[str]] | None = None,
    weights: bool = True,
) -> dict:
    """What each modality is, for the model builder: image kind and channels; for text, an
    embedding table of `data.vocab_size` rows (every vocabulary the run can build fits it, so
    the model's shapes follow from the config alone), when known the vocabulary itself (GloVe
    initialisation looks its words up), and whether to read pretrained text weights or vectors
    (`weights`; false for a run whose own weights are loaded next)."""
    specs = {}
    for m in modalities:
        spec = meta.modalities[m]
        if kind_of(spec).tokens:
            specs[m] = {
                "kind": spec.kind,
                "pad_id": PAD_ID,
                "vocab_size": int(data_cfg.vocab_size),
                "vocab": (vocabularies or {}).get(m),
                "weights": weights,
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


def text_tokenizer(cfg: DictConfig):
    """The tokenizer of a pretrained `model.text_encoder` (minilm, clip) for the run's text
    modalities; None: they use the run's word vocabulary (scratch, glove)."""
    from fusescope.models.classification.pretrained_text import (
        PRETRAINED_TEXT_ENCODERS,
        pretrained_tokenizer,
    )

    encoder = str(cfg.model.get("text_encoder") or "scratch")
    if encoder not in PRETRAINED_TEXT_ENCODERS:
        return None
    source = cfg.model.get("text_model")
    return pretrained_tokenizer(encoder, str(source) if source else None)


def sibling_split(dataset, split: str):
    """The same data set (folder, tokenizers, normaliser) over another split."""
    twin = data.ClassificationFolderDataset(
        dataset.root,
        split,
        dataset.modalities,
        tokenizers=dataset.tokenizers,
        max_tokens=dataset.max_tokens,
        min_pixels=dataset.min_pixels,
        normalize=dataset.normalize,
        seed=dataset.seed,
    )
    return twin


def scores(
    logits: Tensor, targets: Tensor, meta, tuned_threshold: float | None, tuned_on: str = "val"
) -> dict:
    """Every metric of one split's logits (see the module docstring): the headline F1s at 0.5,
    and under `"tuned"` the F1s at `tuned_threshold` (chosen on split `tuned_on`; None: none)."""
    if not targets.is_floating_point():  # single-label
        out = single_label_scores(logits, targets)
        from torchmetrics.functional.classification import multiclass_f1_score

        out["micro_f1"] = out["accuracy"]
        out["macro_f1"] = float(
            multiclass_f1_score(logits.argmax(1), targets, logits.shape[1], average="macro")
        )
        return out
    probs = logits.sigmoid()
    cues = [c.cue for c in meta.classes]

    def f1_at(threshold: float) -> dict:
        f1 = multilabel_f1(probs, targets, threshold)
        f1["per_class_f1"] = per_class_f1(probs, targets, threshold)
        if any(cues):
            f1["cue_group_f1"] = cue_group_f1(f1["per_class_f1"], cues)
        return f1

    out = {**f1_at(HEADLINE_THRESHOLD), "threshold": HEADLINE_THRESHOLD}
    out["per_class_ap"] = per_class_ap(probs, targets)
    present = [v for v in out["per_class_ap"] if not math.isnan(v)]
    out["map"] = sum(present) / len(present) if present else math.nan
    out["per_class_chance_f1"] = chance_f1(targets)
    if any(cues):
        out["cue_group_ap"] = cue_group_f1(out["per_class_ap"], cues)
        out["cue_group_chance_f1"] = cue_group_f1(out["per_class_chance_f1"], cues)
    if tuned_threshold is not None:
        out["tuned"] = {"threshold": tuned_threshold, "chosen_on": tuned_on}
        out["tuned"].update(f1_at(tuned_threshold))
    return out


class ClassificationTask(Task):
    name = "classification"
    methods = CLASSIFICATION_METHODS
    primary_metric = "micro_f1"

    def blank_text_ids(self, cfg: DictConfig) -> list[int] | None:
        """A pretrained text encoder's empty text (its special tokens alone: what it was
        trained to read as no text); None for the run's own vocabulary."""
        tokenizer = text_tokenizer(cfg)
        return None if tokenizer is None else tokenizer.blank_ids().tolist()

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
        builder = CLASSIFICATION_METHODS.get(str(cfg.model.get("name")))  # unknown: listed
        text_dim = inspect.signature(builder).parameters.get("text_dim")
        if text_dim is not None and any(meta.modalities[m].kind == "text" for m in d.modalities):
            # the embedding table has data.vocab_size rows: with its gradient and AdamW's two
            # moments, four float32 copies, before anything is allocated
            dim = cfg.model.get("text_dim", text_dim.default)
            if isinstance(dim, int) and dim > 0:
                check_fits(
                    16 * d.vocab_size * dim,
                    f"data.vocab_size={d.vocab_size} x model.text_dim={dim} (the text "
                    f"embedding table, its gradient and optimiser state)",
                )
        options = dict(min_pixels=d.min_pixels)
        train_set = data.ClassificationFolderDataset(
            d.root, d.train_split, list(d.modalities), **options
        )
        data.ClassificationFolderDataset(d.root, d.val_split, list(d.modalities), **options)
        if train_set.texts:  # a pretrained text encoder's missing package or files: now
            text_tokenizer(cfg)
        check_global_batch(cfg, len(train_set), world_size)

    def normalisation_stats(self, cfg: DictConfig, progress: bool = False) -> dict:
        return data.normalisation_stats(cfg.data, progress=progress)

    def train_dataset(self, cfg: DictConfig, stats: dict, seed: int) -> Dataset:
        ds = data.train_dataset(cfg.data, stats, seed, text_tokenizer(cfg))
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
        return data.eval_dataset(cfg.data, split, stats, text_tokenizer(cfg))

    def build_model(
        self, cfg: DictConfig, meta, pretrained: bool = True, stats: dict | None = None
    ) -> nn.Module:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        if not pretrained and "pretrained" in model_cfg:
            # the run's own weights replace them: nothing to read or download (text
            # encoders: `in_specs(weights=False)`)
            model_cfg["pretrained"] = False
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
            in_specs(meta, modalities, cfg.data, vocabularies, weights=pretrained),
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
        return aggregate_loss(parts, output, aux_scale)

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
        result = scores(logits, targets, meta, threshold, val_split)
        result.update(
            {
                "task": self.name,
                "split": dataset.split,
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
                f"  samples-F1 {100 * result['samples_f1']:.1f}  (threshold "
                f"{result['threshold']:.2f}, as published)"
            )
            tuned = result.get("tuned")
            if tuned:
                lines.append(
                    f"  tuned: micro-F1 {100 * tuned['micro_f1']:.1f}  macro-F1 "
                    f"{100 * tuned['macro_f1']:.1f}  (threshold {tuned['threshold']:.2f}, "
                    f"chosen on {tuned['chosen_on']})"
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


TASK = register_task(ClassificationTask())
