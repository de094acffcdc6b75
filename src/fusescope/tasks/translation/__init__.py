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
`disc_layers` (3: 70x70 patches), `disc_condition` (`all` inputs, or each `stream`'s own input
as the CEN code conditions its discriminator). The loss weights are in `train`: `recon_weight`
(the L1 weight, 100 in pix2pix and CEN), `gan_weight`, `gan_mode` (vanilla: BCE, as pix2pix and
the CEN code | lsgan: least squares).

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

Inputs (`data.input_map`): `train_stats` normalises each input with its train-split mean / std;
`cen` maps each to [-1, 1] as CEN's loader does (`data/paired.CenInputMap`).

Evaluation: on `eval.split` (model selection on `data.val_split` only), every target in natural
units ([0, 1] images, metres for depth): L1, RMSE, PSNR, SSIM, MAE / MSE, and FID / KID of the
whole image set with the feature network named in the result. A multi-stream generator is
scored per output as well (`per_stream`: each stream's own image and the ensemble) with
`best_output`, the one of lowest FID: CEN's report is the best FID over its evaluations and over
those outputs (train with `train.eval_every` to log `val_best_fid` at each evaluation).
`eval.generator_mode: train` scores the generator in training mode, as CEN's code does (it never
calls `G.eval()`: dropout stays on at test; its instance norms, which track running statistics,
keep normalising with each image's own), with the dropout masks drawn from a fixed seed so an
evaluation repeats, and every buffer restored afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from fusescope.config import GENERATOR_MODES
from fusescope.data.batching import collate
from fusescope.data.meta import DatasetMeta
from fusescope.data.paired import (
    TARGET_PREFIX,
    CenInputMap,
    PairedDataset,
    TargetSpace,
    target_key,
)
from fusescope.data.stats import compute_stats
from fusescope.data.transforms import Normalize, TrainTransform
from fusescope.engine.memory import check_fits
from fusescope.errors import FusescopeError, OptionError
from fusescope.models.translation import TRANSLATION_METHODS
from fusescope.models.translation.patchgan import PatchDiscriminator
from fusescope.models.translation.pix2pix import DISC_CONDITIONS, Translator
from fusescope.tasks.base import Task, aggregate_loss, check_global_batch, register_task

# keys of the `model` section that this task reads; the rest go to the generator's builder
TASK_MODEL_KEYS = {"gan": True, "disc_width": 64, "disc_layers": 3, "disc_condition": "all"}
EVAL_SEED = 0  # the dropout masks of an evaluation in training mode


@contextlib.contextmanager
def scoring_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """`model` in eval mode, or in training mode ("train": CEN's code never calls `G.eval()`)
    with its dropout masks drawn from `EVAL_SEED` and every buffer restored afterwards (no
    running statistic moves); its own mode restored afterwards either way."""
    was_training = model.training
    train = mode == "train"
    saved = {n: b.detach().clone() for n, b in model.named_buffers()} if train else {}
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    model.train(train)
    try:
        with torch.random.fork_rng(devices=cuda, enabled=train):
            if train:
                torch.manual_seed(EVAL_SEED)
            yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])
        model.train(was_training)


