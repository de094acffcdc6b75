"""MiT (SegFormer's Mix Transformer) weights: the SegFormer release's and the Hugging Face hub's key
names mapped tensor for tensor onto timm's PVTv2, `pretrained: true` through the hub's cache, and
the one-line errors. The files are written here from a small random MiT; nothing downloads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file

from fusescope.errors import FusescopeError
from fusescope.models.backbones import create_encoder

SPEC = {"name": "mit_b0", "depths": [1, 2, 1, 1], "embed_dims": [8, 16, 32, 64]}
SPEC["num_heads"] = [1, 1, 2, 2]


def timm_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random full MiT under timm's names (what the files below are written from)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(
        "pvt_v2_b0",
        mlp_ratios=(4, 4, 4, 4),
        depths=(1, 2, 1, 1),
        embed_dims=(8, 16, 32, 64),
        num_heads=(1, 1, 2, 2),
    )
    for p in model.parameters():  # no two tensors alike (LayerNorms start at 1 / 0)
        p.data.normal_()
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


def release_names(state: dict) -> dict:
    """timm -> the SegFormer release's `mit_bX.pth` layout (patch_embedN, blockN.i, normN,
    mlp.dwconv.dwconv; N = stage + 1), written out here independently of fusescope's mapper."""
    out = {}
    for key, value in state.items():
        if key.startswith("patch_embed."):
            out["patch_embed1." + key.removeprefix("patch_embed.")] = value
            continue
        s, rest = re.fullmatch(r"stages\.(\d)\.(.+)", key).groups()
        n = int(s) + 1
        if rest.startswith("downsample."):
            out[f"patch_embed{n}." + rest.removeprefix("downsample.")] = value
        elif rest.startswith("norm."):
            out[f"norm{n}." + rest.removeprefix("norm.")] = value
        else:
            j, part = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest).groups()
            out[f"block{n}.{j}.{part.replace('mlp.dwconv.', 'mlp.dwconv.dwconv.')}"] = value
    out["head.weight"], out["head.bias"] = torch.randn(1000, 64), torch.randn(1000)
    return out


HF_PARTS = {  # timm block part -> transformers 4 (the hub's nvidia/mit-bX files)
    "norm1": "layer_norm_1",
    "attn.q": "attention.self.query",
    "attn.sr": "attention.self.sr",
    "attn.norm": "attention.self.layer_norm",
    "attn.proj": "attention.output.dense",
    "norm2": "layer_norm_2",
    "mlp.fc1": "mlp.dense1",
    "mlp.dwconv": "mlp.dwconv.dwconv",
    "mlp.fc2": "mlp.dense2",
}


def hub_names(state: dict) -> dict:
    """timm -> the hub's `nvidia/mit-bX` names (SegformerForImageClassification, transformers
    4): separate key and value linears, 0-based stages."""
    out = {}
    for key, value in state.items():
        if key.startswith("patch_embed."):
            part = key.removeprefix("patch_embed.").replace("norm.", "layer_norm.")
            out[f"segformer.encoder.patch_embeddings.0.{part}"] = value
            continue
        s, rest = re.fullmatch(r"stages\.(\d)\.(.+)", key).groups()
        if rest.startswith("downsample."):
            part = rest.removeprefix("downsample.").replace("norm.", "layer_norm.")
            out[f"segformer.encoder.patch_embeddings.{s}.{part}"] = value
        elif rest.startswith("norm."):
            out[f"segformer.encoder.layer_norm.{s}.{rest.removeprefix('norm.')}"] = value
        else:
            j, part, kind = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", rest).groups()
            base = f"segformer.encoder.block.{s}.{j}"
            if part == "attn.kv":  # one (2C, C) linear in timm: key rows, then value rows
                key_half, value_half = value.chunk(2, 0)
                out[f"{base}.attention.self.key.{kind}"] = key_half
                out[f"{base}.attention.self.value.{kind}"] = value_half
            else:
                out[f"{base}.{HF_PARTS[part]}.{kind}"] = value
    out["classifier.weight"], out["classifier.bias"] = torch.randn(1000, 64), torch.randn(1000)
    return out


def loaded(path: Path, **kw) -> dict:
    enc = create_encoder(SPEC, pretrained=str(path), **kw)
    return {k.replace("stages_", "stages.", 1): v for k, v in enc.state_dict().items()}


def assert_same(own: dict, state: dict) -> None:
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_segformer_release_names_map_tensor_for_tensor(tmp_path):
    state = timm_state(1)
    torch.save(release_names(state), tmp_path / "mit_b0.pth")
    assert_same(loaded(tmp_path / "mit_b0.pth"), state)


def test_hub_names_map_tensor_for_tensor_key_and_value_stacked(tmp_path):
    state = timm_state(2)
    hub = hub_names(state)
    save_file({k: v.contiguous() for k, v in hub.items()}, str(tmp_path / "model.safetensors"))
    own = loaded(tmp_path / "model.safetensors")
    assert_same(own, state)
    kv = own["stages.1.blocks.1.attn.kv.weight"]  # key rows first, as timm's attention reads it
    assert torch.equal(kv[:16], hub["segformer.encoder.block.1.1.attention.self.key.weight"])
    assert torch.equal(kv[16:], hub["segformer.encoder.block.1.1.attention.self.value.weight"])


