"""Image-to-image translation (`task: translation`): CEN section 4.2, AsymFusion, MANGO Table 2.

Data: the input modalities `data.modalities` and the target modalities `data.targets` of one
folder (`data/paired.py`; labels, if any, are not read). Inputs are normalised with train-split
statistics; targets are mapped to [-1, 1] (`TargetSpace`), the range of the generator's tanh, and
reach the loss under `target:<name>` keys, so the model never sees them. Augmentation is
geometric only (scale, crop, flip applied to inputs and targets alike): a photometric change of
the target would break its relation to the inputs.

Model: a `TRANSLATION_METHODS` generator; with `model.gan: true` also the PatchGAN
discriminator (`models/translation/pix2pix.Translator`). The `model` section holds the
generator's options plus this task's architecture keys (`TASK_MODEL_KEYS`): `gan`, `disc_width`,
`disc_layers` (3: 70x70 patches). The loss weights are in `train`: `recon_weight` (the L1
weight, 100 in pix2pix and CEN), `gan_weight`, `gan_mode` (vanilla: BCE, as pix2pix and the CEN
code | lsgan: least squares).

Loss, per sample, summed over the batch and divided by the GLOBAL batch size (the engine's
`loss_denominator`, all-reduced), so 2 processes = 1 process and `grad_accum` = one big batch:

    recon_weight * |image - y|_1  (+ per_modality_weight * the same for each stream's output)
  + gan_weight * (G's adversarial term + D's term)  + the model's aux losses

The adversarial game trains in the engine's ONE optimiser step, without a second optimiser,
because each network sees only the gradient of its own objective:

* G's term `crit(D(x, G(x)), real)` is computed through the discriminator with its parameters
  detached (`torch.func.functional_call` with detached tensors): the gradient reaches G through
  the fake image and never reaches D, which must not learn to call fakes real;
* D's term `0.5 * (crit(D(x, y), real) + crit(D(x, G(x).detach()), fake))` sees the fakes
  detached: its gradient reaches D alone.

The parameter sets are disjoint, so one backward of the sum gives G exactly pix2pix's generator
gradient and D exactly its discriminator gradient, both at the current weights. Unlike pix2pix
(D steps first, then G sees the updated D) both step at once (simultaneous gradient descent),
which the same budget trains as well and keeps the engine's resume, accumulation and DDP parity
untouched. Which outputs D judges: every stream's output for multi-stream models (the ensemble
is excluded, as in the CEN code: its gradient would reach alpha only), else the image.

Evaluation: on `eval.split` (model selection on `data.val_split` only), every target in natural
units ([0, 1] images, metres for depth): L1, RMSE, PSNR, SSIM, MAE / MSE, and FID / KID of the
whole image set with the feature network named in the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from fusescope.data.batching import collate
from fusescope.data.meta import DatasetMeta
from fusescope.data.paired import TARGET_PREFIX, PairedDataset, TargetSpace, target_key
from fusescope.data.stats import compute_stats
from fusescope.data.transforms import Normalize, TrainTransform
from fusescope.errors import FusescopeError, OptionError
from fusescope.models.translation import TRANSLATION_METHODS
from fusescope.models.translation.patchgan import PatchDiscriminator
from fusescope.models.translation.pix2pix import Translator
from fusescope.tasks.base import Task, check_global_batch

# keys of the `model` section that this task reads; the rest go to the generator's builder
TASK_MODEL_KEYS = {"gan": True, "disc_width": 64, "disc_layers": 3}


def model_options(model_cfg) -> tuple[str, dict, dict]:
    """`(method name, generator options, task options)` from the `model` config section."""
    section = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    name = section.pop("name")
    task = {k: section.pop(k, default) for k, default in TASK_MODEL_KEYS.items()}
    return name, section, task


def targets_of(cfg: DictConfig) -> list[str]:
    targets = cfg.data.get("targets")
    if not targets:
        raise FusescopeError(
            "task: translation needs data.targets, the modalities to "
            "translate to (e.g. data.targets=[rgb])"
        )
    return [str(t) for t in targets]


class PairedTransform:
    """`TrainTransform`'s geometry (scale, crop, flip) on inputs and targets alike, without
    photometric jitter (it would change a target against its inputs). TrainTransform reads the
    frame size from the label, which translation data has none of: a placeholder stands in."""

    def __init__(self, specs, crop_size, scale_range, hflip: bool):
        self.inner = TrainTransform(specs, crop_size, scale_range, hflip, color_jitter=0.0)

    def __call__(self, sample: dict, rng) -> dict:
        first = next(v for k, v in sample.items() if k != "id")
        sample = {**sample, "label": torch.zeros(first.shape[-2:], dtype=torch.uint8)}
        out = self.inner(sample, rng)
        del out["label"]
        return out


def gan_criterion(logits: Tensor, real: bool, mode: str) -> Tensor:
    """Per-sample adversarial loss (B,), the mean over a sample's patch logits."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "lsgan":
        per_patch = (logits - target) ** 2
    else:
        per_patch = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return per_patch.flatten(1).mean(1)