def model_options(model_cfg) -> tuple[str, dict, dict]:
    """`(method name, generator options, task options)` from the `model` config section."""
    section = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    name = section.pop("name")
    task = {k: section.pop(k, default) for k, default in TASK_MODEL_KEYS.items()}
    if not isinstance(task["gan"], bool):
        raise FusescopeError(f"model.gan={task['gan']!r} must be true or false")
    # more than 16 stride-2 layers would need frames of 3 x 2^16 pixels a side
    for key, most in (("disc_width", math.inf), ("disc_layers", 16)):
        value = task[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            bound = f"in 1..{most}" if most < math.inf else ">= 1"
            raise FusescopeError(f"model.{key}={value!r} must be an integer {bound}")
    return name, section, task


def unet_depth(name: str, options: dict) -> int | None:
    """The U-Net depth `model.depth` (or the method's default) asks for, if the method has one."""
    if "depth" in options:
        return options["depth"]
    builder = TRANSLATION_METHODS.get(name)
    default = inspect.signature(builder).parameters.get("depth")
    return (
        None if default is None or default.default is inspect.Parameter.empty else default.default
    )


def targets_of(cfg: DictConfig) -> list[str]:
    targets = cfg.data.get("targets")
    if not targets:
        raise FusescopeError(
            "task: translation needs data.targets, the modalities to "
            "translate to (e.g. data.targets=[rgb])"
        )
    return [str(t) for t in targets]


def check_padded_input(cfg: DictConfig, meta: DatasetMeta, frame, depth: int, world_size: int):
    """The U-Net pads its input to a multiple of 2^depth (`model.depth`): refuse a depth whose
    padded batch of inputs alone exceeds this machine's memory, before anything is allocated."""
    d, t = cfg.data, cfg.train
    top = max(d.scale_range)
    h, w = (d.crop_size or (round(frame[0] * top), round(frame[1] * top)))[:2]
    if depth < 1:  # the builder refuses it with its own message
        return
    k = 2 ** min(depth, 64)  # beyond 2^64 no memory suffices either
    padded = (-(-h // k) * k) * (-(-w // k) * k)
    channels = sum(meta.modalities[m].channels for m in d.modalities)
    batch = max(1, t.batch_size * t.grad_accum // world_size)
    check_fits(
        4 * batch * channels * padded,
        f"model.depth={depth} (frames of {h}x{w} padded to a multiple of 2^{depth}, "
        f"a batch of {batch})",
    )


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
    discriminator: nn.Module,
    condition: Tensor | list[Tensor],
    real: Tensor,
    fakes: list[Tensor],
    mode: str,
) -> tuple[Tensor, Tensor]:
    """Per-sample (B,) generator and discriminator terms for `fakes` (each (B, C, H, W)).

    G: sum over fakes j of crit(D(x_j, fake_j), real), through a detached D.
    D: 0.5 * sum over fakes j of [crit(D(x_j, y), real) + crit(D(x_j, fake_j.detach()), fake)],
    as the CEN code sums its per-stream discriminator losses. `condition` is one tensor, x_j = x
    for every fake (the real term is then computed once and counted J times), or a list of J,
    each fake's own (CEN: each stream's input). One batched D call each (instance norm is per
    sample, so batching fakes together changes nothing).
    """
    B, J = real.shape[0], len(fakes)
    stacked = torch.cat(fakes, 0)  # (J*B, C, H, W)
    shared = isinstance(condition, Tensor)
    if not shared and len(condition) != J:
        raise ValueError(f"{len(condition)} discriminator conditions for {J} outputs")
    cond_j = condition.repeat(J, 1, 1, 1) if shared else torch.cat(condition, 0)  # (J*B, ...)
    g = gan_criterion(detached_call(discriminator, cond_j, stacked).float(), True, mode)
    g = g.view(J, B).sum(0)
    real_cond = condition if shared else cond_j  # the real image once, or once per condition
    reals = real.to(stacked.dtype).repeat(1 if shared else J, 1, 1, 1)
    logits = discriminator(
        torch.cat([real_cond, cond_j]), torch.cat([reals, stacked.detach()])
    ).float()
    n_real = reals.shape[0]
    d_real = gan_criterion(logits[:n_real], True, mode)
    d_real = J * d_real if shared else d_real.view(J, B).sum(0)
    d_fake = gan_criterion(logits[n_real:], False, mode).view(J, B).sum(0)
    return g, 0.5 * (d_real + d_fake)


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
        name, options, task = model_options(cfg.model)
        depth = unet_depth(name, options)
        if frame is not None and isinstance(depth, int) and not isinstance(depth, bool):
            check_padded_input(cfg, meta, frame, depth, world_size)
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
        self._finish(ds, stats, d.input_map)
        return ds

    def eval_dataset(
        self, cfg: DictConfig, split: str, stats: dict, corruption=None, seed: int = 0
    ) -> PairedDataset:
        """The split's evaluation view (`corruption` is refused by `check_eval_options`)."""
        d = cfg.data
        ds = PairedDataset(d.root, split, list(d.modalities), targets_of(cfg))
        self._finish(ds, stats, d.input_map)
        return ds

    def _finish(self, ds: PairedDataset, stats: dict, input_map: str) -> None:
        specs = self._specs(ds.meta, ds.inputs)
        ds.normalize = CenInputMap(specs) if input_map == "cen" else Normalize(specs, stats)
        ds.target_space = TargetSpace(self._specs(ds.meta, ds.targets), stats)

    # ------------------------------------------------------------------------------ model
    def build_model(
        self,
        cfg: DictConfig,
        meta: DatasetMeta,
        pretrained: bool = False,
        stats: dict | None = None,
    ) -> Translator:
        """The generator of `model.name` (+ the PatchGAN with `model.gan`). The U-Net trains
        from scratch (pix2pix, CEN); a timm backbone's `model.pretrained` is loaded unless
        `pretrained` is False (a run folder's weights replace them)."""
        name, options, task = model_options(cfg.model)
        if not pretrained and "pretrained" in options:
            options["pretrained"] = False
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
            per_stream = task["disc_condition"] == "stream"
            if task["disc_condition"] not in DISC_CONDITIONS:
                raise OptionError(
                    f"disc_condition must be one of {', '.join(DISC_CONDITIONS)}; got "
                    f"{task['disc_condition']!r}"
                )
            if per_stream and len(inputs) > 1 and getattr(generator, "num_streams", 1) == 1:
                raise OptionError(
                    f"disc_condition: stream conditions each stream's output on its input; "
                    f"{name} has one stream of {len(inputs)} inputs (use disc_condition: all)"
                )
            condition_channels = (
                getattr(generator, "in_chans", sum(in_channels.values()))
                if per_stream
                else sum(in_channels.values())
            )
            discriminator = (
                PatchDiscriminator(
                    condition_channels + out_channels,
                    task["disc_width"],
                    task["disc_layers"],
                )
                if task["gan"]
                else None
            )
        except OptionError as err:
            raise FusescopeError(f"model ({name}): {err}") from None
        return Translator(generator, discriminator, task["disc_condition"])

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
        return aggregate_loss(parts, output, aux_scale)

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
        """Image-quality metrics of every target on `dataset` (see `TranslationScores`), of the
        scored image and, for multi-stream generators, of each stream's own image and the
        ensemble (`per_stream`, `best_output`). Every process scores the whole split (FID / KID
        need every image's features anyway). `eval.generator_mode` (module docstring)."""
        from fusescope.metrics.fid import EFFICIENTNET_LITE0, feature_network
        from fusescope.tasks.translation.scores import HEADLINE, TranslationScores, best_output

        mode = str(cfg.eval.get("generator_mode", "eval"))
        if mode not in GENERATOR_MODES:
            raise FusescopeError(
                f"eval.generator_mode={mode!r} unknown; known: {', '.join(GENERATOR_MODES)}"
            )
        loader = DataLoader(
            Subset(dataset, list(range(len(dataset)))),
            batch_size=int(cfg.eval.batch_size),
            collate_fn=collate,
        )
        specs = {t: dataset.meta.modalities[t] for t in dataset.targets}
        network = feature_network(cfg.eval.get("fid_weights") or EFFICIENTNET_LITE0)
        scores = TranslationScores(dataset.targets, specs, network=network)
        per_stream: dict[str, TranslationScores] = {}
        bounds = np.cumsum([0] + [specs[t].channels for t in dataset.targets])

        def by_target(image: Tensor) -> dict[str, Tensor]:
            return {t: image[:, bounds[i] : bounds[i + 1]] for i, t in enumerate(dataset.targets)}

        with scoring_mode(model, mode):
            for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
                batch = {k: v.to(device) for k, v in batch.items() if k != "id"}
                out = model(batch)
                trues = {t: batch[target_key(t)] for t in dataset.targets}
                scores.update(by_target(out["image"].float()), trues)
                # each stream's own image, as the CEN code reports it beside the ensemble
                for m, stream in out.get("per_modality", {}).items():
                    if m not in per_stream:
                        per_stream[m] = TranslationScores(dataset.targets, specs, network=network)
                    per_stream[m].update(by_target(stream.float()), trues)
        result = scores.compute()
        if per_stream:
            outputs = {m: s.compute() for m, s in per_stream.items()}
            outputs["ensemble"] = result
            keep = (*HEADLINE, "per_target")
            result["per_stream"] = {m: {k: r[k] for k in keep} for m, r in outputs.items()}
            result["best_output"] = best_output(result["per_stream"])
        # L1 in [0, 1] of every stream's output (multi-stream methods), mean over the targets
        result["per_modality_l1"] = {m: s["l1"] for m, s in result.get("per_stream", {}).items()}
        result["per_modality_l1"].pop("ensemble", None)
        result["generator_mode"] = mode
        result["input_map"] = str(cfg.data.get("input_map", "train_stats"))
        result["targets"] = list(dataset.targets)
        result["inputs"] = list(dataset.inputs)
        return result

    def logged_during_training(self, result: dict) -> dict[str, float]:
        """The primary metric, FID and, for multi-stream generators, the lowest FID over the
        streams and the ensemble (`best_fid`): CEN's report is the lowest over evaluations."""
        logged = {self.primary_metric: result[self.primary_metric], "fid": result["fid"]}
        if "best_output" in result:
            logged["best_fid"] = result["best_output"]["fid"]
        return logged

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
        if not result.get("comparable_to_published", False):
            lines.append(
                "not comparable to published FID / KID: "
                + "; ".join(result.get("published_pipeline_differences", []))
            )
        if result.get("generator_mode", "eval") == "train":
            lines.append("generator scored in training mode (dropout on), as CEN's code scores it")
        for m, r in result.get("per_stream", {}).items():
            lines.append(
                f"  {m + ' output':16s} L1 {num(r['l1'])}  PSNR {num(r['psnr'])}  SSIM "
                f"{num(r['ssim'])}  FID {num(r['fid'])}  KID x100 {num(r['kid'])}"
            )
        if "best_output" in result:
            best = result["best_output"]
            lines.append(f"lowest FID (CEN's report): {best['output']} {num(best['fid'])}")
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

TASK = register_task(TranslationTask())
