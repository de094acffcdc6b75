"""Linear centred kernel alignment (CKA; Kornblith et al., ICML 2019), full and streaming.

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   K = X X^T,  L = Y Y^T

for X (n examples, p features) and Y (n, q); conv features are flattened per example.

Two HSIC estimators:
    biased    tr(K H L H) / (n-1)^2 with H the centring matrix; equal to the feature-space form
              ||X_c^T Y_c||_F^2 when X, Y are column-centred.
    debiased  the U-statistic of Song et al. (2012), needs n >= 4:
              [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1)/((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)),
              K~ = K with its diagonal zeroed.

Streaming over a probe set (`CKAAccumulator`) comes in two forms:
    "minibatch" (Nguyen et al., ICLR 2021): per batch, the HSIC of every pair of features from
        the batch's B x B Gram matrices; the sums are normalised once at the end. Memory O(B^2)
        per feature whatever the feature size or probe size. With the debiased HSIC each batch
        term is an unbiased estimate of the population HSIC, so the result is a consistent
        estimate of population CKA, but it is *not* equal to the full-set debiased CKA
        (cross-batch pairs never meet). With the biased HSIC it is biased by O(1/B) for ever.
    "exact": accumulates the feature-space sufficient statistics (X^T Y, column sums, squared
        row norms and their cross terms), from which the full-set biased *and* debiased HSIC
        follow exactly. Memory O(p q) per pair, independent of n: for small or pooled features.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

MIN_DEBIASED = 4  # the U-statistic divides by n(n-3)


def as_matrix(x: Tensor | np.ndarray, name: str = "x") -> Tensor:
    """A float64 `(n, p)` tensor; arrays of more dimensions are flattened per example."""
    t = torch.as_tensor(x)
    if t.dim() < 2:
        raise ValueError(f"{name}: expected (examples, features), got shape {tuple(t.shape)}")
    return t.detach().reshape(t.shape[0], -1).to(torch.float64)


def gram_linear(x: Tensor) -> Tensor:
    """`(n, p)` -> `(n, n)` linear-kernel Gram matrix."""
    return x @ x.T


def center_gram(k: Tensor) -> Tensor:
    """H K H: subtract row and column means, add back the grand mean."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic_biased(k: Tensor, l: Tensor) -> Tensor:
    n = k.shape[0]
    return (center_gram(k) * center_gram(l)).sum() / (n - 1) ** 2


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:
    """Song et al.'s U-statistic on Gram matrices (the diagonal is ignored)."""
    n = k.shape[0]
    if n < MIN_DEBIASED:
        raise ValueError(f"debiased HSIC needs at least {MIN_DEBIASED} examples, got {n}")
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    term1 = (k * l).sum()
    term2 = k.sum() * l.sum() / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (k.sum(1) @ l.sum(1))
    return (term1 + term2 - term3) / (n * (n - 3))


