"""Linear CKA: against an independent NumPy implementation, the published invariances, and the
streaming accumulators against the full computation."""

import itertools
import warnings

import numpy as np
import pytest
import torch

from fusescope.dissect import CKAAccumulator, linear_cka
from fusescope.dissect.cka import feature_space_linear_cka, gram_linear_cka


def np_cka_biased(x, y):
    """Kornblith et al. eq. (4): ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def np_hsic_u_statistic(k, l):
    """HSIC as the plain U-statistic over ordered distinct quadruples (i, j, q, r):
    mean of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq (Gretton et al.'s population HSIC terms)."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def np_cka_debiased(x, y):
    k, l = x @ x.T, y @ y.T
    return np_hsic_u_statistic(k, l) / np.sqrt(
        np_hsic_u_statistic(k, k) * np_hsic_u_statistic(l, l)
    )


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    y = x @ rng.normal(size=(5, 4)) + 0.5 * rng.normal(size=(7, 4)) + 3.0
    return x, y


def test_biased_matches_numpy(xy):
    x, y = xy
    assert linear_cka(x, y) == pytest.approx(np_cka_biased(x, y), abs=1e-10)
    assert gram_linear_cka(x, y) == pytest.approx(np_cka_biased(x, y), abs=1e-10)
    assert feature_space_linear_cka(x, y) == pytest.approx(np_cka_biased(x, y), abs=1e-10)


def test_debiased_matches_u_statistic(xy):
    x, y = xy
    ref = np_cka_debiased(x, y)
    assert linear_cka(x, y, debiased=True) == pytest.approx(ref, abs=1e-10)
    assert gram_linear_cka(x, y, True) == pytest.approx(ref, abs=1e-10)
    assert feature_space_linear_cka(x, y, True) == pytest.approx(ref, abs=1e-10)


def test_tensor_and_array_inputs_agree(xy):
    x, y = xy
    t = linear_cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert t == pytest.approx(linear_cka(x, y), abs=1e-6)
    # conv features are flattened per example
    feats = torch.randn(6, 2, 3, 3)
    assert linear_cka(feats, feats.flatten(1)) == pytest.approx(1.0)


@pytest.mark.parametrize("debiased", [False, True])
def test_published_properties(debiased):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 10))
    y = x[:, :6] + 0.3 * rng.normal(size=(40, 6))
    base = linear_cka(x, y, debiased)
    assert linear_cka(x, x, debiased) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    assert linear_cka(x @ q, y, debiased) == pytest.approx(base, abs=1e-10)  # orthogonal
    assert linear_cka(7.5 * x, y, debiased) == pytest.approx(base, abs=1e-10)  # isotropic scale
    a = rng.normal(size=(10, 10)) + np.diag(np.linspace(0.1, 10, 10))  # invertible, not orthogonal
    assert abs(linear_cka(x @ a, y, debiased) - base) > 1e-3
    assert abs(linear_cka(x @ a, x, debiased) - 1.0) > 1e-3


def test_small_and_constant_inputs():
    x = np.random.default_rng(2).normal(size=(3, 4))
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(x, x, debiased=True)
    assert linear_cka(x, x) == pytest.approx(1.0)  # the biased form works down to 2 examples
    const = np.ones((6, 3))
    y = np.random.default_rng(3).normal(size=(6, 2))
    for debiased in (False, True):
        assert linear_cka(const, y, debiased) == 0.0
        assert linear_cka(const, const, debiased) == 0.0
    with pytest.raises(ValueError, match="examples"):
        linear_cka(np.ones((5, 2)), np.ones((4, 2)))


def split(x, sizes):
    return np.split(x, np.cumsum(sizes)[:-1])


