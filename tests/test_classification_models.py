"""Classification models: the text encoder's padding invariance and equivalences (late = mean
of heads, ensemble = softmax(alpha) mix, CEN with theta 0 = the plain multi-stream network,
MANGO's flow inverts its tokens)."""

import pytest
import torch

from fusescope.errors import FusescopeError
from fusescope.models.classification import build_classifier
from fusescope.models.classification.text import TextEncoder

SPECS = {
    "poster": {"kind": "color", "channels": 3},
    "plot": {"kind": "text", "vocab_size": 40, "pad_id": 0},
    "rgb": {"kind": "color", "channels": 3},
    "depth": {"kind": "depth", "channels": 1},
}
# modality sets the equivalence tests use (the contract of every method is
# tests/test_fusion_contract.py's)
CASES = {
    "unimodal": [["poster"], ["plot"]],
    "late": [["poster", "plot"], ["rgb", "depth"]],
    "ensemble": [["poster", "plot"]],
    "concat": [["poster", "plot"], ["rgb", "depth"]],
    "attention": [["poster", "plot"]],
    "mango": [["poster", "plot"], ["rgb", "depth"]],
    "early_concat": [["rgb", "depth"]],
    "multistream": [["rgb", "depth"]],
    "cen": [["rgb", "depth"]],
    "asymfusion": [["rgb", "depth"]],
}
SMALL = {"mango": {"blocks": 2}}
PARAMS = [(name, mods) for name, lists in CASES.items() for mods in lists]


def build(name, mods, seed=0, **options):
    torch.manual_seed(seed)
    return build_classifier({"name": name, **SMALL.get(name, {}), **options}, mods, SPECS, 5)


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (pad 0) and mask for token rows of different lengths."""
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, ids != 0


def batch(mods, rows=([3, 7, 9, 2], [5, 1, 8, 8, 6, 4, 2, 9, 11]), seed=1):
    g = torch.Generator().manual_seed(seed)
    b = {}
    for m in mods:
        if SPECS[m]["kind"] == "text":
            b[m], b[f"{m}_mask"] = padded(list(rows))
        else:
            b[m] = torch.randn(len(rows), SPECS[m]["channels"], 32, 32, generator=g)
    return b


def test_text_encoder_padding_never_changes_a_sample():
    torch.manual_seed(0)
    enc = TextEncoder(40, dim=16, layers=2, heads=4).eval()
    short, long = [3, 7, 9, 2], [5, 1, 8, 8, 6, 4, 2, 9, 11]
    alone = enc(*padded([short]))
    together = enc(*padded([short, long]))
    torch.testing.assert_close(together.tokens[0, :4], alone.tokens[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(together.pooled[0], alone.pooled[0], atol=1e-6, rtol=0)
    assert (together.tokens[0, 4:] == 0).all()  # padding leaves no trace in the tokens
    # the check can fail: treating the padding as words changes the sample
    ids, _ = padded([short, long])
    unmasked = enc(ids, torch.ones_like(ids, dtype=torch.bool))
    assert (unmasked.pooled[0] - alone.pooled[0]).abs().max() > 1e-3


@pytest.mark.parametrize("name, mods", [p for p in PARAMS if "plot" in p[1]])
def test_padding_never_changes_a_methods_logits(name, mods):
    model = build(name, mods).eval()
    full = batch(mods)
    one = batch(mods, rows=([3, 7, 9, 2],))
    for m in mods:  # the same image for the first sample
        if SPECS[m]["kind"] != "text":
            one[m] = full[m][:1]
    with torch.no_grad():
        torch.testing.assert_close(
            model(full)["logits"][:1], model(one)["logits"], atol=1e-5, rtol=0
        )


def test_late_is_the_mean_and_ensemble_the_softmax_mix():
    mods = ["poster", "plot"]
    b = batch(mods)
    late = build("late", mods).eval()
    out = late(b)
    torch.testing.assert_close(
        out["logits"], (out["per_modality"]["poster"] + out["per_modality"]["plot"]) / 2
    )
    ens = build("ensemble", mods).eval()
    with torch.no_grad():
        ens.ensemble.alpha.copy_(torch.tensor([0.3, -1.2]))
    out = ens(b)
    w = torch.softmax(torch.tensor([0.3, -1.2]), 0)
    torch.testing.assert_close(
        out["logits"], w[0] * out["per_modality"]["poster"] + w[1] * out["per_modality"]["plot"]
    )


def trained_like(model):
    """timm starts every residual branch at zero (last BN gamma 0), which would hide any fusion
    inside it: give every norm the same random gammas, as training would."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "bn" in name and name.endswith("weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return model.eval()


def test_cen_with_theta_zero_is_the_plain_multistream_network():
    mods = ["rgb", "depth"]
    b = batch(mods)
    plain, cen, loose = (
        trained_like(build(n, mods, **o))
        for n, o in (("multistream", {}), ("cen", {"theta": 0.0}), ("cen", {"theta": 10.0}))
    )
    with torch.no_grad():
        torch.testing.assert_close(cen(b)["logits"], plain(b)["logits"])
        # and it can fail: a threshold above every gamma exchanges channels
        assert (loose(b)["logits"] - plain(b)["logits"]).abs().max() > 1e-4


def test_cross_attention_differs_from_self_attention_and_sees_the_other_modality():
    mods = ["poster", "plot"]
    b = batch(mods)
    cross = build("attention", mods, mode="cross").eval()
    selfish = build("attention", mods, mode="self").eval()
    with torch.no_grad():
        assert (cross(b)["logits"] - selfish(b)["logits"]).abs().max() > 1e-5
        other = dict(b, poster=torch.randn_like(b["poster"]))
        assert (cross(other)["logits"] - cross(b)["logits"]).abs().max() > 1e-5