def cka_from_hsic(hxy: float, hxx: float, hyy: float) -> float:
    """Normalise; a constant (zero-variance) feature set has CKA 0 with anything, not NaN.

    The debiased self-HSIC can come out slightly negative by sampling error; the product is
    clamped at 0 so such a set also reads as 0.
    """
    denom = hxx * hyy
    if not denom > 0 or not math.isfinite(denom):
        return 0.0
    return float(hxy / math.sqrt(denom))


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same examples.

    Args:
        x: `(n, p)` array or tensor (more dims are flattened per example).
        y: `(n, q)`, the same n examples in the same order.
        debiased: use the unbiased HSIC estimator (needs n >= 4).

    Returns:
        CKA in [0, 1] (the debiased form can be slightly outside by sampling error); 0 when
        either set is constant over examples.

    Raises:
        ValueError: different example counts, or fewer than 4 examples for the debiased form.
    """
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples, y has {y.shape[0]}")
    if debiased and x.shape[0] < MIN_DEBIASED:
        raise ValueError(f"debiased CKA needs at least {MIN_DEBIASED} examples, got {x.shape[0]}")
    # the feature-space form is cheaper when features are fewer than examples
    if max(x.shape[1], y.shape[1]) < x.shape[0]:
        return feature_space_linear_cka(x, y, debiased)
    return gram_linear_cka(x, y, debiased)


def gram_linear_cka(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, debiased: bool = False
) -> float:
    """Linear CKA through n x n Gram matrices (cost O(n^2 (p + q)))."""
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    # centring the features first changes nothing mathematically but avoids cancellation
    x, y = x - x.mean(0), y - y.mean(0)
    k, l = gram_linear(x), gram_linear(y)
    hsic = hsic_unbiased if debiased else hsic_biased
    return cka_from_hsic(float(hsic(k, l)), float(hsic(k, k)), float(hsic(l, l)))


def feature_space_linear_cka(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, debiased: bool = False
) -> float:
    """Linear CKA from feature-space products (cost O(n p q)); same value as the Gram form."""
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    x, y = x - x.mean(0), y - y.mean(0)
    sx, sy = FeatureStats.of(x), FeatureStats.of(y)
    hxy = hsic_from_stats(sx, sy, CrossStats.of(x, y), debiased)
    hxx = hsic_from_stats(sx, sx, CrossStats.of(x, x), debiased)
    hyy = hsic_from_stats(sy, sy, CrossStats.of(y, y), debiased)
    return cka_from_hsic(hxy, hxx, hyy)


class FeatureStats:
    """Sufficient statistics of one feature set X `(n, p)` for the exact streaming HSIC.

    Attributes: `n` examples, `sum` = sum_i x_i `(p,)`, `sq` = sum_i ||x_i||^2. All are sums,
    so the statistics of a set are those of its batches added up.
    """

    def __init__(self, n: int, total: Tensor, sq: Tensor):
        self.n, self.sum, self.sq = n, total, sq

    @classmethod
    def of(cls, x: Tensor) -> FeatureStats:
        return cls(x.shape[0], x.sum(0), (x * x).sum())

    def __add__(self, other: FeatureStats) -> FeatureStats:
        return FeatureStats(self.n + other.n, self.sum + other.sum, self.sq + other.sq)


class CrossStats:
    """Cross statistics of two feature sets X `(n, p)`, Y `(n, q)` over the same examples.

    Attributes: `xy` = X^T Y `(p, q)`; `x_ny` = sum_i x_i ||y_i||^2 `(p,)`;
    `y_nx` = sum_i y_i ||x_i||^2 `(q,)`; `nn` = sum_i ||x_i||^2 ||y_i||^2. Sums, like
    `FeatureStats`.
    """

    def __init__(self, xy: Tensor, x_ny: Tensor, y_nx: Tensor, nn: Tensor):
        self.xy, self.x_ny, self.y_nx, self.nn = xy, x_ny, y_nx, nn

    @classmethod
    def of(cls, x: Tensor, y: Tensor) -> CrossStats:
        nx, ny = (x * x).sum(1), (y * y).sum(1)  # (n,)
        return cls(x.T @ y, x.T @ ny, y.T @ nx, nx @ ny)

    def __add__(self, other: CrossStats) -> CrossStats:
        return CrossStats(
            self.xy + other.xy, self.x_ny + other.x_ny, self.y_nx + other.y_nx, self.nn + other.nn
        )


def hsic_from_stats(sx: FeatureStats, sy: FeatureStats, cross: CrossStats, debiased: bool) -> float:
    """The full-set HSIC of X and Y from their feature-space statistics.

    Expands the Gram-form estimators with K = X X^T, L = Y Y^T, so no n x n matrix is formed.
    """
    n = sx.n
    if not debiased:
        # ||X_c^T Y_c||^2 / (n-1)^2 with X_c^T Y_c = X^T Y - s_x s_y^T / n
        centred = cross.xy - torch.outer(sx.sum, sy.sum) / n
        return float((centred * centred).sum() / (n - 1) ** 2)
    # tr(K~ L~) = ||X^T Y||^2 - sum_i |x_i|^2 |y_i|^2
    trace = (cross.xy * cross.xy).sum() - cross.nn
    # 1^T K~ 1 = |s_x|^2 - sum_i |x_i|^2
    ksum = sx.sum @ sx.sum - sx.sq
    lsum = sy.sum @ sy.sum - sy.sq
    # 1^T K~ L~ 1 = sum_i (x_i.s_x - |x_i|^2)(y_i.s_y - |y_i|^2)
    row = sx.sum @ cross.xy @ sy.sum - sx.sum @ cross.x_ny - sy.sum @ cross.y_nx + cross.nn
    value = (trace + ksum * lsum / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * row) / (n * (n - 3))
    return float(value)


def batch_gram(f: Tensor) -> Tensor:
    """`(B, ...)` -> float64 `(B, B)` Gram of the batch-centred, flattened features.

    Both HSIC estimators are invariant to translating the features, and centring first keeps
    the Gram small enough to form in the features' own precision (fast float32 matmul on a GPU)
    before the HSIC sums go to float64.
    """
    x = f.detach().reshape(f.shape[0], -1)
    if not x.is_floating_point():
        x = x.float()
    x = x - x.mean(0)
    return (x @ x.T).to(torch.float64)


def batch_hsic_matrix(features: Sequence[Tensor], debiased: bool) -> Tensor:
    """HSIC of every pair of features of one batch, from their Gram matrices, in one matmul.

    Args:
        features: L tensors `(B, ...)` over the same B examples.
        debiased: unbiased (needs B >= 4) or biased estimator.

    Returns:
        `(L, L)` float64 matrix of HSIC values.
    """
    grams = torch.stack([batch_gram(f) for f in features])  # (L, B, B)
    n = grams.shape[-1]
    if debiased:
        if n < MIN_DEBIASED:
            raise ValueError(f"debiased HSIC needs batches of at least {MIN_DEBIASED} examples")
        grams = grams * (1 - torch.eye(n, dtype=grams.dtype, device=grams.device))
        flat = grams.flatten(1)  # (L, B*B)
        rows = grams.sum(2)  # (L, B)   K~ 1
        sums = rows.sum(1)  # (L,)      1^T K~ 1
        value = (
            flat @ flat.T
            + torch.outer(sums, sums) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * rows @ rows.T
        )
        return value / (n * (n - 3))
    centred = (
        grams
        - grams.mean(1, keepdim=True)
        - grams.mean(2, keepdim=True)
        + grams.mean((1, 2), keepdim=True)
    )
    flat = centred.flatten(1)
    return flat @ flat.T / (n - 1) ** 2


class CKAAccumulator:
    """CKA of every pair of named features over a probe set, streamed batch by batch.

    Args:
        names: the feature keys to compare (every pair, both orders, is computed).
        debiased: unbiased HSIC (recommended for streaming; batches need >= 4 examples).
        method: "minibatch" (Nguyen et al.; memory O(B^2) per feature) or "exact" (full-set
            value via feature-space statistics; memory O(p q) per pair).

    Batches of fewer than 4 examples (e.g. a loader's last batch) are held back and merged into
    the next one under the debiased minibatch form; one still pending at `result()` is dropped
    with a warning (`dropped` counts the examples).
    """

    def __init__(self, names: Sequence[str], debiased: bool = True, method: str = "minibatch"):
        if method not in ("minibatch", "exact"):
            raise ValueError(f"method must be 'minibatch' or 'exact', got {method!r}")
        self.names = list(names)
        self.debiased = debiased
        self.method = method
        self.batches = 0
        self.examples = 0
        self.dropped = 0
        self._pending: dict[str, Tensor] | None = None
        self._hsic: Tensor | None = None  # (L, L) sums, minibatch form
        self._stats: dict[int, FeatureStats] = {}  # exact form, per feature
        self._cross: dict[tuple[int, int], CrossStats] = {}  # exact form, per pair (i <= j)
        self._shift: list[Tensor] = []  # exact form, per feature

    def update(self, features: Mapping[str, Tensor]) -> None:
        """Add one batch: every name maps to a `(B, ...)` tensor over the same B examples."""
        missing = [n for n in self.names if n not in features]
        if missing:
            raise KeyError(f"batch lacks features {missing}")
        batch = {n: as_matrix(features[n], n) for n in self.names}
        sizes = {t.shape[0] for t in batch.values()}
        if len(sizes) != 1:
            raise ValueError(f"features disagree on the batch size: {sizes}")
        if self.method == "exact":
            self._update_exact(batch)
            return
        if self._pending is not None:
            batch = {n: torch.cat([self._pending[n], batch[n]]) for n in self.names}
            self._pending = None
        b = next(iter(batch.values())).shape[0]
        if self.debiased and b < MIN_DEBIASED:
            self._pending = batch
            return
        if b < 2:  # biased HSIC of one example is 0/0
            self._pending = batch
            return
        h = batch_hsic_matrix([batch[n] for n in self.names], self.debiased)
        self._hsic = h if self._hsic is None else self._hsic + h
        self.batches += 1
        self.examples += b

    def _update_exact(self, batch: dict[str, Tensor]) -> None:
        # Both estimators are invariant to translating a feature set, so every batch is shifted
        # by the first batch's mean: the raw sums of non-negative (ReLU) features would
        # otherwise cancel catastrophically in the final expansion.
        if not self._shift:
            self._shift = [batch[n].mean(0) for n in self.names]
        xs = [batch[n] - shift for n, shift in zip(self.names, self._shift, strict=True)]
        for i, x in enumerate(xs):
            add = FeatureStats.of(x)
            self._stats[i] = add if i not in self._stats else self._stats[i] + add
            for j in range(i, len(xs)):
                cross = CrossStats.of(x, xs[j])
                self._cross[i, j] = (
                    cross if (i, j) not in self._cross else (self._cross[i, j] + cross)
                )
        self.batches += 1
        self.examples += xs[0].shape[0]

    def hsic(self) -> Tensor:
        """The `(L, L)` matrix of accumulated HSIC values (sums over batches, or full-set)."""
        if self.method == "exact":
            return self._exact_hsic()
        if self._pending is not None:
            self.dropped += next(iter(self._pending.values())).shape[0]
            warnings.warn(
                f"CKA: {self.dropped} trailing examples too few for a batch were dropped",
                stacklevel=2,
            )
            self._pending = None
        if self._hsic is None:
            raise ValueError("CKA accumulator saw no usable batch")
        return self._hsic

    def _exact_hsic(self) -> Tensor:
        n = self.examples
        if n < (MIN_DEBIASED if self.debiased else 2):
            raise ValueError(
                f"CKA needs at least {MIN_DEBIASED if self.debiased else 2} examples, saw {n}"
            )
        size = len(self.names)
        out = torch.zeros(size, size, dtype=torch.float64)
        for (i, j), cross in self._cross.items():
            out[i, j] = out[j, i] = hsic_from_stats(
                self._stats[i], self._stats[j], cross, self.debiased
            )
        return out

    def result(self) -> np.ndarray:
        """`(L, L)` CKA matrix in `names` order (NumPy, float64; constant features give 0)."""
        h = self.hsic().cpu()
        size = len(self.names)
        out = np.zeros((size, size))
        for i in range(size):
            for j in range(size):
                out[i, j] = cka_from_hsic(float(h[i, j]), float(h[i, i]), float(h[j, j]))
        return out
