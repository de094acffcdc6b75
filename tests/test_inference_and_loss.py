"""Known answers for test-time augmentation, sliding windows and the loss's batch arithmetic.

A model whose output does not depend on the input (constant logits) must get the same
probabilities under every TTA mode and window; a pointwise model (a 1x1 conv: no spatial
mixing, flip-equivariant) must get exactly its plain pass under flip and sliding windows.
Gradient accumulation with the global-batch denominator must equal one large batch, class
weights included.
"""

import pytest
import torch
from torch import nn

from fusescope.tasks.segmentation.evaluation import TTA_MODES, predict_probs
from fusescope.tasks.segmentation.loss import label_weight, total_loss

KINDS = {"rgb": "color", "depth": "depth"}
K = 3


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = torch.tensor([0.5, -1.0, 2.0])

    def forward(self, batch):
        b, _, h, w = batch["rgb"].shape
        return {"logits": self.logits.view(1, K, 1, 1).expand(b, K, h, w)}


class Pointwise(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, K, 1)

    def forward(self, batch):
        return {"logits": self.conv(torch.cat([batch["rgb"], batch["depth"]], 1))}


def inputs(h=24, w=30):
    g = torch.Generator().manual_seed(3)
    return {
        "rgb": torch.rand(2, 3, h, w, generator=g),
        "depth": torch.rand(2, 1, h, w, generator=g),
    }


@pytest.mark.parametrize("tta", TTA_MODES)
@pytest.mark.parametrize("window", [None, (16, 16)])
def test_a_constant_model_gets_its_softmax_under_every_tta_and_window(tta, window):
    probs = predict_probs(Constant(), inputs(), KINDS, K, tta, window=window)
    want = torch.tensor([0.5, -1.0, 2.0]).softmax(0).view(1, K, 1, 1).expand(2, K, 24, 30)
    torch.testing.assert_close(probs, want)


@pytest.mark.parametrize("tta", ["none", "flip"])
@pytest.mark.parametrize("window, stride", [((16, 16), None), ((10, 12), (7, 5)), ((24, 30), None)])
def test_a_pointwise_model_gets_its_plain_pass_through_windows_and_flips(tta, window, stride):
    model = Pointwise().eval()
    x = inputs()
    with torch.no_grad():
        plain = model(x)["logits"].softmax(1)
        probs = predict_probs(model, x, KINDS, K, tta, window=window, stride=stride)
    torch.testing.assert_close(probs, plain)


@pytest.mark.parametrize("class_weights", [None, torch.tensor([1.0, 3.0, 0.5])])
def test_gradient_accumulation_equals_one_large_batch(class_weights):
    model = Pointwise()
    x = inputs()
    g = torch.Generator().manual_seed(5)
    label = torch.randint(0, K, (2, 24, 30), generator=g)
    label[0, :5] = 255  # unlabelled pixels, unevenly spread over the micro-batches

    model.zero_grad()
    loss, _ = total_loss(model(x), label, 255, class_weights=class_weights)
    loss.backward()
    big = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    denominator = label_weight(label, 255, class_weights)  # the global batch's, as the engine
    for i in range(2):
        micro = {k: v[i : i + 1] for k, v in x.items()}
        part, _ = total_loss(
            model(micro),
            label[i : i + 1],
            255,
            class_weights=class_weights,
            denominator=denominator,
        )
        part.backward()
    for a, b in zip(big, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_class_weights_weight_each_pixel_by_its_class():
    logits = torch.randn(1, K, 2, 2)
    label = torch.tensor([[[0, 1], [2, 1]]])
    weights = torch.tensor([1.0, 3.0, 0.5])
    _, parts = total_loss({"logits": logits}, label, 255, class_weights=weights)
    nll = -logits.log_softmax(1).gather(1, label[:, None])[:, 0]  # (1, 2, 2)
    w = weights[label]
    torch.testing.assert_close(parts["ce"], (w * nll).sum() / w.sum())
