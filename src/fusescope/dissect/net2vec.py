"""Net2Vec concept probes (Fong & Vedaldi, CVPR 2018) and the Set IoU of eq. 3.

For concept c and a layer with K channels A_k, a probe predicts
    M_c(x) = sigmoid(sum_k w_ck A_k(x) + b_c)
upsampled bilinearly to the label size, from raw (not thresholded) activations, as the
dissection paper does. Bilinear upsampling with `align_corners=False` is an affine combination
of neighbours (weights sum to 1), so it commutes with the 1x1 combination: the probe runs at the
layer's resolution and only the C concept logits are upsampled, not the K channels.

Training (eq. 2) is a per-pixel binary cross-entropy weighted by alpha = 1 - mean concept area
(positives get alpha, negatives 1 - alpha) over only the images containing the concept. The
printed eq. 2 drops the logarithms; the text, like Net2Vec's, calls it a binary cross-entropy,
which is what is implemented (the log-free form has no curvature to stop at a calibrated
probability).

All concepts of a layer are trained at once as one C-output 1x1 conv: each concept owns one
output row, its loss only touches that row, and a per-(image, concept) mask restricts it to the
images containing the concept, so one pass over the data per epoch trains every concept.
`fit_one_concept` keeps the textbook one-at-a-time path for comparison.

Set IoU (eq. 3) thresholds M at 0.5 (logit > 0) and pools intersections and unions over the
images containing the concept. Pixels labelled `ignore_index` count for neither.
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
    area: Tensor  # (C,) fraction of labelled pixels of each concept (alpha = 1 - area)
    images: Tensor  # (C,) how many images contain each concept


def concept_presence(labels: Tensor, concepts: int) -> Tensor:
    """`(B, H, W)` labels -> `(B, C)` bool: image b contains concept c (other values ignored)."""
    idx = labels.flatten(1).long().clamp(0, concepts)  # out-of-range -> the spare column C
    present = torch.zeros(labels.shape[0], concepts + 1, dtype=torch.bool, device=labels.device)
    return present.scatter_(1, idx, True)[:, :concepts]


def probe_stats(batches: Batches, concepts: int, ignore_index: int = 255) -> ProbeStats:
    """Channel statistics and concept areas in one pass."""
    total = sq = None
    count = 0
    pixels = torch.zeros(concepts, dtype=torch.float64)
    labelled = 0
    images = torch.zeros(concepts, dtype=torch.long)
    for acts, labels in batches():
        a = acts.detach().to(torch.float64)
        s, q = a.sum((0, 2, 3)), (a * a).sum((0, 2, 3))
        total = s if total is None else total + s
        sq = q if sq is None else sq + q
        count += a.shape[0] * a.shape[2] * a.shape[3]
        valid = (labels != ignore_index) & (labels >= 0) & (labels < concepts)
        pixels += torch.bincount(labels[valid].long().flatten(), minlength=concepts).double().cpu()
        labelled += int(valid.sum())
        images += concept_presence(labels.masked_fill(~valid, concepts), concepts).sum(0).cpu()
    if total is None:
        raise ValueError("the probe set is empty")
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a dead channel stays dead
    return ProbeStats(mean.float(), std.float(), (pixels / max(labelled, 1)).float(), images)


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
    area: np.ndarray  # (C,) pixel frequency on the probe set
    images: np.ndarray  # (C,) images containing each concept


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

    def fit(self, batches: Batches, stats: ProbeStats | None = None) -> Net2VecResult:
        """Train all concepts at once, then compute their Set IoU.

        Args:
            batches: called once per pass; yields `(activations (B,K,h,w), labels (B,H,W))`.
                Cache activations in it to avoid re-running the network every epoch.
            stats: channel/concept statistics if already computed (`probe_stats`).
        """
        probe, stats = self._prepare(batches, stats=stats)
        alpha = (1 - stats.area).to(self.device)
        optimiser = torch.optim.Adam(probe.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            for acts, labels in batches():
                acts, target, valid, present = self._batch(acts, labels)
                # enable_grad: a source generator suspended inside no_grad leaks that mode here
                with torch.enable_grad():
                    self._step(probe, optimiser, acts, labels, target, valid, present, alpha)
        return self._result(probe, batches, stats)

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
        alpha = (1 - stats.area[concept : concept + 1]).to(self.device)
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
        out = np.full(self.concepts, np.nan)
        iou = (inter / union.clamp_min(1)).cpu().numpy()
        iou[(union == 0).cpu().numpy()] = np.nan
        out[ids] = iou
        return out

    def _result(self, probe: ConceptProbe, batches: Batches, stats: ProbeStats) -> Net2VecResult:
        w, b = probe.weights()
        return Net2VecResult(
            set_iou=self.set_iou(probe, batches),
            weights=w.cpu(),
            bias=b.cpu(),
            area=stats.area.numpy().astype(np.float64),
            images=stats.images.numpy(),
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