def test_transformers_5_names_map_too(tmp_path):
    state = timm_state(3)
    renames = [  # what transformers 5 writes (its conversion table, reversed)
        (r"encoder\.patch_embeddings\.(\d)\.", r"stages.\1.patch_embeddings."),
        (r"encoder\.block\.(\d)\.", r"stages.\1.blocks."),
        (r"encoder\.layer_norm\.(\d)", r"stages.\1.layer_norm"),
        (r"attention\.self\.query", "attention.q_proj"),
        (r"attention\.self\.key", "attention.k_proj"),
        (r"attention\.self\.value", "attention.v_proj"),
        (r"attention\.self\.sr", "attention.sequence_reduction.sequence_reduction"),
        (r"attention\.self\.layer_norm", "attention.sequence_reduction.layer_norm"),
        (r"attention\.output\.dense", "attention.o_proj"),
        (r"mlp\.dense1", "mlp.fc1"),
        (r"mlp\.dense2", "mlp.fc2"),
        (r"layer_norm_1", "layernorm_before"),
        (r"layer_norm_2", "layernorm_after"),
    ]
    v5 = {}
    for key, value in hub_names(state).items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        v5[key] = value
    torch.save(v5, tmp_path / "v5.pth")
    assert_same(loaded(tmp_path / "v5.pth"), state)


def test_depth_channel_stem_is_adapted(tmp_path):
    state = timm_state(4)
    torch.save(release_names(state), tmp_path / "mit.pth")
    own = loaded(tmp_path / "mit.pth", in_chans=1)
    w = state["patch_embed.proj.weight"]
    torch.testing.assert_close(own["patch_embed.proj.weight"], w.sum(1, keepdim=True))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("block2.1.attn.kv.weight"), "lack 1 MiT tensors.*stages.1.blocks.1.attn"),
        (lambda s: s.update({"block2.2.norm1.weight": torch.ones(16)}), "map to no tensor"),
        (lambda s: s.update({"block1.0.attn.qkv.weight": torch.ones(8)}), "block1.0.attn.qkv"),
        (lambda s: s.update({"norm4.weight": torch.ones(65)}), "shape mismatch.*stages.3.norm"),
    ],
)
def test_a_missing_extra_or_misshapen_tensor_is_one_line(tmp_path, change, message):
    release = release_names(timm_state(5))
    change(release)
    torch.save(release, tmp_path / "bad.pth")
    with pytest.raises(FusescopeError, match=message) as err:
        loaded(tmp_path / "bad.pth")
    assert "\n" not in str(err.value) and "bad.pth" in str(err.value)


def test_a_key_without_its_value_is_an_error(tmp_path):
    hub = hub_names(timm_state(6))
    hub.pop("segformer.encoder.block.0.0.attention.self.value.bias")
    torch.save(hub, tmp_path / "half.pth")
    with pytest.raises(FusescopeError, match="key without its partner"):
        loaded(tmp_path / "half.pth")


def write_hub_cache(cache: Path, repo: str, filename: str, state: dict) -> None:
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    path = folder / "snapshots" / commit / filename
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_true_reads_nvidia_mit_from_the_hub_cache(tmp_path, monkeypatch, filename):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    state = timm_state(7)
    write_hub_cache(tmp_path / "hub", "nvidia/mit-b0", filename, hub_names(state))
    enc = create_encoder(SPEC, pretrained=True)
    own = {k.replace("stages_", "stages.", 1): v for k, v in enc.state_dict().items()}
    assert_same(own, state)


def test_offline_and_not_cached_is_one_line_with_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FusescopeError) as err:
        create_encoder("mit_b2", pretrained=True)
    message = str(err.value)
    assert "\n" not in message and "nvidia/mit-b2" in message
    assert "connect to the internet" in message and "model.pretrained" in message
    assert "mit_b2.pth" in message


def test_matches_transformers_segformer_encoder(tmp_path):
    """An independent implementation: transformers' SegFormer encoder, its weights saved under
    its own names, gives our encoder's four levels (its LayerNorm eps set to MiT's, 1e-6 in the
    blocks and stage norms, which transformers leaves at 1e-5)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 2]
    )
    torch.manual_seed(0)
    hf = transformers.SegformerModel(config).eval()
    for p in hf.parameters():
        p.data.normal_(0, 0.5)
    for name, module in hf.named_modules():
        block_norm = any(s in name for s in ("layernorm_", "layer_norm_", "encoder.layer_norm"))
        stage_norm = re.fullmatch(r"(encoder\.layer_norm\.\d|stages\.\d\.layer_norm)", name)
        if isinstance(module, torch.nn.LayerNorm) and (block_norm or stage_norm):
            module.eps = 1e-6
    save_file(
        {k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "hf.safetensors")
    )
    enc = create_encoder(SPEC, pretrained=str(tmp_path / "hf.safetensors")).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ours = enc(x)
        theirs = hf(x, output_hidden_states=True).hidden_states
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "i, millions", [(0, 3.32), (1, 13.15), (2, 24.20), (3, 44.07), (4, 60.84), (5, 81.44)]
)
def test_encoder_sizes_are_segformers(i, millions):
    """MiT-B0 ... B5 without their classifier (counted on the meta device)."""
    with torch.device("meta"):
        enc = create_encoder(f"mit_b{i}")
    assert round(sum(p.numel() for p in enc.parameters()) / 1e6, 2) == millions
