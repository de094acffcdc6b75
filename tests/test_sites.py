"""Fusion sites on every block family: each site of `sites.SITES` is found in every tested
family, hands its op the modality view the op asks for (maps or tokens), puts the op's output
back where the site's tensor was (an identity op changes nothing; a swap of the modalities at a
site makes each stream continue from the other's tensor), and a ViT's class token passes a map
op untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from fusescope.models.backbones import create_encoder
from fusescope.models.core import FusionOp, stack_modalities
from fusescope.models.multistream import MultiStreamEncoder
from fusescope.models.sites import SITES, Where
from test_fusion_contract import FAMILIES


class Probe(FusionOp):
    """Records the views it receives; `swap` exchanges the two modalities, `scale` multiplies."""

    def __init__(self, layout=None, swap=False, scale=1.0):
        super().__init__()
        self.layout, self.swap, self.scale = layout, swap, scale
        self.seen: list[tuple] = []

    def forward(self, x, site):
        self.seen.append((site, tuple(x.shape)))
        if self.swap:
            x = x.flip(1)
        return x * self.scale


def encoder(family: str) -> MultiStreamEncoder:
    torch.manual_seed(0)
    return MultiStreamEncoder(create_encoder(FAMILIES[family]), 2).eval()


def site_cases():
    out = []
    for family in FAMILIES:
        kind = "transformer" if family in ("swin", "mit", "vit") else "cnn"
        for site in SITES[kind]:
            out.append((family, site))
    return out


@pytest.mark.parametrize("family, site", site_cases())
def test_every_site_is_found_and_identity_changes_nothing(family, site):
    plain = encoder(family)
    probed = copy.deepcopy(plain)
    probes = []

    def factory(point):
        probes.append(Probe())
        return probes[-1]

    probed.insert(Where((site,)), factory)
    x = stack_modalities([torch.randn(2, 3, 45, 61), torch.randn(2, 3, 45, 61)])
    with torch.no_grad():
        for ref, got in zip(plain(x), probed(x), strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert probes and all(p.seen for p in probes)  # every op ran
    for p in probes:
        _, shape = p.seen[0]
        assert shape[:2] == (2, 2)  # (B, M, ...): the modality view
        assert len(shape) in (4, 5)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("layout", ["map", "tokens"])
def test_an_op_gets_the_layout_it_asks_for(family, layout):
    kind = "transformer" if family in ("swin", "mit", "vit") else "cnn"
    site = "norm_out" if kind == "transformer" else "act_out"
    probe = Probe(layout=layout)
    enc = encoder(family)
    enc.insert(Where((site,), stages=(1,), blocks="last"), lambda point: probe)
    with torch.no_grad():
        enc(stack_modalities([torch.randn(2, 3, 45, 61), torch.randn(2, 3, 45, 61)]))
    _, shape = probe.seen[0]
    if layout == "map":
        assert len(shape) == 5  # (B, M, C, H, W)
        assert shape[3] * shape[4] >= 12  # a stage-1 grid of a 45x61 frame
    else:
        assert len(shape) == 4  # (B, M, N, C)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_swap_at_a_stage_output_makes_each_stream_continue_from_the_other(family):
    """Swapping the modalities at the last stage's output equals running the encoder on the
    swapped inputs with the norms of the first three stages swapped too: checked here on what
    it must give, the last level of stream 0 equals the unswapped last level of stream 1."""
    enc = encoder(family)
    probe = Probe(swap=True)
    enc.insert(Where(("stage_out",), stages=(4,)), lambda point: probe)
    plain = encoder(family)
    x = stack_modalities([torch.randn(2, 3, 45, 61), torch.randn(2, 3, 45, 61)])
    with torch.no_grad():
        swapped, ref = enc(x)[-1], plain(x)[-1]
    s5, r5 = swapped.unflatten(0, (-1, 2)), ref.unflatten(0, (-1, 2))
    torch.testing.assert_close(s5[:, 0], r5[:, 1])
    torch.testing.assert_close(s5[:, 1], r5[:, 0])


def test_a_vit_class_token_passes_a_map_op_unchanged():
    enc = encoder("vit")
    probe = Probe(layout="map", scale=2.0)
    enc.insert(Where(("block_out",), stages=(1,), blocks="last"), lambda point: probe)
    (point,) = enc.points(Where(("block_out",), stages=(1,), blocks="last"))
    block = enc.body.get_submodule(point.name)
    outputs = {}
    block.register_forward_hook(lambda m, a, out: outputs.setdefault("x", out))
    plain = encoder("vit")
    ref_block = plain.body.get_submodule("vit.blocks.0")
    ref_out = {}
    ref_block.register_forward_hook(lambda m, a, out: ref_out.setdefault("x", out))
    x = stack_modalities([torch.randn(2, 3, 45, 61), torch.randn(2, 3, 45, 61)])
    with torch.no_grad():
        enc(x), plain(x)
    got, ref = outputs["x"], ref_out["x"]  # (B*M, 1 + h*w, C): the hooked output
    torch.testing.assert_close(got[:, 0], ref[:, 0])  # the class token
    torch.testing.assert_close(got[:, 1:], 2 * ref[:, 1:])  # the patch tokens, doubled
    _, shape = probe.seen[0]
    assert shape[-2:] == (3, 4)  # ceil(45 / 16) x ceil(61 / 16)
