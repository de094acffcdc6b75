"""Net2Vec probes on a synthetic layer whose channel k is concept k's mask plus noise."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusescope.dissect import Net2Vec
from fusescope.dissect.net2vec import cached_batches, concept_presence, probe_stats

C, K_EXTRA, H, STRIDE = 4, 3, 32, 2


def synthetic_layer(n=24, seed=0):
    """Labels: background concept 0 and grid-aligned rectangles of concepts 1..C-1, some images
    lacking some concepts; activations (n, C + K_EXTRA, H/2, H/2): channel k = concept k's mask
    (average-pooled) + noise, then distractor noise channels; a few ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, H, H, dtype=torch.long)
    for i in range(n):
        for c in range(1, C):
            if torch.rand((), generator=g) < 0.3:
                continue  # image i lacks concept c
            y, x = (torch.randint(0, H // 4 - 2, (2,), generator=g) * 4).tolist()
            hh, ww = (torch.randint(2, 5, (2,), generator=g) * 4).tolist()
            labels[i, y : y + hh, x : x + ww] = c
    labels[:, 0, :3] = 255
    masks = torch.stack([(labels == c).float() for c in range(C)], 1)  # (n, C, H, H)
    acts = F.avg_pool2d(masks, STRIDE) * 3.0 + 0.5
    acts = acts + 0.2 * torch.randn(acts.shape, generator=g)
    noise = torch.randn(n, K_EXTRA, H // STRIDE, H // STRIDE, generator=g)
    acts = torch.cat([acts, noise], 1)
    return [(acts[i : i + 8], labels[i : i + 8]) for i in range(0, n, 8)]


def test_probe_recovers_concept_channels():
    batches = cached_batches(synthetic_layer())
    result = Net2Vec(C, epochs=40, lr=0.05).fit(batches)
    assert np.all(result.set_iou > 0.85), result.set_iou
    # each concept's largest weight is on its own channel
    assert result.weights.shape == (C, C + K_EXTRA)
    assert result.weights.argmax(1).tolist() == list(range(C))


def test_all_at_once_equals_one_at_a_time():
    batches = cached_batches(synthetic_layer(seed=1))
    net2vec = Net2Vec(C, epochs=40, lr=0.05)
    stats = probe_stats(batches, C)
    together = net2vec.fit(batches, stats=stats).set_iou
    for c in range(C):
        alone = net2vec.fit_one_concept(batches, c, stats=stats)
        assert alone.set_iou[c] == pytest.approx(together[c], abs=0.03)
        assert np.isnan(np.delete(alone.set_iou, c)).all()


def test_stats_and_absent_concepts():
    pairs = synthetic_layer()
    labels = torch.cat([lab for _, lab in pairs])
    stats = probe_stats(cached_batches(pairs), C + 1)  # one concept no image has
    valid = labels != 255
    for c in range(C):
        assert stats.area[c].item() == pytest.approx(
            ((labels == c) & valid).sum().item() / valid.sum().item(), rel=1e-5
        )
    assert stats.images[C] == 0
    assert concept_presence(labels, C + 1)[:, C].sum() == 0
    result = Net2Vec(C + 1, epochs=1).fit(cached_batches(pairs))
    assert np.isnan(result.set_iou[C]) and np.isfinite(result.set_iou[:C]).all()


def test_set_iou_pools_over_images_containing_the_concept():
    """Eq. 3 by hand: a probe that always says 'concept 1 everywhere'."""
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2] = 1  # 8 pixels of concept 1 in image 0; image 1 lacks it
    acts = torch.ones(2, 1, 4, 4)
    net2vec = Net2Vec(2, epochs=0)
    probe, _ = net2vec._prepare(cached_batches([(acts, labels)]))
    with torch.no_grad():
        probe.conv.bias.copy_(torch.tensor([-1.0, 1.0]))
    iou = net2vec.set_iou(probe, cached_batches([(acts, labels)]))
    # concept 1: union = the 16 pixels of image 0 only (image 1 is not in X_c), intersection 8
    assert iou[1] == pytest.approx(8 / 16)
    assert iou[0] == 0.0
