"""Net2Vec probes on a synthetic layer whose channel k is concept k's mask plus noise."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusescope.dissect import Net2Vec
from fusescope.dissect.net2vec import (
    ConceptProbe,
    HeldOutSplit,
    cached_batches,
    concept_presence,
    fold_plan,
    iou_or_nan,
    logits_at,
    probe_stats,
    resize_logits,
    subset_batches,
)

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
    probe = ConceptProbe(channels=1, concepts=2)  # zero weights: the logits are the biases
    with torch.no_grad():
        probe.conv.bias.copy_(torch.tensor([-1.0, 1.0]))
    iou = net2vec.set_iou(probe, cached_batches([(acts, labels)]))
    # concept 1: union = the 16 pixels of image 0 only (image 1 is not in X_c), intersection 8
    assert iou[1] == pytest.approx(8 / 16)
    assert iou[0] == 0.0


def planted_layer(n=30, channels=64, size=16, stride=1, planted=True, seed=0):
    """Labels with concept 1 (an 8x8 square in every image) and a rare concept 2 (a 3x3 square in
    every third image) on background 0. Activations: `channels` Gaussian noise channels at
    `stride`; with `planted`, channels 1 and 2 are exactly +1 on the concept and -1 elsewhere,
    so a linear probe can decode both concepts perfectly (best possible Set IoU: 1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        y, x = torch.randint(0, size - 8, (2,), generator=g).tolist()
        labels[i, y : y + 8, x : x + 8] = 1
        if i % 3 == 0:
            y, x = torch.randint(0, size - 3, (2,), generator=g).tolist()
            labels[i, y : y + 3, x : x + 3] = 2
    acts = torch.randn(n, channels, size, size, generator=g)
    if planted:
        acts[:, 1:3] = torch.stack([(labels == c).float() * 2 - 1 for c in (1, 2)], 1)
    return F.avg_pool2d(acts, stride) * stride, labels


def test_alpha_follows_the_official_code():
    """alpha_c = 1 - mean, over the images containing c, of c's share of the image's labelled
    pixels (ruthcfong/net2vec); not the share over all images."""
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 1  # 2 of 16 pixels
    labels[1, :2] = 1  # 8 of 16 pixels; image 2 lacks concept 1
    labels[1, 3, :] = 255  # 4 ignored pixels: 8 of 12 labelled
    stats = probe_stats(cached_batches([(torch.ones(3, 1, 4, 4), labels)]), 2)
    assert stats.alpha[1].item() == pytest.approx(1 - (2 / 16 + 8 / 12) / 2)
    assert stats.alpha[0].item() == pytest.approx(1 - (14 / 16 + 4 / 12 + 16 / 16) / 3)
    assert stats.area[1].item() == pytest.approx(10 / 44)  # SVar's frequency: pooled
    assert stats.images.tolist() == [3, 2]


def test_planted_concepts_are_found_on_held_out_images():
    acts, labels = planted_layer()
    net2vec = Net2Vec(3, epochs=30, lr=0.05)
    held = np.array([net2vec.cross_validated(acts, labels, folds=2, seed=s) for s in range(3)])
    floor = np.array(
        [net2vec.cross_validated(acts, labels, seed=s, noise_floor=True) for s in range(3)]
    )
    # the best possible Set IoU is 1 for both the common and the rare concept
    assert held[:, 1].min() > 0.97 and held[:, 2].mean() > 0.85, held
    assert (held.mean(0)[1:] > floor.mean(0)[1:] + 0.4).all(), (held, floor)


def test_noise_features_score_at_the_noise_floor_held_out_not_in_sample():
    """512 noise channels on a 4x4 grid: in sample, a probe fits the labels; held out, it does
    no better than the same probe on features paired with other images' labels."""
    acts, labels = planted_layer(n=16, channels=512, stride=4, planted=False)
    net2vec = Net2Vec(3, epochs=30, lr=0.05)
    in_sample = net2vec.fit(cached_batches([(acts, labels)], 8)).set_iou
    held = np.mean([net2vec.cross_validated(acts, labels, seed=s) for s in range(3)], 0)
    floor = np.mean(
        [net2vec.cross_validated(acts, labels, seed=s, noise_floor=True) for s in range(3)], 0
    )
    assert np.abs(held - floor).max() < 0.08, (held, floor)
    assert (in_sample[1:] > held[1:] + 0.2).all(), (in_sample, held)


def test_cross_validation_checks_its_folds():
    acts, labels = planted_layer(n=4)
    with pytest.raises(ValueError, match="folds"):
        Net2Vec(3, epochs=1).cross_validated(acts, labels, folds=5)


def one_probe_at_a_time(net2vec, acts, labels, split, folds, batch_size):
    """The reference for `held_out`: each fold's probe trained alone by `Net2Vec._train` on its
    training images (`subset_batches`), scored by `Net2Vec.overlap` on the held-out fold."""
    plan = fold_plan(acts.shape[0], folds, split.seed, split.noise_floor)
    paired = acts[plan.source]  # image i's labels with the activations of image source[i]
    inter, union = np.zeros(net2vec.concepts), np.zeros(net2vec.concepts)
    for k in range(folds):
        train_ids = (plan.fold_of != k).nonzero()[:, 0]
        test_ids = (plan.fold_of == k).nonzero()[:, 0]
        train = subset_batches(paired, labels, train_ids, batch_size)
        probe, stats = net2vec._prepare(train)
        net2vec._train(probe, train, stats)
        test = subset_batches(paired, labels, test_ids, batch_size)
        i, u = net2vec.overlap(probe, test, list(range(net2vec.concepts)))
        inter, union = inter + i, union + u
    return iou_or_nan(inter, union)


@pytest.mark.parametrize("folds,batch_size", [(2, 8), (3, 4)])
def test_the_probe_bank_equals_one_probe_at_a_time(folds, batch_size):
    """All splits' probes (held out and noise floor) trained as one bank: the same Set IoUs as
    training each probe alone, including folds of unequal size (31 images) and a last batch
    that only some probes have."""
    acts, labels = planted_layer(n=31, channels=24, size=16, stride=2)
    acts = acts + 0.3 * torch.randn(acts.shape, generator=torch.Generator().manual_seed(1))
    net2vec = Net2Vec(3, epochs=6, lr=0.05)
    splits = [HeldOutSplit(s, floor) for floor in (False, True) for s in range(2)]
    bank = net2vec.held_out(acts, labels, splits, folds=folds, batch_size=batch_size)
    alone = [one_probe_at_a_time(net2vec, acts, labels, s, folds, batch_size) for s in splits]
    np.testing.assert_allclose(bank, np.array(alone), atol=1e-3)
    assert np.ptp(bank[:2, 1]) > 0 or np.ptp(bank[:, 2]) > 0  # the splits do differ


def test_logits_at_sampled_pixels_equal_the_upsampled_logits():
    """The bilinear upsampling evaluated at chosen pixels (grid_sample) is `interpolate`'s,
    for integer and non-integer scale factors and at the borders."""
    g = torch.Generator().manual_seed(0)
    for small, size in (((5, 7), (40, 56)), ((5, 7), (13, 17)), ((6, 6), (6, 6))):
        z = torch.randn(3, 4, *small, generator=g)
        every = torch.arange(size[0] * size[1]).expand(3, -1)
        full = resize_logits(z, size).flatten(2)
        torch.testing.assert_close(logits_at(z, every, size), full, atol=1e-5, rtol=0)
        some = torch.randint(size[0] * size[1], (3, 50), generator=g)
        torch.testing.assert_close(
            logits_at(z, some, size), full.gather(2, some[:, None].expand(-1, 4, -1))
        )


def test_pixel_sampling_keeps_planted_concepts_and_the_noise_floor():
    """Training on 64 random pixels per image (of 256) still finds the planted concepts held
    out, and pure noise still scores at its floor."""
    splits = [HeldOutSplit(s, floor) for floor in (False, True) for s in range(3)]
    net2vec = Net2Vec(3, epochs=30, lr=0.05, pixels=64)
    acts, labels = planted_layer()
    scores = net2vec.held_out(acts, labels, splits)
    held, floor = scores[:3], scores[3:]
    assert held[:, 1].min() > 0.95 and held[:, 2].mean() > 0.8, held
    assert (held.mean(0)[1:] > floor.mean(0)[1:] + 0.4).all(), (held, floor)
    acts, labels = planted_layer(n=16, channels=512, stride=4, planted=False)
    scores = net2vec.held_out(acts, labels, splits)
    assert np.abs(scores[:3].mean(0) - scores[3:].mean(0)).max() < 0.08, scores
