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

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        logits = self.conv(x)  # (B, C, h, w)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

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
        valid = (labels != ignore_index) & (labels >= 0) & (labels < concepts)
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
        logits: `(B, C, H, W)`; target: `(B, C, H, W)` in {0, 1}; alpha: `(C,)`;
        valid: `(B, 1, H, W)` bool.

    Returns:
        `(B, C)` losses.
    """
    a = alpha[None, :, None, None]
    # log sigmoid(z) and log(1 - sigmoid(z)) = log sigmoid(-z), stable for large |z|
    loss = -(a * target * F.logsigmoid(logits) + (1 - a) * (1 - target) * F.logsigmoid(-logits))
    loss = loss * valid
    return loss.sum((2, 3)) / valid.sum((2, 3)).clamp_min(1)


def concept_targets(labels: Tensor, concepts: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """`(B, H, W)` -> one-hot targets `(B, C, H, W)` float and valid mask `(B, 1, H, W)`.

    Label values outside [0, C) (including `ignore_index`) are not scored.
    """
    valid = (labels != ignore_index) & (labels >= 0) & (labels < concepts)
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
    """

    def __init__(
        self,
        concepts: int,
        epochs: int = 30,
        lr: float = 0.05,
        ignore_index: int = 255,
        device: torch.device | str = "cpu",
    ):
        self.concepts = concepts
        self.epochs = epochs
        self.lr = lr
        self.ignore_index = ignore_index
        self.device = torch.device(device)

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
        """Held-out Set IoU `(C,)`: k-fold over images, every image scored by the probe trained
        on the other folds, intersections and unions pooled over folds (NaN: concept absent).

        Args:
            acts: `(N, K, h, w)` activations of the whole probe set.
            labels: `(N, H, W)` their labels.
            folds: k; images are assigned to folds by a random permutation drawn from `seed`.
            seed: picks the fold assignment (and the pairing for the noise floor).
            noise_floor: pair each image's labels with another image's activations (a random
                derangement) before everything else: the score a probe gets without image
                information, in the same units.
            batch_size: images per probe step.
        """
        n = acts.shape[0]
        if not 2 <= folds <= n:
            raise ValueError(f"folds must be in 2..{n} (the probe images), got {folds}")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g)
        if noise_floor:
            # image order[i] gets the activations of image order[i + 1]: no fixed point
            source = torch.empty(n, dtype=torch.long)
            source[order] = order.roll(-1)
            acts = acts[source]
        fold_of = torch.empty(n, dtype=torch.long)
        fold_of[order] = torch.arange(n) % folds
        inter = np.zeros(self.concepts)
        union = np.zeros(self.concepts)
        ids = list(range(self.concepts))
        for k in range(folds):
            train_ids, test_ids = (fold_of != k).nonzero()[:, 0], (fold_of == k).nonzero()[:, 0]
            train = subset_batches(acts, labels, train_ids, batch_size)
            probe, stats = self._prepare(train)
            self._train(probe, train, stats)
            i, u = self.overlap(probe, subset_batches(acts, labels, test_ids, batch_size), ids)
            inter += i
            union += u
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
