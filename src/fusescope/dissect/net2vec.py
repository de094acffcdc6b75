"""Net2Vec concept probes (Fong & Vedaldi, CVPR 2018) and the Set IoU of eq. 3, scored on held-out
images.

For concept c and a layer with K channels A_k, a probe predicts
    M_c(x) = sigmoid(sum_k w_ck A_k(x) + b_c)
upsampled bilinearly to the label size, from raw (not thresholded) activations, as the
dissection paper does. Bilinear upsampling with `align_corners=False` is an affine combination
of neighbours (weights sum to 1), so it commutes with the 1x1 combination: the probe runs at the
layer's resolution and only the C concept logits are upsampled, not the K channels.

Training (the dissection paper's eq. 2, Net2Vec's eq. 1) weights positive pixels by alpha and
negative ones by 1 - alpha, over only the images containing the concept. alpha follows the
official Net2Vec code (ruthcfong/net2vec, `linearprobe_pytorch.py` / `computealpha.py`):

    alpha_c = 1 - mean over the *training images containing c* of (pixels of c / pixels)

(we count labelled pixels, leaving `ignore_index` out). The printed equation instead writes
alpha = 1 - sum over *all* training images of |L_c(x)| / S, which, read as a mean, averages over
images without the concept too and so pulls a rare concept's alpha towards 1 (positives then
outweigh negatives far more than the concept's own images warrant).

The loss: both papers print, and the official code implements (its `BCELoss2d`), the log-free
form -[alpha M L + (1 - alpha)(1 - M)(1 - L)], linear in the sigmoid output M and summed over
pixels. Only the name says "binary cross-entropy". We take the logarithms,
-[alpha L log M + (1 - alpha)(1 - L) log(1 - M)], averaged over each image's labelled pixels:
the log-free form's gradient vanishes on confidently wrong pixels (a saturated sigmoid), while
the log form keeps pulling them and has a calibrated optimum. The probe class, the weighting
and the images trained on are the official ones.

Set IoU (eq. 3) thresholds M at 0.5 (logit > 0) and pools intersections and unions over the
images containing the concept. Pixels labelled `ignore_index` count for neither. Like the
official code (train on one split, score on another), `cross_validated` scores every image with a
probe that was not trained on it: with 512 channels and a few dozen images, a probe fits
anything, and Set IoU on its own training images is far above what the features hold (on pure
noise features about 0.4, against ~0.06 held out). `noise_floor=True` gives the score of the
same procedure on features paired with another image's labels: what a probe reaches from the
label statistics alone.

All concepts of a layer are trained at once as one C-output 1x1 conv: each concept owns one
output row, its loss only touches that row, and a per-(image, concept) mask restricts it to the
images containing the concept, so one pass over the data per epoch trains every concept.
`fit_one_concept` keeps the textbook one-at-a-time path for comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

# a data source: called once per epoch, yields (activations (B,K,h,w), labels (B,H,W) int64)
Batches = Callable[[], Iterable[tuple[Tensor, Tensor]]]


class ConceptProbe(nn.Module):
    """C linear concept probes over K channels, with the channels standardised first.

    Standardising (fixed per-channel mean/std of the probe set) only reparametrises the linear
    probe, w.(A - mu)/sigma + b = (w/sigma).A + b', so the model class is the paper's; it makes
    one learning rate fit every layer. `weights()` returns the weights on the raw channels.
    """

    def __init__(self, channels: int, concepts: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, concepts, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, activations: Tensor, size: tuple[int, int]) -> Tensor:
        """`(B, K, h, w)` -> concept logits `(B, C, H, W)` at label size `size`."""
        x = (activations - self.mean[:, None, None]) / self.std[:, None, None]
        return resize_logits(self.conv(x), size)  # (B, C, h, w) -> (B, C, H, W)

    def weights(self) -> tuple[Tensor, Tensor]:
        """Weights `(C, K)` and biases `(C,)` on the raw (unstandardised) activations."""
        w = self.conv.weight[:, :, 0, 0] / self.std
        b = self.conv.bias - w @ self.mean
        return w.detach(), b.detach()


@dataclass
class ProbeStats:
    """What one pass over the probe set says about the concepts and channels."""

    mean: Tensor  # (K,) channel means
    std: Tensor  # (K,) channel standard deviations
    area: Tensor  # (C,) fraction of all labelled pixels that are the concept (SVar's f_j)
    images: Tensor  # (C,) how many images contain each concept
    alpha: Tensor  # (C,) 1 - mean concept fraction over the images containing it (Net2Vec)


def concept_presence(labels: Tensor, concepts: int) -> Tensor:
    """`(B, H, W)` labels -> `(B, C)` bool: image b contains concept c (other values ignored)."""
    idx = labels.flatten(1).long().clamp(0, concepts)  # out-of-range -> the spare column C
    present = torch.zeros(labels.shape[0], concepts + 1, dtype=torch.bool, device=labels.device)
    return present.scatter_(1, idx, True)[:, :concepts]


def probe_stats(batches: Batches, concepts: int, ignore_index: int = 255) -> ProbeStats:
    """Channel statistics, concept areas and the Net2Vec alpha in one pass."""
    total = sq = None
    count = 0
    pixels = torch.zeros(concepts, dtype=torch.float64)
    labelled = 0
    images = torch.zeros(concepts, dtype=torch.long)
    fraction_sum = torch.zeros(concepts, dtype=torch.float64)  # sum over images of c's share
    for acts, labels in batches():
        a = acts.detach().to(torch.float64)
        s, q = a.sum((0, 2, 3)), (a * a).sum((0, 2, 3))
        total = s if total is None else total + s
        sq = q if sq is None else sq + q
        count += a.shape[0] * a.shape[2] * a.shape[3]
        valid = labelled_pixels(labels, concepts, ignore_index)
        per_image = concept_pixels(labels, concepts, valid)  # (B, C)
        pixels += per_image.sum(0).double().cpu()
        labelled += int(valid.sum())
        images += (per_image > 0).sum(0).cpu()
        own = valid.flatten(1).sum(1, keepdim=True).clamp_min(1)  # (B, 1) labelled pixels
        fraction_sum += (per_image / own).sum(0).double().cpu()  # absent concepts add 0
    if total is None:
        raise ValueError("the probe set is empty")
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a dead channel stays dead
    alpha = 1 - fraction_sum / images.clamp_min(1)
    return ProbeStats(
        mean.float(), std.float(), (pixels / max(labelled, 1)).float(), images, alpha.float()
    )


def labelled_pixels(labels: Tensor, concepts: int, ignore_index: int) -> Tensor:
    """Pixels that carry a concept label: not `ignore_index` and in [0, concepts)."""
    return (labels != ignore_index) & (labels >= 0) & (labels < concepts)


def concept_pixels(labels: Tensor, concepts: int, valid: Tensor) -> Tensor:
    """`(B, H, W)` labels -> `(B, C)` count of each concept's valid pixels per image."""
    b = labels.shape[0]
    # valid pixels keep their concept id; the rest go to a spare column C
    ids = labels.flatten(1).long().masked_fill(~valid.flatten(1), concepts)  # (B, HW)
    offsets = torch.arange(b, device=labels.device)[:, None] * (concepts + 1)
    counts = torch.bincount((ids + offsets).flatten(), minlength=b * (concepts + 1))
    return counts.view(b, concepts + 1)[:, :concepts]