def detached_call(module: nn.Module, *args: Tensor) -> Tensor:
    """`module(*args)` with its parameters and buffers detached: gradients flow to the
    arguments only, never to the module."""
    state = {name: t.detach() for name, t in [*module.named_parameters(), *module.named_buffers()]}
    return functional_call(module, state, args)


def adversarial_losses(
    discriminator: nn.Module, condition: Tensor, real: Tensor, fakes: list[Tensor], mode: str
) -> tuple[Tensor, Tensor]:
    """Per-sample (B,) generator and discriminator terms for `fakes` (each (B, C, H, W)).

    G: sum over fakes of crit(D(x, fake), real), through a detached D.
    D: 0.5 * sum over fakes of [crit(D(x, y), real) + crit(D(x, fake.detach()), fake)], as the
    CEN code sums its per-stream discriminator losses. One batched D call each (instance norm is
    per sample, so batching fakes together changes nothing).
    """
    B, J = real.shape[0], len(fakes)
    stacked = torch.cat(fakes, 0)  # (J*B, C, H, W)
    cond_j = condition.repeat(J, 1, 1, 1)
    g = gan_criterion(detached_call(discriminator, cond_j, stacked).float(), True, mode)
    g = g.view(J, B).sum(0)
    logits = discriminator(
        torch.cat([condition, cond_j]), torch.cat([real.to(stacked.dtype), stacked.detach()])
    ).float()
    d_real = gan_criterion(logits[:B], True, mode)
    d_fake = gan_criterion(logits[B:], False, mode).view(J, B).sum(0)
    return g, 0.5 * (J * d_real + d_fake)


