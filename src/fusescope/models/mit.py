"""SegFormer's Mix Transformer (MiT-B0 ... B5) weights on timm's PVTv2 (`mlp_ratios=(4,4,4,4)`).

`create_encoder("mit_bX")` builds timm's `pvt_v2_bX` with an MLP ratio of 4 in every stage, which
is MiT layer for layer (overlapping patch embeddings, spatial-reduction attention, the
depthwise-conv MLP). timm ships ImageNet weights for PVTv2 only (MLP ratio 8), so MiT's weights
come from its own releases, mapped here tensor for tensor onto timm's names:

* the SegFormer release (`mit_bX.pth`, what TokenFusion and GeminiFusion load): `patch_embedN.*`,
  `blockN.i.*`, `normN.*` and `mlp.dwconv.dwconv.*`, N = stage + 1;
* the Hugging Face hub's `nvidia/mit-bX` (`model.safetensors`, or `pytorch_model.bin` read with
  `weights_only=True`) under transformers' names: `segformer.encoder.patch_embeddings.S.*`,
  `segformer.encoder.block.S.i.*` with `attention.self.query / key / value` (key and value are
  two linears there, one `attn.kv` in timm: stacked key first), `attention.output.dense`,
  `layer_norm_1 / 2`, `mlp.dense1 / dense2`, and `segformer.encoder.layer_norm.S.*`; also the
  names transformers 5 writes (`segformer.stages.S.blocks.i.attention.q_proj`, ...);
* timm's own names (`stages.S.blocks.i.*`).

Every tensor is mapped by name and checked by shape; a tensor that maps nowhere, a missing one or
a misshapen one is an error naming it. Only the checkpoint's image classifier (`head.*`,
`classifier.*`, `decode_head.*`) is left out, as the authors' code pops `head.*`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from fusescope.errors import FusescopeError

HUB_REPOS = {f"mit_b{i}": f"nvidia/mit-b{i}" for i in range(6)}
# the hub's file names, preferred first (mit-b0 ... b5 keep pytorch_model.bin; safetensors was
# added to some of them later)
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
CLASSIFIERS = ("head.", "classifier.", "decode_head.")
_W = r"(weight|bias)"

# per-block parts: (format's name, timm's name); "kv:k" / "kv:v" are the two halves of attn.kv
_HF_BLOCK = {
    "layer_norm_1": "norm1",
    "attention.self.query": "attn.q",
    "attention.self.key": "kv:k",
    "attention.self.value": "kv:v",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "layer_norm_2": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv",
    "mlp.dense2": "mlp.fc2",
}
_HF5_BLOCK = {
    "layernorm_before": "norm1",
    "attention.q_proj": "attn.q",
    "attention.k_proj": "kv:k",
    "attention.v_proj": "kv:v",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv",
    "mlp.fc2": "mlp.fc2",
}
_RELEASE_BLOCK = {
    p: p
    for p in ("norm1", "attn.q", "attn.kv", "attn.sr", "attn.norm", "attn.proj", "norm2")
    + ("mlp.fc1", "mlp.fc2")
} | {"mlp.dwconv.dwconv": "mlp.dwconv"}


def _embed(stage: int, part: str, kind: str) -> str:
    """timm's name of stage `stage`'s patch embedding (`proj` conv or `norm`)."""
    return (
        f"patch_embed.{part}.{kind}" if stage == 0 else f"stages.{stage}.downsample.{part}.{kind}"
    )


def _block(stage: int, index: int, part: str, kind: str) -> str:
    return f"stages.{stage}.blocks.{index}.{part}.{kind}"


def _rules(fmt: str) -> list[tuple[re.Pattern, Callable[[re.Match], str | None]]]:
    """(pattern, timm key of a match) for each format; a block part outside the table -> None."""

    def parts(table: dict[str, str], stage_base: int):
        def block(m: re.Match) -> str | None:
            part = table.get(m[3])
            return None if part is None else _block(int(m[1]) - stage_base, int(m[2]), part, m[4])

        return block

    if fmt == "release":  # N = stage + 1
        return [
            (
                re.compile(rf"patch_embed(\d)\.(proj|norm)\.{_W}"),
                lambda m: _embed(int(m[1]) - 1, m[2], m[3]),
            ),
            (re.compile(rf"block(\d)\.(\d+)\.(.+)\.{_W}"), parts(_RELEASE_BLOCK, 1)),
            (re.compile(rf"norm(\d)\.{_W}"), lambda m: f"stages.{int(m[1]) - 1}.norm.{m[2]}"),
        ]
    if fmt == "hf":
        return [
            (
                re.compile(rf"encoder\.patch_embeddings\.(\d)\.(proj|layer_norm)\.{_W}"),
                lambda m: _embed(int(m[1]), "proj" if m[2] == "proj" else "norm", m[3]),
            ),
            (re.compile(rf"encoder\.block\.(\d)\.(\d+)\.(.+)\.{_W}"), parts(_HF_BLOCK, 0)),
            (
                re.compile(rf"encoder\.layer_norm\.(\d)\.{_W}"),
                lambda m: f"stages.{m[1]}.norm.{m[2]}",
            ),
        ]
    if fmt == "hf5":
        return [
            (
                re.compile(rf"stages\.(\d)\.patch_embeddings\.(proj|layer_norm)\.{_W}"),
                lambda m: _embed(int(m[1]), "proj" if m[2] == "proj" else "norm", m[3]),
            ),
            (re.compile(rf"stages\.(\d)\.blocks\.(\d+)\.(.+)\.{_W}"), parts(_HF5_BLOCK, 0)),
            (
                re.compile(rf"stages\.(\d)\.layer_norm\.{_W}"),
                lambda m: f"stages.{m[1]}.norm.{m[2]}",
            ),
        ]
    raise ValueError(fmt)


def key_format(state: dict[str, Tensor]) -> str:
    """Which release a MiT state dict comes from: `timm`, `release` (SegFormer's mit_bX.pth),
    `hf` (the hub's nvidia/mit-bX, transformers 4 names) or `hf5` (transformers 5 names)."""
    keys = [k.removeprefix("segformer.") for k in state]
    if any(k.startswith("encoder.block.") for k in keys):
        return "hf"
    if any(
        ".patch_embeddings." in k or k.startswith("stages.") and ".layernorm_" in k for k in keys
    ):
        return "hf5"
    if any(re.match(r"(patch_embed|block)\d\.", k) for k in keys):
        return "release"
    return "timm"


def to_timm(state: dict[str, Tensor], target: dict[str, Tensor], source: str) -> OrderedDict:
    """A MiT state dict of any release (`key_format`) under timm's PVTv2 names.

    Args:
        state: the file's tensors.
        target: timm's full-model state dict (names and shapes) the weights are for.
        source: the file or repository, for messages.

    Raises:
        FusescopeError: a tensor that maps to nothing in `target` (unknown name, a block or stage
            the model does not have), a missing or misshapen tensor; the classifier is left out.
    """
    fmt = key_format(state)
    if fmt == "timm":
        return OrderedDict(state)
    rules = _rules(fmt)
    mapped: dict[str, Tensor] = {}
    halves: dict[str, dict[str, Tensor]] = {}  # attn.kv key -> {"k": ..., "v": ...}
    unknown = []
    for key, tensor in state.items():
        name = key.removeprefix("segformer.")
        if name.startswith(CLASSIFIERS):
            continue
        new = next((rule(m) for pattern, rule in rules if (m := pattern.fullmatch(name))), None)
        if new is None:
            unknown.append(key)
        elif ".kv:" in new:  # stages.S.blocks.i.kv:k.weight -> stages.S.blocks.i.attn.kv.weight
            head, half_kind = new.split(".kv:")
            half, kind = half_kind.split(".")
            halves.setdefault(f"{head}.attn.kv.{kind}", {})[half] = tensor
        else:
            mapped[new] = tensor
    for key, pair in halves.items():
        if set(pair) != {"k", "v"}:
            unknown.append(f"{key} ({'key' if 'k' in pair else 'value'} without its partner)")
            continue
        mapped[key] = torch.cat([pair["k"], pair["v"]], 0)  # timm's kv: key rows first
    extra = sorted(k for k in mapped if k not in target)
    if unknown or extra:
        what = [*unknown[:3], *(f"{k} (from {fmt} names)" for k in extra[:3])]
        raise FusescopeError(
            f"{source}: {len(unknown) + len(extra)} tensors map to no tensor of this MiT "
            f"(another depth or release?), e.g. {', '.join(what)}"
        )
    missing = sorted(k for k in target if k not in mapped and not k.startswith("head."))
    if missing:
        raise FusescopeError(
            f"{source}: {fmt} weights lack {len(missing)} MiT tensors, e.g. {missing[:3]}"
        )
    wrong = [
        f"{k} {tuple(v.shape)} != {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if v.shape != target[k].shape
    ]
    if wrong:
        raise FusescopeError(f"{source}: shape mismatch: {'; '.join(wrong[:3])}")
    return OrderedDict((k, mapped[k]) for k in target if k in mapped)


def hub_weights(name: str) -> tuple[dict[str, Tensor], str]:
    """The ImageNet weights of `mit_bX` from the Hugging Face hub (`nvidia/mit-bX`) through
    huggingface_hub's cache: read from the cache when there (also with `HF_HUB_OFFLINE=1`),
    downloaded once otherwise. Returns the tensors and where they came from.

    Raises:
        FusescopeError: one line naming both ways out when they are neither cached nor
            reachable.
    """
    from huggingface_hub import hf_hub_download

    from fusescope.models.backbones import read_weight_file

    repo = HUB_REPOS[name]
    reasons = []
    for filename in HUB_FILES:
        try:
            path = hf_hub_download(repo, filename)
        except Exception as err:  # noqa: BLE001 - offline, not cached, no such file, no network
            reasons.append(f"{filename}: {type(err).__name__}")
            continue
        return read_weight_file(Path(path)), f"{repo}/{filename}"
    raise FusescopeError(
        f"backbone {name!r}: its ImageNet weights ({repo} on the Hugging Face hub) are not in "
        f"the local cache and cannot be downloaded ({'; '.join(reasons)}); connect to the "
        f"internet once (they are cached under HF_HOME), or set model.pretrained to a local "
        f"file: SegFormer's {name}.pth or the hub's model.safetensors"
    )