def weighted_bce(logits: Tensor, target: Tensor, alpha: Tensor, valid: Tensor) -> Tensor:
    """Eq. 2 per (image, concept): mean over valid pixels of the alpha-weighted BCE.

    Args:
        logits: `(B, C, H, W)`; target: `(B, C, H, W)` in {0, 1}; alpha: `(C,)`, or `(B, C)`
        when the images belong to probes with their own alphas; valid: `(B, 1, H, W)` bool.

    Returns:
        `(B, C)` losses.
    """
    a = alpha[None, :, None, None] if alpha.dim() == 1 else alpha[:, :, None, None]
    # -(a t log sigmoid(z) + (1 - a)(1 - t) log sigmoid(-z)) is BCE(z, t) weighted by a where
    # t = 1 and 1 - a where t = 0: one fused, stable kernel (valid pixels folded into the
    # weight) instead of two log-sigmoids and a chain of products over every pixel and concept
    weight = torch.where(target > 0, a, 1 - a) * valid
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return loss.sum((2, 3)) / valid.sum((2, 3)).clamp_min(1)


def concept_targets(labels: Tensor, concepts: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """`(B, H, W)` -> one-hot targets `(B, C, H, W)` float and valid mask `(B, 1, H, W)`.

    Label values outside [0, C) (including `ignore_index`) are not scored.
    """
    valid = labelled_pixels(labels, concepts, ignore_index)
    ids = torch.arange(concepts, device=labels.device)[None, :, None, None]
    target = (labels[:, None] == ids).float()
    return target, valid[:, None]


@dataclass
class Net2VecResult:
    """Probes of one layer and their Set IoU per concept (NaN: concept not in the probe set)."""

    set_iou: np.ndarray  # (C,)
    weights: Tensor  # (C, K) on raw channels
    bias: Tensor  # (C,)
    area: np.ndarray  # (C,) pixel frequency on the training images
    images: np.ndarray  # (C,) training images containing each concept
    alpha: np.ndarray  # (C,) the loss weight of positive pixels


class Net2Vec:
    """Train Net2Vec probes for every concept of one layer and score them with Set IoU.

    Args:
        concepts: number of concepts (classes); label values >= this are ignored too.
        epochs: passes over the probe set (the paper: 30).
        lr: Adam learning rate on the standardised channels.
        ignore_index: label value that is not scored.
        device: where the probes train.
        pixels: in `held_out`, train each step on this many label pixels per image, drawn
            uniformly at random (with replacement) anew every step, instead of all of them
            (None). The loss of an image is a mean over its pixels, so a uniform sample is an
            unbiased estimate of it; Set IoU is always scored on every pixel.
    """

    def __init__(
        self,
        concepts: int,
        epochs: int = 30,
        lr: float = 0.05,
        ignore_index: int = 255,
        device: torch.device | str = "cpu",
        pixels: int | None = None,
    ):
        if pixels is not None and pixels < 1:
            raise ValueError(f"pixels must be >= 1 or None (every pixel), got {pixels}")
        self.concepts = concepts
        self.epochs = epochs
        self.lr = lr
        self.ignore_index = ignore_index
        self.device = torch.device(device)
        self.pixels = pixels

    def _prepare(
        self, batches: Batches, channels: int | None = None, stats: ProbeStats | None = None
    ) -> tuple[ConceptProbe, ProbeStats]:
        stats = stats or probe_stats(batches, self.concepts, self.ignore_index)
        probe = ConceptProbe(channels or stats.mean.numel(), self.concepts).to(self.device)
        probe.mean.copy_(stats.mean)
        probe.std.copy_(stats.std)
        return probe, stats

    def _batch(self, acts: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        acts = acts.to(self.device, torch.float32)
        labels = labels.to(self.device)
        target, valid = concept_targets(labels, self.concepts, self.ignore_index)
        present = (target * valid).flatten(2).any(2)  # (B, C)
        return acts, target, valid, present

    def fit(
        self, batches: Batches, stats: ProbeStats | None = None, score: Batches | None = None
    ) -> Net2VecResult:
        """Train all concepts at once, then compute their Set IoU.

        Args:
            batches: called once per pass; yields `(activations (B,K,h,w), labels (B,H,W))`.
                Cache activations in it to avoid re-running the network every epoch.
            stats: channel/concept statistics of `batches` if already computed (`probe_stats`).
            score: held-out images to compute Set IoU on (default: the training images, which
                overstates what the features hold; see the module docstring).
        """
        probe, stats = self._prepare(batches, stats=stats)
        self._train(probe, batches, stats)
        return self._result(probe, batches if score is None else score, stats)

    def _train(self, probe: ConceptProbe, batches: Batches, stats: ProbeStats) -> None:
        alpha = stats.alpha.to(self.device)
        optimiser = torch.optim.Adam(probe.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            for acts, labels in batches():
                acts, target, valid, present = self._batch(acts, labels)
                # enable_grad: a source generator suspended inside no_grad leaks that mode here
                with torch.enable_grad():
                    self._step(probe, optimiser, acts, labels, target, valid, present, alpha)

    @staticmethod
    def _step(
        probe: ConceptProbe,
        optimiser: torch.optim.Optimizer,
        acts: Tensor,
        labels: Tensor,
        target: Tensor,
        valid: Tensor,
        present: Tensor,
        alpha: Tensor,
    ) -> None:
        """One update of every concept's probe on one batch."""
        logits = probe(acts, labels.shape[-2:])  # (B, C, H, W)
        loss = weighted_bce(logits, target, alpha, valid)  # (B, C)
        # per concept: the mean over the batch's images that contain it; summing over concepts
        # gives each output row exactly its own concept's gradient
        per_concept = (loss * present).sum(0) / present.sum(0).clamp_min(1)
        optimiser.zero_grad(set_to_none=True)
        per_concept.sum().backward()
        optimiser.step()

    def fit_one_concept(
        self, batches: Batches, concept: int, stats: ProbeStats | None = None
    ) -> Net2VecResult:
        """The textbook path: one single-output probe for `concept`, trained only on the images
        containing it, one pass over the data per epoch for this concept alone.

        Returns a result whose arrays cover every concept, NaN (IoU) / 0 (weights) elsewhere.
        """
        stats = stats or probe_stats(batches, self.concepts, self.ignore_index)
        probe = ConceptProbe(stats.mean.numel(), 1).to(self.device)
        probe.mean.copy_(stats.mean)
        probe.std.copy_(stats.std)
        alpha = stats.alpha[concept : concept + 1].to(self.device)
        optimiser = torch.optim.Adam(probe.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            for acts, labels in batches():
                labels = labels.to(self.device)
                keep = concept_presence(labels, self.concepts)[:, concept]
                if not keep.any():
                    continue
                acts = acts[keep.to(acts.device)].to(self.device, torch.float32)
                target, valid = concept_targets(labels[keep], self.concepts, self.ignore_index)
                with torch.enable_grad():
                    logits = probe(acts, labels.shape[-2:])  # (B', 1, H, W)
                    loss = weighted_bce(logits, target[:, concept : concept + 1], alpha, valid)
                    optimiser.zero_grad(set_to_none=True)
                    loss.mean().backward()
                optimiser.step()
        w, b = probe.weights()
        weights = torch.zeros(self.concepts, w.shape[1])
        bias = torch.zeros(self.concepts)
        weights[concept], bias[concept] = w[0].cpu(), b[0].cpu()
        return Net2VecResult(
            set_iou=self.set_iou(probe, batches, ids=[concept]),
            weights=weights,
            bias=bias,
            area=stats.area.numpy().astype(np.float64),
            images=stats.images.numpy(),
            alpha=stats.alpha.numpy().astype(np.float64),
        )

    @torch.no_grad()
    def set_iou(
        self, probe: ConceptProbe, batches: Batches, ids: list[int] | None = None
    ) -> np.ndarray:
        """Eq. 3: `(C,)` Set IoU, NaN for concepts in no probe image (or not in `ids`).

        Args:
            probe: trained probes; output j is concept `ids[j]` (all concepts by default).
            batches: the probe data.
            ids: the concepts the probe's outputs stand for.
        """
        ids = list(range(self.concepts)) if ids is None else list(ids)
        inter, union = self.overlap(probe, batches, ids)
        out = np.full(self.concepts, np.nan)
        out[ids] = iou_or_nan(inter, union)
        return out

    @torch.no_grad()
    def overlap(
        self, probe: ConceptProbe, batches: Batches, ids: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 3's pooled intersections and unions `(len(ids),)` each, so that several probes'
        counts (one per fold) can be pooled into one Set IoU."""
        index = torch.tensor(ids, device=self.device)
        inter = torch.zeros(len(ids), dtype=torch.float64, device=self.device)
        union = torch.zeros_like(inter)
        for acts, labels in batches():
            acts, target, valid, present = self._batch(acts, labels)
            target, present = target[:, index], present[:, index]
            pred = probe(acts, labels.shape[-2:]) > 0  # sigmoid > 0.5
            truth = target.bool()
            scored = valid & present[:, :, None, None]  # (B, C', H, W) by broadcasting
            inter += ((pred & truth) & scored).sum((0, 2, 3)).double()
            union += ((pred | truth) & scored).sum((0, 2, 3)).double()
        return inter.cpu().numpy(), union.cpu().numpy()

    def cross_validated(
        self,
        acts: Tensor,
        labels: Tensor,
        folds: int = 2,
        seed: int = 0,
        noise_floor: bool = False,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Held-out Set IoU `(C,)` of one k-fold split (see `held_out`, which trains many
        splits at once)."""
        return self.held_out(acts, labels, [HeldOutSplit(seed, noise_floor)], folds, batch_size)[0]

    def held_out(
        self,
        acts: Tensor,
        labels: Tensor,
        splits: Sequence[HeldOutSplit],
        folds: int = 2,
        batch_size: int = 16,
        progress: str | None = None,
    ) -> np.ndarray:
        """Held-out Set IoU `(S, C)` for S k-fold splits: in each, every image is scored by the
        probe trained on the other folds, intersections and unions pooled over folds (NaN:
        concept absent).

        The S x k probes are independent linear models over the same activations; they are
        trained as one bank (`ProbeBank`): one gather and one batched matmul per step for all
        of them, each probe seeing exactly the batches, statistics and Adam updates it would see
        trained alone (`tests/test_net2vec.py` checks it against one probe at a time).

        Args:
            acts: `(N, K, h, w)` activations of the whole probe set.
            labels: `(N, H, W)` their labels.
            splits: per split, the seed of its fold assignment (a random permutation) and
                whether it is a noise floor: each image's labels paired with another image's
                activations (a random derangement), the score a probe gets without image
                information, in the same units.
            folds: k.
            batch_size: images per probe step.
            progress: the label of a progress bar over the probe steps (None: no bar).
        """
        n = acts.shape[0]
        if not 2 <= folds <= n:
            raise ValueError(f"folds must be in 2..{n} (the probe images), got {folds}")
        plans = [fold_plan(n, folds, s.seed, s.noise_floor) for s in splits]
        acts = acts.to(self.device, torch.float32)
        labels = labels.to(self.device)
        bank = ProbeBank(acts, labels, plans, self.concepts, self.ignore_index, batch_size)
        seed = splits[0].seed if splits else 0
        bank.train(self.epochs, self.lr, self.pixels, seed=seed, progress=progress)
        inter, union = bank.overlap(batch_size)  # (S, C) each
        return iou_or_nan(inter, union)

    def _result(self, probe: ConceptProbe, batches: Batches, stats: ProbeStats) -> Net2VecResult:
        w, b = probe.weights()
        return Net2VecResult(
            set_iou=self.set_iou(probe, batches),
            weights=w.cpu(),
            bias=b.cpu(),
            area=stats.area.numpy().astype(np.float64),
            images=stats.images.numpy(),
            alpha=stats.alpha.numpy().astype(np.float64),
        )


@dataclass(frozen=True)
class HeldOutSplit:
    """One k-fold scoring of the probe set: its fold assignment is drawn from `seed`; a noise
    floor pairs each image's labels with another image's activations."""

    seed: int
    noise_floor: bool = False


@dataclass
class FoldPlan:
    """Which activations go with which labels, and which fold scores each image."""

    source: Tensor  # (N,) image i's labels go with the activations of image source[i]
    fold_of: Tensor  # (N,) the fold whose probe scores image i (it trains on the others)


def fold_plan(n: int, folds: int, seed: int, noise_floor: bool) -> FoldPlan:
    """Folds by a random permutation drawn from `seed`; for a noise floor, image order[i] gets
    the activations of image order[i + 1] (a derangement: no image keeps its own)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    source = torch.arange(n)
    if noise_floor:
        source[order] = order.roll(-1)
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[order] = torch.arange(n) % folds
    return FoldPlan(source, fold_of)


class ProbeBank:
    """The G = S x k probes of S k-fold splits over one layer's activations, as one model.

    Probe g = (split s, fold f) trains on the images outside fold f of split s, in their index
    order, `batch_size` at a time, with its own channel standardisation and alphas from those
    images: what `Net2Vec.fit` would do with that subset alone. All probes step together: step
    t gathers, for every probe, its t-th batch of activations into one `(G, B, h, w, K)` tensor
    (shorter subsets padded and masked) and applies one batched matmul; the loss is a sum of
    per-probe terms, so each probe's gradient is its own, and Adam runs per probe with its own
    step count (a probe with no batch at step t does not move: torch's Adam would still move it
    by its momentum).
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(
        self,
        acts: Tensor,
        labels: Tensor,
        plans: Sequence[FoldPlan],
        concepts: int,
        ignore_index: int,
        batch_size: int,
    ):
        n, channels = acts.shape[:2]
        device = acts.device
        self.concepts, self.ignore_index, self.plans = concepts, ignore_index, plans
        self.folds = int(plans[0].fold_of.max()) + 1 if plans else 0
        train_ids = [
            (p.fold_of != f).nonzero()[:, 0] for p in plans for f in range(self.folds)
        ]  # probe g = s * folds + f
        sources = [p.source for p in plans for _ in range(self.folds)]
        g = len(train_ids)
        # probe_stats for every probe at once: per-image sums, summed by membership matrices
        a64 = acts.to(torch.float64)
        per_image_sum, per_image_sq = a64.sum((2, 3)), (a64 * a64).sum((2, 3))  # (N, K)
        del a64
        act_member = torch.zeros(g, n, dtype=torch.float64, device=device)
        label_member = torch.zeros_like(act_member)
        for i, (ids, src) in enumerate(zip(train_ids, sources, strict=True)):
            act_member[i, src[ids].to(device)] = 1
            label_member[i, ids.to(device)] = 1
        count = label_member.sum(1, keepdim=True) * acts.shape[2] * acts.shape[3]
        mean = act_member @ per_image_sum / count
        std = (act_member @ per_image_sq / count - mean * mean).clamp_min(0).sqrt()
        self.mean = mean.float()  # (G, K)
        self.std = torch.where(std > 1e-6, std, torch.ones_like(std)).float()
        valid = labelled_pixels(labels, concepts, ignore_index)
        self.valid = valid  # (N, H, W): also what `overlap` scores
        pixels = concept_pixels(labels, concepts, valid)  # (N, C)
        self.present = pixels > 0  # (N, C)
        own = valid.flatten(1).sum(1, keepdim=True).clamp_min(1)
        fraction = (pixels / own).to(torch.float64)
        images = label_member @ self.present.to(torch.float64)  # (G, C)
        self.alpha = (1 - label_member @ fraction / images.clamp_min(1)).float()
        self.weight = torch.zeros(g, concepts, channels, device=device, requires_grad=True)
        self.bias = torch.zeros(g, concepts, device=device, requires_grad=True)
        # step t of every epoch: probe g's labels label_index[t, g], activations act_index[...]
        steps = max(-(-len(ids) // batch_size) for ids in train_ids)
        label_index = torch.zeros(steps, g, batch_size, dtype=torch.long)
        act_index = torch.zeros_like(label_index)
        filled = torch.zeros(steps, g, batch_size, dtype=torch.bool)
        for i, (ids, src) in enumerate(zip(train_ids, sources, strict=True)):
            padded = torch.zeros(steps * batch_size, dtype=torch.long)
            padded[: len(ids)] = ids
            label_index[:, i] = padded.view(steps, batch_size)
            act_index[:, i] = src[padded].view(steps, batch_size)
            filled[:, i] = (torch.arange(steps * batch_size) < len(ids)).view(steps, batch_size)
        self.label_index = label_index.to(device)
        self.act_index = act_index.to(device)
        self.filled = filled.to(device)
        self.acts = acts.permute(0, 2, 3, 1).contiguous()  # (N, h, w, K): gathers feed matmuls
        self.labels = labels

    def raw_weights(self) -> tuple[Tensor, Tensor]:
        """Weights `(G, C, K)` and biases `(G, C)` on the raw activations: the standardisation
        folded in, w.(A - mu)/sigma + b = (w/sigma).A + b' (as `ConceptProbe.weights`), so no
        step normalises a gathered `(G, B, h, w, K)` tensor."""
        weight = self.weight / self.std[:, None, :]
        return weight, self.bias - (weight * self.mean[:, None, :]).sum(2)

    def logits(self, acts: Tensor, probe: Tensor) -> Tensor:
        """Channels-last activations `(G', B, h, w, K)` and the probe of each image, `(G', B)`
        (or `(G',)`: one per row) -> concept logits `(G', B, C, h, w)`."""
        weight, bias = self.raw_weights()
        if probe.dim() == 1:  # (G', B*h*w, K) @ (G', K, C)
            out = acts.flatten(1, 3) @ weight[probe].transpose(1, 2)
            out = out.unflatten(1, acts.shape[1:4]) + bias[probe][:, None, None, None]
        else:  # (G', B, h*w, K) @ (G', B, K, C)
            out = acts.flatten(2, 3) @ weight[probe].transpose(2, 3)
            out = out.unflatten(2, acts.shape[2:4]) + bias[probe][:, :, None, None]
        return out.permute(0, 1, 4, 2, 3)  # (G', B, h, w, C) -> (G', B, C, h, w)

    def train(
        self, epochs: int, lr: float, pixels: int | None, seed: int = 0, progress: str | None = None
    ) -> None:
        """`epochs` passes; with `pixels`, each step's loss is over that many label pixels per
        image drawn uniformly (an unbiased estimate of the per-image mean). `progress` labels a
        progress bar over the steps (None: none)."""
        acts, labels = self.acts, self.labels
        g, device = self.weight.shape[0], self.weight.device
        size = labels.shape[-2:]
        flat_labels = labels.flatten(1)  # (N, H*W)
        probes = torch.arange(g, device=device)
        moments = [torch.zeros_like(p) for p in (self.weight, self.bias) for _ in range(2)]
        done = torch.zeros(g, device=device)  # Adam steps taken per probe
        gen = torch.Generator(device=device).manual_seed(seed)
        steps = self.label_index.shape[0]
        bar = tqdm(
            total=epochs * steps, desc=progress, unit="step", disable=progress is None, leave=False
        )
        for _ in range(epochs):
            for t in range(steps):
                filled, index = self.filled[t], self.label_index[t]  # (G, B) each
                present = self.present[index] & filled[..., None]  # (G, B, C)
                with torch.enable_grad():
                    logits = self.logits(acts[self.act_index[t]], probes)  # (G, B, C, h, w)
                    flat = logits.flatten(0, 1)  # (G*B, C, h, w)
                    if pixels is None:
                        z, lab = resize_logits(flat, size), labels[index].flatten(0, 1)
                    else:
                        where = torch.randint(
                            size[0] * size[1], (*index.shape, pixels), generator=gen, device=device
                        )  # (G, B, P)
                        z = logits_at(flat, where.flatten(0, 1), size)[:, :, None]  # (GB, C, 1, P)
                        lab = flat_labels[index[..., None], where].flatten(0, 1)[:, None]
                    target, valid = concept_targets(lab, self.concepts, self.ignore_index)
                    alpha = self.alpha[:, None].expand(-1, filled.shape[1], -1).flatten(0, 1)
                    loss = weighted_bce(z, target, alpha, valid).unflatten(0, filled.shape)
                    # per probe and concept: the mean over its batch images containing the
                    # concept, as Net2Vec._step
                    per_concept = (loss * present).sum(1) / present.sum(1).clamp_min(1)
                    grads = torch.autograd.grad(per_concept.sum(), (self.weight, self.bias))
                active = filled.any(1)  # (G,)
                done += active
                self._adam(grads, moments, done, active, lr)
                bar.update()
        bar.close()

    @torch.no_grad()
    def _adam(
        self,
        grads: tuple[Tensor, Tensor],
        moments: list[Tensor],
        done: Tensor,
        active: Tensor,
        lr: float,
    ) -> None:
        """torch.optim.Adam's update (defaults: betas 0.9 / 0.999, eps 1e-8) per probe, applied
        only to the probes that had a batch."""
        b1, b2 = self.betas
        t = done.clamp_min(1)
        for k, (param, grad) in enumerate(zip((self.weight, self.bias), grads, strict=True)):
            shape = (-1,) + (1,) * (param.dim() - 1)
            on = active.view(shape)
            m, v = moments[2 * k], moments[2 * k + 1]
            m.copy_(torch.where(on, m.lerp(grad, 1 - b1), m))
            v.copy_(torch.where(on, v * b2 + (1 - b2) * grad * grad, v))
            step = (lr / (1 - b1**t)).view(shape)
            denom = (v.sqrt() / (1 - b2**t).sqrt().view(shape)) + self.eps
            param.sub_(torch.where(on, step * m / denom, torch.zeros_like(param)))

    @torch.no_grad()
    def overlap(self, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 3's intersections and unions `(S, C)`, pooled over folds: each image scored at
        full label resolution by its split's probe that did not train on it.

        Counted without a one-hot `(S, b, C, H, W)` truth: a pixel is true for its label's
        concept only, so the intersection is the prediction read at each pixel's label, and
        the union is predicted + true - intersection (predictions counted on scored pixels:
        not `ignore_index`, in images that contain the concept)."""
        acts, labels = self.acts, self.labels
        device = acts.device
        probe = torch.stack([p.fold_of + i * self.folds for i, p in enumerate(self.plans)])
        source = torch.stack([p.source for p in self.plans])  # (S, N)
        probe, source = probe.to(device), source.to(device)
        splits, concepts = len(self.plans), self.concepts
        inter = torch.zeros(splits, concepts + 1, dtype=torch.float64, device=device)
        predicted = torch.zeros(splits, concepts, dtype=torch.float64, device=device)
        valid = self.valid
        for i in range(0, acts.shape[0], batch_size):
            chunk = slice(i, i + batch_size)
            logits = self.logits(acts[source[:, chunk]], probe[:, chunk])  # (S, b, C, h, w)
            pred = resize_logits(logits.flatten(0, 1), labels.shape[-2:]) > 0  # sigmoid > 0.5
            pred = pred.unflatten(0, logits.shape[:2])  # (S, b, C, H, W)
            lab, ok = labels[chunk], valid[chunk]  # (b, H, W)
            # predicted pixels that count: not ignore_index, in images with the concept
            counted = pred & (lab != self.ignore_index)[None, :, None]
            per_image = counted.flatten(3).sum(3)  # (S, b, C)
            predicted += (per_image * self.present[chunk]).sum(1).double()
            # intersection: the prediction at each valid pixel's own concept
            at = lab.clamp(0, concepts - 1).long()[None, :, None].expand(splits, -1, 1, -1, -1)
            hit = pred.gather(2, at)[:, :, 0] & ok  # (S, b, H, W)
            ids = lab.long().masked_fill(~ok, concepts).flatten()  # invalid -> spare column
            inter.scatter_add_(1, ids.expand(splits, -1), hit.flatten(1).double())
        inter = inter[:, :concepts]
        true = concept_pixels(labels, concepts, valid).sum(0).double()  # (C,): true pixels
        union = predicted + true[None] - inter
        return inter.cpu().numpy(), union.cpu().numpy()


def resize_logits(logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """`(B, C, h, w)` -> `(B, C, H, W)`, bilinear without corner alignment (as `ConceptProbe`)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def logits_at(logits: Tensor, where: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """The bilinear upsampling of `resize_logits` evaluated only at flat pixel indices `where`
    `(B, P)` of the `size` label grid: `(B, C, P)`, equal to `resize_logits(...)` there.

    grid_sample without corner alignment maps a pixel centre to the same source point as
    `interpolate` does, and clamping to the border equals interpolate's edge handling.
    """
    height, width = size
    y = torch.div(where, width, rounding_mode="floor").to(logits.dtype)
    x = (where % width).to(logits.dtype)
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], -1)  # (B, P, 2)
    out = F.grid_sample(
        logits, grid[:, None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[:, :, 0]


def cached_batches(pairs: list[tuple[Tensor, Tensor]], batch_size: int | None = None) -> Batches:
    """A `Batches` source over activations already in memory (optionally re-batched)."""
    if batch_size is None:
        return lambda: iter(pairs)
    acts = torch.cat([a for a, _ in pairs])
    labels = torch.cat([lab for _, lab in pairs])

    def gen() -> Iterable[tuple[Tensor, Tensor]]:
        for i in range(0, acts.shape[0], batch_size):
            yield acts[i : i + batch_size], labels[i : i + batch_size]

    return gen


def subset_batches(acts: Tensor, labels: Tensor, index: Tensor, batch_size: int) -> Batches:
    """A `Batches` source over the images `index` of in-memory activations and labels."""

    def gen() -> Iterable[tuple[Tensor, Tensor]]:
        for i in range(0, len(index), batch_size):
            chunk = index[i : i + batch_size]
            yield acts[chunk], labels[chunk]

    return gen


def iou_or_nan(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Pooled intersections / unions; NaN where the union is empty (concept in no image)."""
    iou = inter / np.maximum(union, 1)
    return np.where(union > 0, iou, np.nan)
