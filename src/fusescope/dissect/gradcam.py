"""Grad-CAM for segmentation (Selvaraju et al. 2017; Vinogradova et al. 2020) per modality.

For class c the scalar explained is the sum of the class-c logit over the pixels predicted as c
(`region="predicted"`) or labelled c (`region="label"`, the paper's choice). At each tapped
activation A `(B, K, h, w)`:

    alpha_k = mean_{h,w} d target / d A_k,     map = ReLU(sum_k alpha_k A_k),  upsampled to (H, W)

Taps on each modality's stream of the same model come from one forward and one backward, so
their maps are in the same units. Nothing is min-max normalised per image or per modality:
`shared_scale` divides every modality's map of an image by one common maximum, so "RGB looks
here twice as strongly as depth" survives into the picture. A tap with no gradient path to the
output (a stream the decoder never reads) gives an all-zero map.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.dissect.taps import FeatureTaps, Tap, split_modalities


class GradCAM:
    """Grad-CAM maps of one model at several tapped layers (e.g. one per modality stream).

    Args:
        model: a segmentor (batch dict in, `{"logits": (B,K,H,W), ...}` out), in eval mode.
        taps: map name -> `Tap` or dotted module name; split taps give `"{name}@{modality}"`.
    """

    def __init__(self, model: nn.Module, taps: Mapping[str, Tap | str]):
        self.model = model
        self.taps = FeatureTaps(model, taps, grad=True)

    def __call__(
        self,
        batch: Mapping[str, Any],
        concept: int,
        region: str = "predicted",
        ignore_index: int = 255,
    ) -> dict[str, Tensor]:
        """Raw (unnormalised) maps for `concept`: map name -> `(B, H, W)`, >= 0.

        Args:
            batch: the model's input batch dict (with `label` for `region="label"`).
            concept: class index to explain.
            region: "predicted" (pixels the model assigns to `concept`) or "label".
            ignore_index: label value never counted in the region.
        """
        if region not in ("predicted", "label"):
            raise ValueError(f"region must be 'predicted' or 'label', got {region!r}")
        with torch.enable_grad(), self.taps:
            logits = self.model(dict(batch))["logits"]  # (B, K, H, W)
            if region == "predicted":
                mask = logits.argmax(1) == concept  # (B, H, W)
            else:
                mask = batch["label"].to(logits.device) == concept
            target = (logits[:, concept] * mask).sum()
            names = list(self.taps.raw)
            acts = [self.taps.raw[n] for n in names]
            grads = (
                torch.autograd.grad(target, acts, allow_unused=True)
                if target.requires_grad
                else [None] * len(acts)
            )
        size = tuple(logits.shape[-2:])
        maps: dict[str, Tensor] = {}
        for name, act, grad in zip(names, acts, grads, strict=True):
            act = act.detach()
            grad = torch.zeros_like(act) if grad is None else grad
            split = self.taps.taps[name].split
            if split:
                parts_a = split_modalities(act, split, name)
                parts_g = split_modalities(grad, split, name)
                for key in parts_a:
                    maps[key] = cam(parts_a[key], parts_g[key], size)
            else:
                maps[name] = cam(act, grad, size)
        return maps


def cam(activation: Tensor, gradient: Tensor, size: tuple[int, int]) -> Tensor:
    """`(B, K, h, w)` activation and its gradient -> `(B, H, W)` Grad-CAM map."""
    weights = gradient.mean((2, 3), keepdim=True)  # (B, K, 1, 1)
    heat = F.relu((weights * activation).sum(1, keepdim=True))  # (B, 1, h, w)
    if tuple(heat.shape[-2:]) != tuple(size):
        heat = F.interpolate(heat, size=size, mode="bilinear", align_corners=False)
    return heat[:, 0]


def shared_scale(maps: Mapping[str, Tensor], eps: float = 1e-12) -> dict[str, Tensor]:
    """Divide every map of an image by the largest value over all maps of that image.

    The maps keep their ratios to one another (unlike per-map min-max), so they can be compared
    side by side; an image whose maps are all zero stays zero.
    """
    peak = torch.stack([m.flatten(1).amax(1) for m in maps.values()]).amax(0)  # (B,)
    scale = torch.where(peak > eps, peak, torch.ones_like(peak))[:, None, None]
    return {k: m / scale for k, m in maps.items()}