def test_mango_flow_inverts_its_tokens_and_reports_the_nll():
    mods = ["poster", "plot"]
    model = build("mango", mods).eval()
    b = batch(mods)
    with torch.no_grad():
        tokens = model.tokens(b)
        z, _ = model.latent.flow(tokens)
        back, _ = model.latent.flow.inverse(z)
        out = model(b)
    assert tokens.shape == (2, 16, 64)
    torch.testing.assert_close(back, tokens, atol=1e-4, rtol=1e-4)
    assert set(out["aux_losses"]) == {"flow_nll"} and torch.isfinite(out["aux_losses"]["flow_nll"])
    assert set(model.training_stats()) == {"flow_nll_nats", "flow_bpd"}


def test_mango_with_dynmm_head_is_one_linear_layer_on_both_modalities_means():
    """`head: dynmm`: DynMM's MM-IMDB fusion head, Linear(concat of the two modalities'
    features) to the classes; the logits are that layer on the per-modality means of Z."""
    mods = ["poster", "plot"]
    model = build("mango", mods, head="dynmm", width=32).eval()
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 5)]
    b = batch(mods)
    with torch.no_grad():
        z, _ = model.latent.flow(model.tokens(b))
        means = z.view(2, 2, -1, 32).mean(2).flatten(1)
        expected = linears[0](means)
        torch.testing.assert_close(model(b)["logits"], expected)
    with pytest.raises(FusescopeError, match="head must be one of mlp, dynmm"):
        build("mango", mods, head="gmu")


def test_bad_options_are_one_line_errors():
    with pytest.raises(FusescopeError, match="unknown config key model.colour"):
        build("concat", ["poster", "plot"], colour=1)
    with pytest.raises(FusescopeError, match="unimodal reads 1 modalities"):
        build("unimodal", ["poster", "plot"])
    with pytest.raises(FusescopeError, match="early_concat stacks image channels"):
        build("early_concat", ["poster", "plot"])
    with pytest.raises(FusescopeError, match="shares convolutions"):
        build("cen", ["poster", "plot"])
    with pytest.raises(FusescopeError, match="mode must be"):
        build("attention", ["poster", "plot"], mode="both")
    with pytest.raises(FusescopeError, match="unknown classification method"):
        build_classifier({"name": "nope"}, ["poster"], SPECS, 5)


def test_glove_initialises_the_word_embeddings(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("zebra 0.5 -1.0 2.0 0.25\nhorse 1.0 1.0 -1.0 0.0\nunused 9 9 9 9\n")
    specs = {
        "plot": {
            "kind": "text",
            "vocab_size": 6,
            "pad_id": 0,
            "vocab": ["<pad>", "<unk>", "zebra", "horse"],
        }
    }
    model = build_classifier(
        {
            "name": "unimodal",
            "text_encoder": "glove",
            "text_dim": 4,
            "text_heads": 2,
            "glove": str(glove),
        },
        ["plot"],
        specs,
        3,
    )
    table = model.branches["plot"].embed.weight.detach()
    assert table.shape == (6, 4)
    torch.testing.assert_close(table[2], torch.tensor([0.5, -1.0, 2.0, 0.25]))
    torch.testing.assert_close(table[3], torch.tensor([1.0, 1.0, -1.0, 0.0]))
    assert (table[0] == 0).all()  # padding
    with pytest.raises(FusescopeError, match="set model.text_dim: 4"):
        build_classifier(
            {"name": "unimodal", "text_encoder": "glove", "text_dim": 8, "glove": str(glove)},
            ["plot"],
            specs,
            3,
        )
    # GloVe vectors are the glove encoder's: with another encoder they are a mistake
    with pytest.raises(FusescopeError, match="set text_encoder: glove"):
        build_classifier({"name": "unimodal", "glove": str(glove)}, ["plot"], specs, 3)


def test_the_task_initialises_glove_from_the_runs_vocabulary(tmp_path):
    """The engine hands the normaliser's statistics (which hold a text modality's vocabulary)
    to `build_model`; a model rebuilt from a run folder (pretrained=False) reads no vectors."""
    from fusescope.config import load_config
    from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec
    from fusescope.tasks import task_of

    glove = tmp_path / "glove.txt"
    glove.write_text("zebra 0.5 -1.0 2.0 0.25\nhorse 1.0 1.0 -1.0 0.0\n")
    cfg = load_config(
        None,
        [
            "task=classification",
            "data.modalities=[plot]",
            "data.vocab_size=6",
            "model.name=unimodal",
            "model.text_dim=4",
            "model.text_heads=2",
            "model.text_encoder=glove",
            f"model.glove={glove}",
        ],
    )
    classes = [ClassInfo(name, i, (0, 0, 0)) for i, name in enumerate("abc")]
    meta = DatasetMeta("t", classes, {"plot": ModalitySpec("text", 0)})
    stats = {"plot": {"vocab": ["<pad>", "<unk>", "horse", "zebra"]}}
    task = task_of("classification")
    table = task.build_model(cfg, meta, stats=stats).branches["plot"].embed.weight.detach()
    torch.testing.assert_close(table[2], torch.tensor([1.0, 1.0, -1.0, 0.0]))
    torch.testing.assert_close(table[3], torch.tensor([0.5, -1.0, 2.0, 0.25]))
    rebuilt = task.build_model(cfg, meta, pretrained=False, stats=stats)
    assert not torch.equal(rebuilt.branches["plot"].embed.weight[3], table[3])
