"""MANGO's invertible layers: a normalizing flow over the tokens of two modalities.

Every layer maps `x` (B, N, D) to `(y, logdet)` with `logdet` (B,) = log|det dy/dx| and has an
exact `inverse(y) -> (x, -logdet)`. Tokens are laid out modality by modality: the first N/2 are
modality A (raster order), the last N/2 modality B, so N is even and the two modalities have the
same token count (RGB and depth features at one resolution do).

The invertible cross-attention (ICA) layer splits the tokens into X1 and X2 of equal size h,
keeps X1 and replaces X2 by A X2 with

    A = masked_softmax(LN(Linear(X1)) LN(Linear(X1))^T / d)       (h, h), -inf below the diagonal

A is upper triangular with a positive diagonal (softmax weights), hence invertible by a
triangular solve, and the Jacobian of X2 -> A X2 over its h*D entries is A (x) I_D, so
log|det| = D * sum_i log A_ii. The partitions decide which tokens attend to which:

- MMCA: X1 = one modality, X2 = the other (A->B and B->A are separate layers);
- IMCA: X1 = half of A's tokens and half of B's, X2 the complementary halves (four layers);
- LICA: a learned invertible token mixing W = P L (U + diag(s)) before an ICA over the halves of
  the mixed tokens, W^-1 after (the paper's eq. 10-11).

Rule for odd counts: a half-split of n tokens takes the first n//2 and the last n//2; when n is
odd the middle token belongs to neither half and passes through the layer unchanged.

The authors' public code has a wrong log-det factor and no training code; this module is the
reference, checked against autograd Jacobians in tests/test_flow.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError

PARTITIONS = ("mmca", "imca", "lica")
LOG_2PI = math.log(2 * math.pi)


class FlowLayer(nn.Module):
    """An invertible map of (B, N, D) tokens that reports its log-determinant."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns `(y, logdet)`, `logdet` of shape (B,)."""
        raise NotImplementedError

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Returns `(x, logdet)` of the inverse map, i.e. minus the forward log-det at x."""
        raise NotImplementedError


# --------------------------------------------------------------------------- partitions


def halves(
    n: int, device: torch.device | None = None, offset: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the first n//2, the last n//2 and (n odd) the middle token of `n` tokens."""
    m = n // 2
    idx = torch.arange(offset, offset + n, device=device)
    return idx[:m], idx[n - m :], idx[m : n - m]


def tokens_per_modality(num_tokens: int) -> int:
    if num_tokens % 2:
        raise OptionError(
            f"two modalities with equal token counts give an even count, got {num_tokens} tokens"
        )
    return num_tokens // 2


