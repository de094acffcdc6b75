"""MANGO flow layers: exact inverses, log-determinants equal to autograd Jacobians, partitions.

Every sub-network is perturbed away from its (near-)identity initialisation, so the checks see a
genuinely non-trivial map. Sizes are tiny: full Jacobians of a few dozen dimensions.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from fusescope.models.flow import (
    IMCA_HALVES,
    AffineCoupling,
    Halves,
    InterModality,
    InvertibleCrossAttention,
    LearnableInterModality,
    MangoBlock,
    MangoFlow,
    ModalityToModality,
    TokenMixing,
    bits_per_dim,
    nll_per_dim,
    standard_normal_log_prob,
)

D = 4  # features per token
N_ODD = 6  # 2 modalities x 3 tokens: odd per-modality count, exercises the middle-token rule


def perturbed(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """float64 copy with every parameter moved off its initialisation."""
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def make_layers(n_tokens: int = N_ODD, dim: int = D) -> dict[str, torch.nn.Module]:
    layers = {
        "ica_halves": InvertibleCrossAttention(dim, Halves(), attn_dim=5),
        "mmca_a2b": InvertibleCrossAttention(dim, ModalityToModality(0), attn_dim=5),
        "mmca_b2a": InvertibleCrossAttention(dim, ModalityToModality(1), attn_dim=5),
        **{
            f"imca_{a}{b}": InvertibleCrossAttention(dim, InterModality(a, b), attn_dim=5)
            for a, b in IMCA_HALVES
        },
        "token_mixing": TokenMixing(n_tokens),
        "lica": LearnableInterModality(dim, n_tokens, attn_dim=5),
        "coupling": AffineCoupling(dim, hidden=8),
        "coupling_flip": AffineCoupling(dim + 1, hidden=8, flip=True),
        "block": MangoBlock(dim, n_tokens, attn_dim=5, hidden=8),
        "flow": MangoFlow(dim, blocks=2, num_tokens=n_tokens, attn_dim=5, hidden=8),
    }
    return {k: perturbed(v) for k, v in layers.items()}


LAYER_NAMES = list(make_layers())


def feature_dim(name: str) -> int:
    return D + 1 if name == "coupling_flip" else D


@pytest.fixture(params=LAYER_NAMES)
def layer_and_input(request):
    layer = make_layers()[request.param]
    x = torch.randn(3, N_ODD, feature_dim(request.param), dtype=torch.float64)
    return request.param, layer, x


def test_inverse_of_forward_is_identity(layer_and_input):
    _, layer, x = layer_and_input
    y, _ = layer(x)
    assert not torch.allclose(y, x, atol=1e-3), "perturbed layer should not be the identity"
    x_back, _ = layer.inverse(y)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)
    # and the other way round
    y_back, _ = layer(layer.inverse(x)[0])
    torch.testing.assert_close(y_back, x, atol=1e-5, rtol=0)


def test_logdet_equals_slogdet_of_jacobian(layer_and_input):
    _, layer, x = layer_and_input
    _, logdet = layer(x)
    assert logdet.shape == (x.shape[0],)
    for i in range(x.shape[0]):  # one Jacobian per item: (N*D, N*D)
        item = x[i : i + 1]
        jac = jacobian(lambda t, s=item.shape: layer(t.view(s))[0].flatten(), item.flatten())
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabsdet, atol=1e-8, rtol=1e-8)


def test_forward_and_inverse_logdets_cancel(layer_and_input):
    _, layer, x = layer_and_input
    y, fwd = layer(x)
    _, inv = layer.inverse(y)
    torch.testing.assert_close(fwd + inv, torch.zeros_like(fwd), atol=1e-8, rtol=0)


def test_every_parameter_gets_a_gradient(layer_and_input):
    name, layer, x = layer_and_input
    y, logdet = layer(x)
    (standard_normal_log_prob(y) + logdet).sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None, f"{name}: {pname} has no gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has a zero gradient"
        assert torch.isfinite(p.grad).all()


def test_batch_items_are_independent(layer_and_input):
    _, layer, x = layer_and_input
    y, logdet = layer(x)
    for i in range(x.shape[0]):
        yi, ldi = layer(x[i : i + 1])
        torch.testing.assert_close(yi, y[i : i + 1], atol=1e-10, rtol=0)
        torch.testing.assert_close(ldi, logdet[i : i + 1], atol=1e-10, rtol=0)


def test_log_likelihood_same_in_train_and_eval():
    flow = perturbed(MangoFlow(D, blocks=2, num_tokens=N_ODD, attn_dim=5, hidden=8))
    x = torch.randn(2, N_ODD, D, dtype=torch.float64)
    _, lp_train = flow.train().log_prob(x)
    _, lp_eval = flow.eval().log_prob(x)
    torch.testing.assert_close(lp_train, lp_eval, atol=0, rtol=0)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_large_inputs_stay_finite(name):
    layer = make_layers()[name].float()
    x = 1e3 * torch.randn(2, N_ODD, feature_dim(name))
    x.requires_grad_(True)
    y, logdet = layer(x)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    (standard_normal_log_prob(y) + logdet).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    x_back, _ = layer.inverse(y.detach())
    assert torch.isfinite(x_back).all()


# --------------------------------------------------------------------- ICA specifics


def test_attention_is_upper_triangular_with_positive_diagonal():
    layer = perturbed(InvertibleCrossAttention(D, Halves(), attn_dim=5))
    x1 = torch.randn(2, 7, D, dtype=torch.float64)
    a, log_diag = layer.attention(x1)
    assert (a.tril(-1) == 0).all(), "a true masked softmax is exactly zero below the diagonal"
    diag = a.diagonal(dim1=-2, dim2=-1)
    assert (diag > 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 7, dtype=torch.float64))
    torch.testing.assert_close(log_diag, diag.log().sum(-1))


def test_ica_logdet_is_feature_count_times_log_diagonal():
    layer = perturbed(InvertibleCrossAttention(D, ModalityToModality(0), attn_dim=5))
    x = torch.randn(2, 8, D, dtype=torch.float64)
    _, logdet = layer(x)
    a, _ = layer.attention(x[:, :4])  # X1 = modality A's 4 tokens
    torch.testing.assert_close(logdet, D * a.diagonal(dim1=-2, dim2=-1).log().sum(-1))


def test_ica_starts_near_identity():
    """Keys start equal to queries: A is diagonal-dominant, the flow near the identity."""
    layer = InvertibleCrossAttention(64, Halves(), attn_dim=64).double()
    a, _ = layer.attention(torch.randn(1, 32, 64, dtype=torch.float64))
    assert a.diagonal(dim1=-2, dim2=-1).min() > 0.5


def test_temperature_is_positive_and_learnable():
    layer = InvertibleCrossAttention(D, Halves(), attn_dim=5)
    with torch.no_grad():
        layer.log_temperature.fill_(-20.0)  # d = e^-20 > 0: sharp attention, still invertible
    x = torch.randn(2, 6, D)
    y, _ = layer(x)
    torch.testing.assert_close(layer.inverse(y)[0], x, atol=1e-4, rtol=0)


# --------------------------------------------------------------------- partitions


def split_sets(partition, n_tokens):
    perm, h = partition.order(n_tokens)
    return perm, set(perm[:h].tolist()), set(perm[h : 2 * h].tolist()), set(perm[2 * h :].tolist())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_partitions_are_permutations_with_equal_halves(n):
    parts = [
        Halves(),
        ModalityToModality(0),
        ModalityToModality(1),
        *(InterModality(a, b) for a, b in IMCA_HALVES),
    ]
    for part in parts:
        perm, x1, x2, rest = split_sets(part, 2 * n)
        assert sorted(perm.tolist()) == list(range(2 * n)), part
        assert len(x1) == len(x2), part


def test_mmca_partitions_are_the_two_modalities():
    a, b = set(range(5)), set(range(5, 10))
    _, x1, x2, rest = split_sets(ModalityToModality(0), 10)
    assert (x1, x2, rest) == (a, b, set())
    _, x1, x2, rest = split_sets(ModalityToModality(1), 10)
    assert (x1, x2, rest) == (b, a, set())
    with pytest.raises(ValueError, match="even"):
        ModalityToModality(0).order(7)


def test_imca_takes_half_of_each_modality_and_passes_odd_middles():
    n = 5  # modality A = tokens 0..4, B = 5..9; halves {0,1}/{3,4}, middle 2 (and 7)
    a_halves, b_halves = ({0, 1}, {3, 4}), ({5, 6}, {8, 9})
    seen = set()
    for a, b in IMCA_HALVES:
        _, x1, x2, rest = split_sets(InterModality(a, b), 2 * n)
        assert x1 == a_halves[a] | b_halves[b]
        assert x2 == a_halves[1 - a] | b_halves[1 - b]
        assert rest == {2, 7}
        seen.add(frozenset(x1))
    assert len(seen) == 4, "the four half-combinations are distinct"


@pytest.mark.parametrize(
    "partition,n_tokens,middle",
    [
        (Halves(), 7, [3]),
        (InterModality(0, 1), 10, [2, 7]),
        (InterModality(1, 0), 6, [1, 4]),
    ],
)
def test_odd_counts_middle_tokens_pass_through_unchanged(partition, n_tokens, middle):
    layer = perturbed(InvertibleCrossAttention(D, partition, attn_dim=5))
    x = torch.randn(2, n_tokens, D, dtype=torch.float64)
    y, _ = layer(x)
    assert torch.equal(y[:, middle], x[:, middle])
    changed = [i for i in range(n_tokens) if not torch.equal(y[:, i], x[:, i])]
    assert changed, "the X2 tokens must change"
    torch.testing.assert_close(layer.inverse(y)[0], x, atol=1e-10, rtol=0)


def test_merge_puts_every_token_back():
    """X1 tokens are kept and stay at their original positions; X2 tokens move only by A X2."""
    for part in [ModalityToModality(1), InterModality(1, 0), Halves()]:
        layer = perturbed(InvertibleCrossAttention(D, part, attn_dim=5))
        x = torch.randn(1, 10, D, dtype=torch.float64)
        y, _ = layer(x)
        perm, h = part.order(10)
        kept = perm[:h]
        assert torch.equal(y[:, kept], x[:, kept])
        with torch.no_grad():  # A = I: the layer must be exactly the identity after merging
            layer.log_temperature.fill_(-30.0)
            layer.to_k.load_state_dict(layer.to_q.state_dict())
            # equal-norm queries (LN without affine): q_i.q_i is each row's strict maximum
            layer.norm_q.weight.fill_(1.0)
            layer.norm_q.bias.zero_()
            layer.norm_k.weight.fill_(1.0)
        assert torch.allclose(layer(x)[0], x, atol=1e-12)


def test_tiny_counts_are_identity():
    layer = InvertibleCrossAttention(D, InterModality(0, 0))
    x = torch.randn(2, 2, D)  # one token per modality: IMCA halves are empty
    y, logdet = layer(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(2))


# --------------------------------------------------------------------- LICA


def test_token_mixing_logdet_is_feature_count_times_sum_log_s():
    mix = perturbed(TokenMixing(6))
    x = torch.randn(2, 6, D, dtype=torch.float64)
    _, logdet = mix(x)
    expected = D * mix.log_scale.sum()
    torch.testing.assert_close(logdet, expected.expand(2))
    lower, upper = mix.factors()
    w = torch.eye(6, dtype=torch.float64)[mix.perm] @ lower @ upper  # P L (U + diag s)
    torch.testing.assert_close(logdet[0], D * torch.linalg.slogdet(w)[1])
    torch.testing.assert_close(mix(x)[0], w @ x)


def test_lica_logdet_is_the_attention_logdet_alone():
    """W^-1 after the attention cancels det(W)^D: only the ICA of the mixed tokens counts."""
    lica = perturbed(LearnableInterModality(D, 6, attn_dim=5))
    x = torch.randn(2, 6, D, dtype=torch.float64)
    _, logdet = lica(x)
    mixed, mix_logdet = lica.mixing(x)
    assert mix_logdet.abs().min() > 1e-3  # the cancelled term is not trivially zero
    torch.testing.assert_close(logdet, lica.attention(mixed)[1])


def test_lica_rejects_another_token_count():
    lica = LearnableInterModality(D, 6)
    with pytest.raises(ValueError, match="6 tokens"):
        lica(torch.randn(1, 8, D))


# --------------------------------------------------------------------- blocks, prior


@pytest.mark.parametrize(
    "partitions,coupling,count",
    [
        (("mmca", "imca", "lica"), True, 9),
        (("mmca",), True, 3),
        (("mmca", "imca"), True, 7),
        ((), True, 1),
        (("mmca", "imca", "lica"), False, 8),
    ],
)
def test_block_composition(partitions, coupling, count):
    block = MangoBlock(D, 6, partitions=partitions, coupling=coupling)
    assert len(block.layers) == count
    x = torch.randn(2, 6, D, dtype=torch.float64)
    block = perturbed(block)
    torch.testing.assert_close(block.inverse(block(x)[0])[0], x, atol=1e-8, rtol=0)


def test_block_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown partitions"):
        MangoBlock(D, 6, partitions=("mmca", "glow"))
    with pytest.raises(ValueError, match="at least one"):
        MangoBlock(D, 6, partitions=(), coupling=False)
    with pytest.raises(ValueError, match="num_tokens"):
        MangoBlock(D, None, partitions=("lica",))


def test_flow_without_lica_accepts_any_token_count():
    flow = perturbed(MangoFlow(D, blocks=2, partitions=("mmca", "imca"), attn_dim=5, hidden=8))
    for n in (1, 3, 4):
        x = torch.randn(2, 2 * n, D, dtype=torch.float64)
        torch.testing.assert_close(flow.inverse(flow(x)[0])[0], x, atol=1e-8, rtol=0)


def test_prior_and_bits_per_dim():
    z = torch.randn(3, 6, D, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(-1)
    torch.testing.assert_close(standard_normal_log_prob(z), ref)
    lp = standard_normal_log_prob(z)
    torch.testing.assert_close(nll_per_dim(lp, 6 * D), -lp / (6 * D))
    torch.testing.assert_close(bits_per_dim(lp, 6 * D), -lp / (6 * D) / math.log(2))
