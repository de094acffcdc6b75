"""Grad-CAM on tiny models: zero without a gradient path, one scale across modalities."""

import pytest
import torch
from torch import nn

from fusescope.dissect import GradCAM, Tap, shared_scale


class TwoStream(nn.Module):
    """RGB and depth convs; the head reads depth only if `use_depth`."""

    def __init__(self, use_depth: bool):
        super().__init__()
        self.rgb = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.depth = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head_rgb = nn.Conv2d(4, 3, 1)
        self.head_depth = nn.Conv2d(4, 3, 1)
        self.use_depth = use_depth

    def forward(self, batch):
        logits = self.head_rgb(self.rgb(batch["rgb"]))
        depth = self.depth(batch["depth"])  # computed either way
        if self.use_depth:
            logits = logits + self.head_depth(depth)
        return {"logits": logits}


class Stacked(nn.Module):
    """One shared conv over modalities stacked on the batch axis, like the multi-stream net."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, batch):
        # (B*2, 3, H, W), sample-major as the multi-stream net stacks
        x = torch.stack([batch["rgb"], batch["depth"].expand(-1, 3, -1, -1)], 1).flatten(0, 1)
        f = self.body(x)
        rgb, depth = f.unflatten(0, (-1, 2)).unbind(1)
        return {"logits": self.head(torch.cat([rgb, depth], 1))}


def batch(b=2, size=8):
    return {
        "rgb": torch.randn(b, 3, size, size),
        "depth": torch.randn(b, 1, size, size),
        "label": torch.randint(0, 3, (b, size, size)),
    }


def test_zero_map_without_gradient_path():
    model = TwoStream(use_depth=False).eval()
    cam = GradCAM(model, {"rgb": "rgb", "depth": "depth"})
    maps = cam(batch(), concept=1)
    assert maps["depth"].abs().max() == 0
    assert maps["rgb"].max() > 0
    assert maps["rgb"].shape == (2, 8, 8)


def test_matches_hand_computation_for_a_linear_head():
    model = TwoStream(use_depth=True).eval()
    b = batch()
    maps = GradCAM(model, {"rgb": "rgb", "depth": "depth"})(b, concept=2, region="label")
    with torch.no_grad():
        a_rgb = model.rgb(b["rgb"])  # (B, 4, H, W)
    # target = sum over labelled pixels of the logit; d/dA_k = w_2k on those pixels
    region = (b["label"] == 2).float()  # (B, H, W)
    w = model.head_rgb.weight[2, :, 0, 0]  # (4,)
    alpha = w[None, :] * region.mean((1, 2))[:, None]  # (B, 4)
    expected = torch.relu((alpha[:, :, None, None] * a_rgb).sum(1))
    assert torch.allclose(maps["rgb"], expected, atol=1e-6)


def test_maps_share_one_scale():
    model = TwoStream(use_depth=True).eval()
    with torch.no_grad():
        model.head_depth.weight.mul_(0.1)  # depth contributes less
    maps = GradCAM(model, {"rgb": "rgb", "depth": "depth"})(batch(), concept=0)
    scaled = shared_scale(maps)
    peak = torch.stack([m.flatten(1).amax(1) for m in scaled.values()]).amax(0)
    assert torch.allclose(peak, torch.ones_like(peak))
    # the ratio between modalities survives (no per-map min-max)
    ratio_raw = maps["depth"].flatten(1).amax(1) / maps["rgb"].flatten(1).amax(1)
    ratio = scaled["depth"].flatten(1).amax(1) / scaled["rgb"].flatten(1).amax(1)
    assert torch.allclose(ratio, ratio_raw)
    assert shared_scale({"a": torch.zeros(1, 2, 2)})["a"].abs().max() == 0


def test_split_tap_on_stacked_streams():
    model = Stacked().eval()
    b = batch()
    maps = GradCAM(model, {"body": Tap("body", split=("rgb", "depth"))})(b, concept=1)
    assert set(maps) == {"body@rgb", "body@depth"}
    # the same maps computed by hand from the stacked activation
    x = torch.stack([b["rgb"], b["depth"].expand(-1, 3, -1, -1)], 1).flatten(0, 1)
    act = model.body(x).detach().requires_grad_(True)
    rgb, depth = act.unflatten(0, (-1, 2)).unbind(1)
    logits = model.head(torch.cat([rgb, depth], 1))
    target = (logits[:, 1] * (logits.argmax(1) == 1)).sum()
    (grad,) = torch.autograd.grad(target, act)
    g_rgb = grad[0::2].mean((2, 3), keepdim=True)  # rows of modality 0
    assert torch.allclose(maps["body@rgb"], torch.relu((g_rgb * act[0::2]).sum(1)), atol=1e-6)
    with pytest.raises(ValueError, match="region"):
        GradCAM(model, {"body": "body"})(b, concept=0, region="nope")


def test_label_region_explains_a_class_the_model_never_predicts():
    """The paper sums the class score over the labelled pixels: a model that never predicts
    the class (RGB-only on pillars) still gets a map; over its (empty) predicted region, none."""
    model = TwoStream(use_depth=True).eval()
    with torch.no_grad():
        model.head_rgb.bias[1] = -100.0  # class 1 never wins the argmax
    b = batch()
    b["label"][:, :4] = 1  # but it is labelled
    cam = GradCAM(model, {"rgb": "rgb", "depth": "depth"})
    predicted = cam(b, concept=1, region="predicted")
    labelled = cam(b, concept=1, region="label")
    assert all(m.abs().max() == 0 for m in predicted.values())
    assert all(m.amax((1, 2)).min() > 0 for m in labelled.values())