class Partition:
    """Says which tokens form X1 and X2 (equal sizes) and which pass through.

    `order(N)` returns `(perm, h)`: `x[:, perm]` is `[X1 (h tokens), X2 (h tokens), rest]`.
    Merging applies the inverse permutation, so every token goes back where it came from.
    """

    name = "partition"

    def order(self, num_tokens: int, device: torch.device | None = None) -> tuple[Tensor, int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Halves(Partition):
    """X1 = the first half of the tokens, X2 = the last half (LICA, after mixing)."""

    name = "halves"

    def order(self, num_tokens, device=None):
        first, last, middle = halves(num_tokens, device)
        return torch.cat([first, last, middle]), len(first)


class ModalityToModality(Partition):
    """MMCA: X1 = all tokens of the `source` modality (0 = A, 1 = B), X2 = the other's."""

    def __init__(self, source: int):
        self.source = source
        self.name = "mmca_" + ("a2b" if source == 0 else "b2a")

    def order(self, num_tokens, device=None):
        n = tokens_per_modality(num_tokens)
        a = torch.arange(n, device=device)
        x1, x2 = (a, a + n) if self.source == 0 else (a + n, a)
        return torch.cat([x1, x2]), n


class InterModality(Partition):
    """IMCA: X1 = half `a_half` of A's tokens and half `b_half` of B's (0 = first, 1 = last),
    X2 = the two complementary halves; with n odd each modality's middle token passes."""

    def __init__(self, a_half: int, b_half: int):
        self.a_half, self.b_half = a_half, b_half
        self.name = f"imca_a{a_half + 1}b{b_half + 1}"

    def order(self, num_tokens, device=None):
        n = tokens_per_modality(num_tokens)
        a1, a2, am = halves(n, device)
        b1, b2, bm = halves(n, device, offset=n)
        a, b = (a1, a2), (b1, b2)
        x1 = torch.cat([a[self.a_half], b[self.b_half]])
        x2 = torch.cat([a[1 - self.a_half], b[1 - self.b_half]])
        return torch.cat([x1, x2, am, bm]), len(x1)


IMCA_HALVES = ((0, 0), (0, 1), (1, 0), (1, 1))


# --------------------------------------------------------------------------- layers


class InvertibleCrossAttention(FlowLayer):
    """ICA: Y1 = X1, Y2 = A X2 with A the upper-triangular masked softmax attention of X1.

    Args:
        dim: features per token (D).
        partition: which tokens form X1 and X2.
        attn_dim: width of the query/key projections.
    """

    def __init__(self, dim: int, partition: Partition, attn_dim: int = 64):
        super().__init__()
        self.partition = partition
        self.to_q = nn.Linear(dim, attn_dim)
        self.to_k = nn.Linear(dim, attn_dim)
        self.norm_q = nn.LayerNorm(attn_dim)
        # no key bias: it adds q_i.b to a whole row of logits, which softmax ignores
        self.norm_k = nn.LayerNorm(attn_dim, bias=False)
        # d = exp(log_temperature) > 0, starting at the usual sqrt(width)
        self.log_temperature = nn.Parameter(torch.tensor(0.5 * math.log(attn_dim)))
        # Keys start equal to queries, so q_i.k_i = |q_i|^2 dominates each row and A starts near
        # the identity: the flow starts near the identity map (like a zero-initialised coupling)
        # and the triangular solve is well conditioned. The two projections then train freely.
        with torch.no_grad():
            self.to_k.weight.copy_(self.to_q.weight)
            self.to_k.bias.copy_(self.to_q.bias)

    def extra_repr(self) -> str:
        return f"partition={self.partition}"

    def attention(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        """A (B, h, h) and sum_i log A_ii (B,), from log_softmax so tiny diagonals stay exact."""
        q = self.norm_q(self.to_q(x1))
        k = self.norm_k(self.to_k(x1))
        logits = q @ k.transpose(-1, -2) / self.log_temperature.exp()  # (B, h, h)
        h = x1.shape[1]
        below = torch.ones(h, h, dtype=torch.bool, device=x1.device).tril(-1)
        # a true masked softmax: exp(-inf) = 0 exactly, so A is exactly upper triangular
        log_a = logits.masked_fill(below, float("-inf")).log_softmax(dim=-1)
        return log_a.exp(), log_a.diagonal(dim1=-2, dim2=-1).sum(-1)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        perm, h = self.partition.order(x.shape[1], x.device)
        xp = x.index_select(1, perm)  # (B, N, D) reordered as [X1, X2, rest]
        return xp[:, :h], xp[:, h : 2 * h], xp[:, 2 * h :], perm, h

    @staticmethod
    def _merge(parts: Sequence[Tensor], perm: Tensor) -> Tensor:
        return torch.cat(list(parts), dim=1).index_select(1, torch.argsort(perm))

    def forward(self, x):
        x1, x2, rest, perm, h = self._split(x)
        if h == 0:  # empty halves (IMCA with one token per modality): the identity
            return x, x.new_zeros(x.shape[0])
        a, log_diag = self.attention(x1)
        y2 = a @ x2
        return self._merge([x1, y2, rest], perm), x.shape[-1] * log_diag

    def inverse(self, y):
        y1, y2, rest, perm, h = self._split(y)
        if h == 0:
            return y, y.new_zeros(y.shape[0])
        a, log_diag = self.attention(y1)  # Y1 = X1, so A is recomputed exactly
        x2 = torch.linalg.solve_triangular(a, y2, upper=True)
        return self._merge([y1, x2, rest], perm), -y.shape[-1] * log_diag


class TokenMixing(FlowLayer):
    """Learned invertible mixing of the N tokens, W = P L (U + diag(s)) (Glow's LU form).

    `y = W x` for x (B, N, D): every feature column is mixed by the same N x N matrix, so the
    Jacobian is W (x) I_D and log|det| = D * sum log|s|. P is a fixed permutation, L unit lower
    triangular, U strictly upper triangular; s = sign * exp(log_scale) keeps s away from 0.

    Args:
        num_tokens: N; W is N x N, so the token count is fixed when the layer is built.
    """

    def __init__(self, num_tokens: int):
        super().__init__()
        n = num_tokens
        # Glow's init: the LU factors of a random rotation (|det W| = 1 at the start)
        w = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(w)
        s = upper.diagonal()
        # P as an index: (P x)[i] = x[perm[i]], cheaper than an N x N matmul
        self.register_buffer("perm", p.argmax(dim=1))
        self.register_buffer("sign", s.sign().float())
        self.register_buffer("lower_mask", torch.ones(n, n).tril(-1))
        self.register_buffer("upper_mask", torch.ones(n, n).triu(1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(upper.float())
        self.log_scale = nn.Parameter(s.abs().log().float())

    @property
    def num_tokens(self) -> int:
        return self.perm.numel()

    def factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.num_tokens, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.upper_mask + torch.diag(self.sign * self.log_scale.exp())
        return lower, upper

    def _check(self, x: Tensor) -> None:
        if x.shape[1] != self.num_tokens:
            raise ValueError(f"token mixing built for {self.num_tokens} tokens, got {x.shape[1]}")

    def logdet(self, x: Tensor) -> Tensor:
        return (x.shape[-1] * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x):
        self._check(x)
        lower, upper = self.factors()
        y = (lower @ (upper @ x)).index_select(1, self.perm)  # (B, N, D)
        return y, self.logdet(x)

    def inverse(self, y):
        self._check(y)
        lower, upper = self.factors()
        z = y.index_select(1, torch.argsort(self.perm))  # P^T y
        z = torch.linalg.solve_triangular(lower, z, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, z, upper=True)
        return x, -self.logdet(y)


class LearnableInterModality(FlowLayer):
    """LICA: mix the tokens with W, ICA over the halves of the mixed tokens, unmix with W^-1.

    The layer is W^-1 . ICA . W (acting on the token axis of every feature), so its Jacobian is
    (W^-1 (x) I_D) J_ica (W (x) I_D) and det = det(W)^-D det(J_ica) det(W)^D = det(J_ica): the
    D * sum log|s| of the mixing (the paper's stated log-det, which is that of X' = W X alone)
    cancels against the unmixing merge. W still shapes which tokens attend to which.

    Args:
        dim: features per token.
        num_tokens: N (fixed, since W is N x N).
        attn_dim: query/key width of the ICA.
    """

    def __init__(self, dim: int, num_tokens: int, attn_dim: int = 64):
        super().__init__()
        self.mixing = TokenMixing(num_tokens)
        self.attention = InvertibleCrossAttention(dim, Halves(), attn_dim)

    def forward(self, x):
        mixed, _ = self.mixing(x)
        attended, logdet = self.attention(mixed)
        y, _ = self.mixing.inverse(attended)
        return y, logdet  # the mixing's log-dets cancel exactly (see the class docstring)

    def inverse(self, y):
        mixed, _ = self.mixing(y)
        restored, logdet = self.attention.inverse(mixed)
        x, _ = self.mixing.inverse(restored)
        return x, logdet


class AffineCoupling(FlowLayer):
    """RealNVP affine coupling over features: one half of every token's features is scaled and
    shifted by a network of the other half.

    The conditioner at a spatial position sees the kept halves of *both* modalities' tokens at
    that position (still a valid coupling: kept halves pass through unchanged), so on its own
    (the coupling-only ablation) the flow still fuses the modalities. log-scale is
    `bound * tanh(raw / bound)`, so one layer scales by at most e^bound.

    Args:
        dim: features per token.
        hidden: conditioner width.
        flip: change the first half (conditioned on the second) instead of the second.
        log_scale_bound: the tanh bound of the log-scale.
    """

    def __init__(
        self, dim: int, hidden: int = 128, flip: bool = False, log_scale_bound: float = 2.0
    ):
        super().__init__()
        if dim < 2:
            raise OptionError(f"affine coupling needs at least 2 features per token, got {dim}")
        self.dim, self.flip, self.bound = dim, flip, log_scale_bound
        self.split = dim // 2
        kept, changed = (dim - self.split, self.split) if flip else (self.split, dim - self.split)
        self.changed = changed
        self.net = nn.Sequential(
            nn.Linear(2 * kept, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 2 * 2 * changed),
        )
        # zero last layer: the coupling starts as the identity (RealNVP / Glow practice)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def extra_repr(self) -> str:
        return f"flip={self.flip}, log_scale_bound={self.bound}"

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x[..., : self.split], x[..., self.split :]
        return (second, first) if self.flip else (first, second)  # (kept, changed)

    def _join(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat([changed, kept] if self.flip else [kept, changed], dim=-1)

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        b, num, k = kept.shape
        n = tokens_per_modality(num)
        # (B, 2n, k) -> (B, n, 2k): each position sees both modalities' kept features
        per_position = kept.view(b, 2, n, k).transpose(1, 2).reshape(b, n, 2 * k)
        out = self.net(per_position).view(b, n, 2, 2, self.changed)  # (B, n, M, {s, t}, c)
        out = out.transpose(1, 2).reshape(b, num, 2, self.changed)  # back to token order
        log_s = self.bound * torch.tanh(out[:, :, 0] / self.bound)
        return log_s, out[:, :, 1]

    def forward(self, x):
        kept, changed = self._parts(x)
        log_s, shift = self._scale_shift(kept)
        y = self._join(kept, changed * log_s.exp() + shift)
        return y, log_s.sum(dim=(1, 2))

    def inverse(self, y):
        kept, changed = self._parts(y)
        log_s, shift = self._scale_shift(kept)
        x = self._join(kept, (changed - shift) * torch.exp(-log_s))
        return x, -log_s.sum(dim=(1, 2))


class SequentialFlow(FlowLayer):
    """Flow layers applied in order: the inverse runs them backwards, the log-dets add up."""

    def sequence(self) -> nn.ModuleList:
        return self.layers

    def forward(self, x):
        logdet = x.new_zeros(x.shape[0])
        for layer in self.sequence():
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y):
        logdet = y.new_zeros(y.shape[0])
        for layer in reversed(self.sequence()):
            y, ld = layer.inverse(y)
            logdet = logdet + ld
        return y, logdet


class MangoBlock(SequentialFlow):
    """One MANGO block: 2 MMCA (A->B, B->A) + 4 IMCA + 2 LICA layers + 1 affine coupling.

    Args:
        dim: features per token.
        num_tokens: total tokens N (both modalities); needed only by LICA, whose mixing is N x N.
        partitions: which ICA families to include, a subset of ("mmca", "imca", "lica").
        coupling: include the affine coupling.
        attn_dim: ICA query/key width.
        hidden: coupling conditioner width.
        flip: which feature half the coupling changes (alternated across blocks).
        log_scale_bound: the coupling's tanh bound.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int | None = None,
        partitions: Sequence[str] = PARTITIONS,
        coupling: bool = True,
        attn_dim: int = 64,
        hidden: int = 128,
        flip: bool = False,
        log_scale_bound: float = 2.0,
    ):
        super().__init__()
        unknown = sorted(set(partitions) - set(PARTITIONS))
        if unknown:
            raise OptionError(f"unknown partitions {unknown}; known: {', '.join(PARTITIONS)}")
        layers: list[FlowLayer] = []
        if "mmca" in partitions:
            layers += [
                InvertibleCrossAttention(dim, ModalityToModality(s), attn_dim) for s in (0, 1)
            ]
        if "imca" in partitions:
            layers += [
                InvertibleCrossAttention(dim, InterModality(a, b), attn_dim) for a, b in IMCA_HALVES
            ]
        if "lica" in partitions:
            if num_tokens is None:
                raise OptionError("LICA mixes a fixed number of tokens: give num_tokens")
            tokens_per_modality(num_tokens)
            layers += [LearnableInterModality(dim, num_tokens, attn_dim) for _ in range(2)]
        if coupling:
            layers.append(AffineCoupling(dim, hidden, flip=flip, log_scale_bound=log_scale_bound))
        if not layers:
            raise OptionError("a flow block needs at least one partition or the coupling")
        self.layers = nn.ModuleList(layers)


class MangoFlow(SequentialFlow):
    """The bijection G: `blocks` MANGO blocks, with a standard normal prior on the output.

    Args:
        dim: features per token.
        blocks: number of blocks L (the paper uses 12).
        num_tokens: total tokens N, required with LICA.
        **block_options: `partitions`, `coupling`, `attn_dim`, `hidden`, `log_scale_bound`.
    """

    def __init__(self, dim: int, blocks: int = 12, num_tokens: int | None = None, **block_options):
        super().__init__()
        if blocks < 1:
            raise OptionError(f"the flow needs at least one block, got {blocks}")
        self.dim = dim
        self.blocks = nn.ModuleList(
            MangoBlock(dim, num_tokens, flip=bool(i % 2), **block_options) for i in range(blocks)
        )

    def sequence(self) -> nn.ModuleList:
        return self.blocks

    def log_prob(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, log p(x))`, log p(x) = log N(z; 0, I) + log|det dz/dx| per item (B,)."""
        z, logdet = self(x)
        return z, standard_normal_log_prob(z) + logdet


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """Sum over all but the batch axis of log N(z; 0, 1)."""
    return -0.5 * (z.pow(2) + LOG_2PI).flatten(1).sum(-1)


def nll_per_dim(log_prob: Tensor, dims: int) -> Tensor:
    """Negative log-likelihood per dimension in nats (divide by ln 2 for bits per dim)."""
    return -log_prob / dims


def bits_per_dim(log_prob: Tensor, dims: int) -> Tensor:
    return nll_per_dim(log_prob, dims) / math.log(2)


__all__ = [
    "AffineCoupling",
    "FlowLayer",
    "Halves",
    "InterModality",
    "InvertibleCrossAttention",
    "LearnableInterModality",
    "MangoBlock",
    "MangoFlow",
    "ModalityToModality",
    "Partition",
    "TokenMixing",
    "bits_per_dim",
    "nll_per_dim",
    "standard_normal_log_prob",
]
