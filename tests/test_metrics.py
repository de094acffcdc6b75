import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from fusescope.io import json_safe
from fusescope.tasks.segmentation.metrics import SegMetrics, group_miou, metrics_from_confusion


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics_with_ignore_index(seed):
    g = torch.Generator().manual_seed(seed)
    k = 5
    target = torch.randint(0, k, (3, 17, 23), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    # predictions correlated with targets so the metrics are not all ~1/k
    pred = torch.where(
        torch.rand(target.shape, generator=g) < 0.6,
        target.clamp(max=k - 1),
        torch.randint(0, k, target.shape, generator=g),
    )
    m = SegMetrics(k, ignore_index=255)
    m.update(pred[:2], target[:2])
    m.update(pred[2:], target[2:])  # accumulation over updates
    got = m.compute()
    iou = MulticlassJaccardIndex(k, average="none", ignore_index=255)(pred, target)
    miou = MulticlassJaccardIndex(k, average="macro", ignore_index=255)(pred, target)
    macc = MulticlassAccuracy(k, average="macro", ignore_index=255)(pred, target)
    pacc = MulticlassAccuracy(k, average="micro", ignore_index=255)(pred, target)
    assert got["per_class_iou"] == pytest.approx(iou.tolist(), abs=1e-6)
    assert got["miou"] == pytest.approx(float(miou), abs=1e-6)
    assert got["mean_acc"] == pytest.approx(float(macc), abs=1e-6)
    assert got["pixel_acc"] == pytest.approx(float(pacc), abs=1e-6)


def test_absent_class_is_nan_and_excluded_from_mean():
    m = SegMetrics(3)
    m.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    r = m.compute()
    assert math.isnan(r["per_class_iou"][2])
    assert r["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert json_safe(r)["per_class_iou"][2] is None


def test_ignored_pixels_do_not_count():
    m = SegMetrics(2, ignore_index=255)
    m.update(torch.tensor([1, 1, 0]), torch.tensor([255, 255, 0]))
    assert m.compute()["pixel_acc"] == 1.0


def test_confusion_sums_across_shards_equal_whole():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randint(0, 4, (2, 100), generator=g)
    whole, a, b = SegMetrics(4), SegMetrics(4), SegMetrics(4)
    whole.update(pred, target)
    a.update(pred[:37], target[:37])
    b.update(pred[37:], target[37:])
    assert metrics_from_confusion(a.confusion + b.confusion) == whole.compute()


def test_group_miou():
    assert group_miou([0.2, 0.4, float("nan"), 1.0], {"x": [0, 1], "y": [2, 3]}) == {
        "x": pytest.approx(0.3),
        "y": 1.0,
    }