@pytest.mark.parametrize("debiased", [False, True])
def test_exact_accumulator_equals_full_set(debiased):
    rng = np.random.default_rng(4)
    feats = {
        "a": rng.normal(size=(30, 6)) + 5.0,
        "b": rng.normal(size=(30, 3, 2, 2)),
        "c": np.abs(rng.normal(size=(30, 8))) * 100,
    }  # ReLU-like, large mean
    feats["b"][:, 0] += feats["a"][:, :1, None]
    acc = CKAAccumulator(list(feats), debiased=debiased, method="exact")
    sizes = [5, 7, 3, 9, 6]
    for parts in zip(*(split(v, sizes) for v in feats.values()), strict=True):
        acc.update({k: torch.tensor(p) for k, p in zip(feats, parts, strict=True)})
    got = acc.result()
    for (i, a), (j, b) in itertools.product(enumerate(feats), repeat=2):
        assert got[i, j] == pytest.approx(linear_cka(feats[a], feats[b], debiased), abs=1e-9)


def test_minibatch_accumulator_is_sum_of_batch_hsic():
    """Nguyen et al.'s estimator: sum per-batch U-statistics, normalise at the end."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(24, 5))
    y = x[:, :3] + rng.normal(size=(24, 3))
    acc = CKAAccumulator(["x", "y"], debiased=True)
    for bx, by in zip(split(x, [6, 6, 6, 6]), split(y, [6, 6, 6, 6]), strict=True):
        acc.update({"x": torch.tensor(bx), "y": torch.tensor(by)})
    hxy = hxx = hyy = 0.0
    for bx, by in zip(split(x, [6] * 4), split(y, [6] * 4), strict=True):
        kx, ky = bx @ bx.T, by @ by.T
        hxy += np_hsic_u_statistic(kx, ky)
        hxx += np_hsic_u_statistic(kx, kx)
        hyy += np_hsic_u_statistic(ky, ky)
    assert acc.result()[0, 1] == pytest.approx(hxy / np.sqrt(hxx * hyy), abs=1e-10)
    # one batch holding the whole set is the full-set debiased CKA
    one = CKAAccumulator(["x", "y"], debiased=True)
    one.update({"x": torch.tensor(x), "y": torch.tensor(y)})
    assert one.result()[0, 1] == pytest.approx(linear_cka(x, y, True), abs=1e-10)


def test_minibatch_debiased_tracks_full_set_biased_does_not():
    """Debiased per-batch HSIC estimates the population value; biased per-batch HSIC keeps an
    O(1/B) bias however many examples are seen (documented in cka.py)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2000, 40))
    y = x[:, :5] + rng.normal(size=(2000, 5))
    full = linear_cka(x, y, debiased=True)
    results = {}
    for debiased in (False, True):
        acc = CKAAccumulator(["x", "y"], debiased=debiased)
        for i in range(0, 2000, 16):
            acc.update({"x": torch.tensor(x[i : i + 16]), "y": torch.tensor(y[i : i + 16])})
        results[debiased] = acc.result()[0, 1]
    assert results[True] == pytest.approx(full, abs=0.03)
    assert results[False] - linear_cka(x, y) > 0.1


def test_minibatch_small_batches_merge_or_drop():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(10, 3))
    acc = CKAAccumulator(["x"], debiased=True)
    for part in split(x, [4, 2, 4]):  # the 2 join the next batch
        acc.update({"x": torch.tensor(part)})
    assert (acc.batches, acc.examples) == (2, 10)
    acc = CKAAccumulator(["x"], debiased=True)
    for part in split(x, [4, 4, 2]):
        acc.update({"x": torch.tensor(part)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert acc.result()[0, 0] == pytest.approx(1.0)
    assert acc.dropped == 2 and caught


def test_accumulator_matrix_symmetric_unit_diagonal():
    rng = np.random.default_rng(8)
    acc = CKAAccumulator(["a", "b", "c"])
    for _ in range(3):
        a = torch.randn(8, 4, 2, 2)
        acc.update({"a": a, "b": a.flatten(1)[:, :5] + torch.randn(8, 5), "c": torch.randn(8, 3)})
    m = acc.result()
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert rng is not None