class TranslationTask(Task):
    """The Task of TASKS.md for image-to-image translation (see the module docstring)."""

    name = "translation"
    methods = TRANSLATION_METHODS
    primary_metric = "l1"
    higher_is_better = False

    # ------------------------------------------------------------------------------- data
    def check_data(self, cfg: DictConfig, meta: DatasetMeta, world_size: int) -> None:
        """Inputs and targets exist, are disjoint, are aligned frames of one size; the global
        batch fits the train split and the processes.

        Raises:
            FusescopeError: one line naming the modality, split, file or key.
        """
        d = cfg.data
        inputs, targets = [str(m) for m in d.modalities], targets_of(cfg)
        both = sorted(set(inputs) & set(targets))
        if both:
            raise FusescopeError(
                f"data.targets {both} are also inputs (data.modalities "
                f"{inputs}): a model would see its own target"
            )
        where = f"{d.root}/meta.json"
        for role, names in (("input", inputs), ("target", targets)):
            missing = [m for m in names if m not in meta.modalities]
            if missing:
                raise FusescopeError(
                    f"{where}: no {role} modality {missing}; this data set has "
                    f"{sorted(meta.modalities)}"
                )
        train_set = PairedDataset(d.root, d.train_split, inputs, targets)
        val_set = PairedDataset(d.root, d.val_split, inputs, targets)
        frame = None
        for ds in (train_set, val_set):
            if len(ds):
                # sizes agree (a target of another size is named here)
                frame = ds.load_raw(0)[inputs[0]].shape[-2:]
        task = model_options(cfg.model)[2]
        if task["gan"] and frame is not None:
            # the PatchGAN's last normed map must keep > 1 pixel: sides >= 3 * 2^layers
            side = min(d.crop_size) if d.crop_size else min(frame)
            smallest = 3 * 2 ** int(task["disc_layers"])
            if side < smallest:
                raise FusescopeError(
                    f"frames of side {side} (data.crop_size or the data's frames) are too small "
                    f"for the PatchGAN with model.disc_layers={task['disc_layers']}: it needs "
                    f">= {smallest} pixels; lower disc_layers or set model.gan=false"
                )
        check_global_batch(cfg, len(train_set), world_size)

    def normalisation_stats(self, cfg: DictConfig, progress: bool = False) -> dict:
        """Mean / std of every input and target on the train split (targets: depth range)."""
        d = cfg.data
        ds = PairedDataset(d.root, d.train_split, list(d.modalities), targets_of(cfg))
        return compute_stats(ds, progress=progress)

    def _specs(self, meta: DatasetMeta, names: Iterable[str]) -> dict:
        return {m: meta.modalities[m] for m in names}

    def train_dataset(self, cfg: DictConfig, stats: dict, seed: int) -> PairedDataset:
        d = cfg.data
        ds = PairedDataset(d.root, d.train_split, list(d.modalities), targets_of(cfg), seed=seed)
        ds.transform = PairedTransform(
            self._specs(ds.meta, ds.modalities),
            tuple(d.crop_size) if d.crop_size else None,
            tuple(d.scale_range),
            d.hflip,
        )
        self._finish(ds, stats)
        return ds

    def eval_dataset(
        self, cfg: DictConfig, split: str, stats: dict, corruption=None, seed: int = 0
    ) -> PairedDataset:
        """The split's evaluation view (`corruption` is refused by `check_eval_options`)."""
        d = cfg.data
        ds = PairedDataset(d.root, split, list(d.modalities), targets_of(cfg))
        self._finish(ds, stats)
        return ds

    def _finish(self, ds: PairedDataset, stats: dict) -> None:
        ds.normalize = Normalize(self._specs(ds.meta, ds.inputs), stats)
        ds.target_space = TargetSpace(self._specs(ds.meta, ds.targets), stats)

    # ------------------------------------------------------------------------------ model
    def build_model(
        self,
        cfg: DictConfig,
        meta: DatasetMeta,
        pretrained: bool = False,
        stats: dict | None = None,
    ) -> Translator:
        """The generator of `model.name` (+ the PatchGAN with `model.gan`). `pretrained` is
        unused: the U-Net trains from scratch, as in pix2pix and CEN."""
        name, options, task = model_options(cfg.model)
        inputs, targets = list(cfg.data.modalities), targets_of(cfg)
        in_channels = {m: meta.modalities[m].channels for m in inputs}
        out_channels = sum(meta.modalities[t].channels for t in targets)
        try:
            generator = TRANSLATION_METHODS.build(
                name,
                options,
                where="model",
                modalities=inputs,
                in_channels=in_channels,
                out_channels=out_channels,
            )
            discriminator = (
                PatchDiscriminator(
                    sum(in_channels.values()) + out_channels,
                    task["disc_width"],
                    task["disc_layers"],
                )
                if task["gan"]
                else None
            )
        except OptionError as err:
            raise FusescopeError(f"model ({name}): {err}") from None
        return Translator(generator, discriminator)

    # ------------------------------------------------------------------------------- loss
    def loss_denominator(self, batch: dict, meta: DatasetMeta, train_cfg) -> Tensor:
        """The number of samples in `batch` (the engine sums it over the global batch)."""
        first = next(v for k, v in batch.items() if k != "id" and isinstance(v, Tensor))
        return torch.tensor(float(first.shape[0]), device=first.device)

    def targets_in(self, batch: dict) -> Tensor:
        """The targets, concatenated in `data.targets` order (the samples' key order): the
        layout of the generator's output channels."""
        return torch.cat([batch[k] for k in batch if k.startswith(TARGET_PREFIX)], dim=1)

    def loss(
        self,
        output: dict,
        batch: dict,
        meta: DatasetMeta,
        train_cfg,
        denominator: Tensor,
        aux_scale: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum of per-sample losses / `denominator` (see the module docstring). The adversarial
        terms come with a training model that has a discriminator (`output["critic"]`)."""
        t = train_cfg
        y = self.targets_in(batch)
        denominator = denominator.clamp(min=1e-6)
        w_modality = float(train_cfg.get("per_modality_weight", 1.0))

        def l1(image: Tensor) -> Tensor:  # sum over the batch of per-sample mean |error|
            return (image.float() - y.float()).abs().flatten(1).mean(1).sum() / denominator

        parts = {"l1": t.recon_weight * l1(output["image"])}
        for name, image in output.get("per_modality", {}).items():
            parts[f"l1_{name}"] = w_modality * t.recon_weight * l1(image)
        critic = output.get("critic")
        if critic is not None and t.gan_weight > 0:
            judged = list(output.get("per_modality", {}).values()) or [output["image"]]
            g, d = adversarial_losses(critic.discriminator, critic.condition, y, judged, t.gan_mode)
            parts["gan_g"] = t.gan_weight * g.sum() / denominator
            parts["gan_d"] = t.gan_weight * d.sum() / denominator
        for name, value in output.get("aux_losses", {}).items():
            parts[name] = aux_scale * value
        total = torch.stack([v.float() for v in parts.values()]).sum()
        return total, {k: v.detach() for k, v in parts.items()}

    # ------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        dataset: PairedDataset,
        cfg: DictConfig,
        meta: DatasetMeta,
        device="cpu",
        fabric=None,
        progress: bool = False,
    ) -> dict:
        """Image-quality metrics of every target on `dataset` (see `TranslationScores`). Every
        process scores the whole split (FID / KID need every image's features anyway)."""
        from fusescope.tasks.translation_scores import TranslationScores

        loader = DataLoader(
            Subset(dataset, list(range(len(dataset)))),
            batch_size=int(cfg.eval.batch_size),
            collate_fn=collate,
        )
        was_training = model.training
        model.eval()
        scores = TranslationScores(
            dataset.targets,
            {t: dataset.meta.modalities[t] for t in dataset.targets},
            feature_weights=cfg.eval.get("fid_weights"),
        )
        stream_l1: dict[str, Tensor] = {}
        for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
            batch = {k: v.to(device) for k, v in batch.items() if k != "id"}
            out = model(batch)
            image = out["image"].float()
            bounds = np.cumsum([0] + [dataset.meta.modalities[t].channels for t in dataset.targets])
            scores.update(
                {t: image[:, bounds[i] : bounds[i + 1]] for i, t in enumerate(dataset.targets)},
                {t: batch[target_key(t)] for t in dataset.targets},
            )
            y = self.targets_in(batch).float()
            for m, stream in out.get("per_modality", {}).items():
                # each stream's own image, as the CEN code reports it beside the ensemble
                err = ((stream.float().clamp(-1, 1) - y) / 2).abs()
                sums = stream_l1.setdefault(m, torch.zeros(2, dtype=torch.float64))
                sums += torch.stack([err.sum().double().cpu(), torch.tensor(err.numel() * 1.0)])
        model.train(was_training)
        result = scores.compute()
        # L1 in [0, 1] of every stream's output (multi-stream methods), pooled over the targets
        result["per_modality_l1"] = {m: float(s[0] / s[1]) for m, s in stream_l1.items()}
        result["targets"] = list(dataset.targets)
        result["inputs"] = list(dataset.inputs)
        return result

    def format_result(self, result: dict) -> str:
        """Human-readable lines: the headline metrics, then each target's."""

        def num(v) -> str:
            return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

        head = (
            f"{' + '.join(result.get('inputs', []))} -> {' + '.join(result['targets'])}: "
            f"L1 {num(result['l1'])}  RMSE {num(result['rmse'])}  PSNR {num(result['psnr'])}"
            f" dB  SSIM {num(result['ssim'])}  FID {num(result['fid'])}  KID x100 "
            f"{num(result['kid'])}"
        )
        lines = [head, f"FID / KID features: {result['feature_network']}"]
        if result.get("per_modality_l1"):
            lines.append(
                "L1 of each stream's own output: "
                + ", ".join(f"{m} {num(v)}" for m, v in result["per_modality_l1"].items())
            )
        if len(result["targets"]) > 1:
            for t in result["targets"]:
                r = result["per_target"][t]
                lines.append(
                    f"  {t}: L1 {num(r['l1'])}  RMSE {num(r['rmse'])}  PSNR "
                    f"{num(r['psnr'])}  SSIM {num(r['ssim'])}"
                )
        return "\n".join(lines)

    def compare_columns(self, result: dict) -> dict[str, float | None]:
        """Per target: L1, PSNR, SSIM, FID and KID x100 (FID / KID on the features the
        result's `feature_network` names)."""
        columns: dict[str, float | None] = {}
        for target, scores in (result.get("per_target") or {}).items():
            for key, title in TRANSLATION_COLUMNS:
                columns[f"{target} {title}"] = scores.get(key)
        return columns


# (result key, column title) of each target in `fusescope compare`
TRANSLATION_COLUMNS = (
    ("l1", "L1"),
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("fid", "FID"),
    ("kid", "KID x100"),
)

TASK = TranslationTask()
