"""Where fusion ops act: the sites of each block family, in one table, and the hooks that run an
op at a site in the modality view.

A multi-stream network (`models/multistream.py`) stacks the modalities on the batch axis,
`(B*M, ...)`. Its blocks are found by type (`BLOCKS`), each with the sites its family has; a
fusion method says where it acts with a `Where` (sites, stages, every block or the last of each
stage) and builds one op per `FusionPoint`, so no backbone knows a method by name and no method
knows a backbone by name.

Sites per block family:

    cnn          (ResNet BasicBlock / Bottleneck, EfficientNet DS / IR, ConvNeXt): the block's
                 spatial unit, the 3x3 / depthwise conv and the norm after it
                 conv_in    the input of the unit's conv (the residual shortcut is not touched)
                 norm_out   right after the unit's norm, before its activation (CEN's site)
                 act_out    right after the unit's activation (ConvNeXt: its norm's output)
    transformer  (ViT Block, PVTv2 / MiT Block, Swin block)
                 block_in   the block's input (the residual stream)
                 norm_out   the first norm's output, which feeds the attention
                 attn_mix   the attention's output before its projection (GeminiFusion's site)
                 attn_out   the attention branch's output before the residual add
                 mlp_out    the MLP branch's output before the residual add
                 block_out  the block's output
    level        (the U-Net translator's encoder level: one stride-2 conv and its norm)
                 norm_out   the level's norm output (levels with a norm)
    every family stage_out  a stage's output, before it feeds the next stage and the decoder

An op receives the site's tensor in the modality view: maps `(B, M, C, H, W)` for NCHW sites,
tokens `(B, M, N, C)` for token and channels-last sites (Swin's windowed attention gives its
tokens window by window). An op that sets `layout = "map"` gets maps everywhere (a token site's
patch tokens on their grid, the prefix tokens of a ViT passed through unchanged), and
`layout = "tokens"` gets tokens everywhere.

Hooks rather than wrapper modules keep every state-dict key and module name equal to the plain
encoder's (pretrained weights, checkpoints across methods, dissection taps); callable objects
rather than closures so `copy.deepcopy` of a model rewires its copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.convnext import ConvNeXtBlock
from timm.models.pvt_v2 import Block as PvtBlock
from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block as VitBlock
from torch import Tensor, nn

from fusescope.errors import OptionError

SITES = {
    "cnn": ("conv_in", "norm_out", "act_out", "stage_out"),
    "transformer": (
        "block_in",
        "norm_out",
        "attn_mix",
        "attn_out",
        "mlp_out",
        "block_out",
        "stage_out",
    ),
    "level": ("norm_out", "stage_out"),
}
ALL_SITES = tuple(dict.fromkeys(s for sites in SITES.values() for s in sites))


@dataclass(frozen=True)
class Site:
    """One site of a block: the submodule it hooks (`""`: the block itself), whether on its
    input (`pre`), output (`post`) or inside a `ModalityBatchNorm` (`norm`: between the norm
    and its activation; `act`: after the activation), and the tensor's layout there: `nchw`,
    `nhwc`, `tokens` (B, N, C) or `windows` (Swin's windowed attention)."""

    module: str
    hook: str
    layout: str


@dataclass(frozen=True)
class BlockKind:
    """The sites of a block type, the norm whose gammas CEN reads, and its widths."""

    family: str
    sites: dict[str, Site]
    norm: str
    conv: str | None = None  # the spatial unit's conv (its in/out widths)


def _cnn(conv: str, norm: str, act: str | None) -> BlockKind:
    return BlockKind(
        "cnn",
        {
            "conv_in": Site(conv, "pre", "nchw"),
            "norm_out": Site(norm, "norm", "nchw"),
            # the activation lives inside a BatchNormAct2d where act is None
            "act_out": Site(act, "post", "nchw") if act else Site(norm, "act", "nchw"),
        },
        norm,
        conv,
    )


def _transformer(layout: str, mlp_layout: str | None = None) -> BlockKind:
    return BlockKind(
        "transformer",
        {
            "block_in": Site("", "pre", layout),
            "norm_out": Site("norm1", "post", layout),
            "attn_mix": Site("attn.proj", "pre", "windows" if layout == "nhwc" else layout),
            "attn_out": Site("drop_path1", "pre", layout),
            "mlp_out": Site("drop_path2", "pre", mlp_layout or layout),
            "block_out": Site("", "post", layout),
        },
        "norm1",
    )


# block type -> its kind; the stem and blocks before the first feature level belong to stage 1
BLOCKS: dict[type, BlockKind] = {
    BasicBlock: _cnn("conv1", "bn1", "act1"),  # conv1's BN is the one followed by a ReLU
    Bottleneck: _cnn("conv2", "bn2", "act2"),
    DepthwiseSeparableConv: _cnn("conv_dw", "bn1", None),
    InvertedResidual: _cnn("conv_dw", "bn2", None),
    VitBlock: _transformer("tokens"),
    PvtBlock: _transformer("tokens"),
    SwinTransformerBlock: _transformer("nhwc", mlp_layout="tokens"),
}


def convnext_kind(block: ConvNeXtBlock) -> BlockKind:
    """ConvNeXt's unit is its depthwise conv and LayerNorm (no activation after the norm: the
    activation sits inside the MLP), channels-last unless the block keeps NCHW (`conv_mlp`)."""
    layout = "nchw" if block.use_conv_mlp else "nhwc"
    return BlockKind(
        "cnn",
        {
            "conv_in": Site("conv_dw", "pre", "nchw"),
            "norm_out": Site("norm", "post", layout),
            "act_out": Site("norm", "post", layout),
        },
        "norm",
        "conv_dw",
    )


def block_kind(module: nn.Module) -> BlockKind | None:
    """The kind of a block: a module may declare its own (`fusion_block_kind`, e.g. the U-Net
    translator's levels), else `BLOCKS` by type."""
    declared = getattr(type(module), "fusion_block_kind", None)
    if declared is not None:
        return declared
    if isinstance(module, ConvNeXtBlock):
        return convnext_kind(module)
    return BLOCKS.get(type(module))


# ---------------------------------------------------------------------------------------------
# where an op acts


@dataclass(frozen=True)
class Where:
    """Where a fusion op acts: `sites` in `stages` (1-based; None: every stage that has the
    sites), in every block or only the last block of each stage (ignored for `stage_out`)."""

    sites: tuple[str, ...]
    stages: tuple[int, ...] | None = None
    blocks: str = "all"  # all | last

    def __post_init__(self):
        bad = [s for s in self.sites if s not in ALL_SITES]
        if bad:
            raise OptionError(f"unknown fusion sites {bad}; known: {', '.join(ALL_SITES)}")
        if self.blocks not in ("all", "last"):
            raise OptionError(f"Where.blocks must be 'all' or 'last', not {self.blocks!r}")
        if "stage_out" in self.sites and len(self.sites) > 1:
            raise OptionError("stage_out cannot be combined with block sites in one Where")


@dataclass
class FusionPoint:
    """One place a fusion op is inserted; handed to the op factory.

    Attributes:
        name: dotted module path of the block (or stage) in the encoder.
        stage: 1-based stage.
        block: index of the block within its stage (-1 for `stage_out`).
        last: whether it is the last block of its stage.
        channels: channels at the point (the unit's norm width; the stage's output width).
        family: the block family (`cnn`, `transformer`, `level`).
        reduction: the stage's stride (a token grid is `ceil(H / reduction)` rows).
        norm: the per-modality norm of the unit (its gammas drive CEN), or None.
        in_channels: input channels of the unit's conv (None where there is none).
    """

    name: str
    stage: int
    block: int
    last: bool
    channels: int
    family: str
    reduction: int = 1
    norm: nn.Module | None = field(default=None, repr=False)
    in_channels: int | None = None

    @property
    def bn(self) -> nn.Module | None:  # the CNN name of the unit's norm
        return self.norm


# ---------------------------------------------------------------------------------------------
# one forward's state


class ForwardScope:
    """What fusion ops hand on within one encoder forward, and nothing across forwards.

    The encoder opens a fresh scope per forward and drops it when the forward ends (on an error
    too), so no op keeps tensors, or their autograd graphs, between calls. An op with
    `uses_scope = True` is called as `op(x5, site, scope)`:

    * `carry`: {op: value} one site of an op hands to a later site of the same op within the
      forward (AsymFusion: the shifted conv input, from `conv_in` to `act_out`; TokenFusion: the
      mask from `block_in` to `attn_out`);
    * `losses`: {name: scalar} auxiliary losses measured during the forward (the baselines'
      MMD, the flow's NLL, BMC), summed by name and returned with the features.
    * `batch`, `input_size`: the samples B and the encoder input's (H, W), from which a
      stage's token grid follows.
    """

    def __init__(self, batch: int = 0, input_size: tuple[int, int] = (0, 0)):
        self.carry: dict[nn.Module, Tensor] = {}
        self.losses: dict[str, Tensor] = {}
        self.batch = batch
        self.input_size = input_size

    def add_loss(self, name: str, value: Tensor) -> None:
        self.losses[name] = self.losses[name] + value if name in self.losses else value

    def grid(self, reduction: int) -> tuple[int, int]:
        """The token grid of a stage of stride `reduction` (patch embeddings pad, so it is
        the ceiling; integer arithmetic, so an exported graph keeps the size dynamic)."""
        h, w = self.input_size
        return -(-h // reduction), -(-w // reduction)


class ScopeSlot:
    """The scope of the forward in progress (None outside one); shared by an encoder's hooks."""

    def __init__(self):
        self.current: ForwardScope | None = None


class SiteHook:
    """Runs a fusion op at a site: on a module's input (forward pre-hook), its output (forward
    hook) or inside a `ModalityBatchNorm` (which calls `apply`), converting the site's tensor to
    the op's view and back (see the module docstring)."""

    def __init__(
        self,
        op: nn.Module,
        site: str,
        layout: str,
        point: FusionPoint,
        num_modalities: int,
        slot: ScopeSlot,
    ):
        self.op, self.site, self.layout, self.point = op, site, layout, point
        self.num_modalities, self.slot = num_modalities, slot
        self.wants = getattr(op, "layout", None)
        if layout == "windows" and self.wants == "map":
            raise OptionError(
                f"{type(op).__name__} needs feature maps; {point.name}'s {site} holds "
                f"window-partitioned tokens"
            )

    def call_op(self, view: Tensor) -> Tensor:
        if getattr(self.op, "uses_scope", False):
            return self.op(view, self.site, self.scope())
        return self.op(view, self.site)

    def scope(self) -> ForwardScope:
        if self.slot.current is None:
            raise RuntimeError(
                "a fusion op ran outside a forward scope (MultiStreamEncoder.run or "
                ".forward_scope())"
            )
        return self.slot.current

    def apply_map(self, x5: Tensor) -> Tensor:
        """The op on a `(B, M, C, H, W)` map view (inside a `ModalityBatchNorm`), in the
        layout the op asks for."""
        if self.wants != "tokens":
            return self.call_op(x5)
        B, M, C, H, W = x5.shape
        out = self.call_op(x5.reshape(B, M, C, H * W).transpose(2, 3))  # (B, M, H*W, C)
        return out.transpose(2, 3).reshape(x5.shape)

    def apply(self, x: Tensor) -> Tensor:
        # every reshape takes its sizes from the tensor (not flatten / unflatten), so a traced
        # ONNX graph keeps batch and image size dynamic
        M, layout, wants = self.num_modalities, self.layout, self.wants
        if layout == "nchw":
            BM, C, H, W = x.shape
            if wants == "tokens":  # (B*M, C, H, W) -> (B, M, H*W, C)
                tokens = x.reshape(BM // M, M, C, H * W).transpose(2, 3)
                return self.call_op(tokens).transpose(2, 3).reshape(x.shape)
            return self.call_op(x.reshape(BM // M, M, C, H, W)).reshape(x.shape)
        if layout == "nhwc" and wants == "map":  # (B*M, H, W, C) -> (B, M, C, H, W)
            BM, H, W, C = x.shape
            out = self.call_op(x.permute(0, 3, 1, 2).reshape(BM // M, M, C, H, W))
            return out.reshape(BM, C, H, W).permute(0, 2, 3, 1)
        if layout == "tokens" and wants == "map":
            return self.tokens_as_map(x)
        # tokens (B*M, N, C), channels-last maps (B*M, H, W, C) and windows (B*M*nW, Nw, C)
        # all keep modality m of sample b in one block of rows: (B, M, -1, C)
        rows = self.scope().batch if layout == "windows" else x.shape[0] // M
        return self.call_op(x.reshape(rows, M, -1, x.shape[-1])).reshape(x.shape)

    def tokens_as_map(self, x: Tensor) -> Tensor:
        """(B*M, P + h*w, C) tokens -> the op on (B, M, C, h, w); the P prefix tokens (a
        ViT's class token) pass unchanged."""
        M = self.num_modalities
        h, w = self.scope().grid(self.point.reduction)
        BM, N, C = x.shape
        prefix = N - h * w
        grid = x[:, prefix:].transpose(1, 2).reshape(BM // M, M, C, h, w)
        out = self.call_op(grid).reshape(BM, C, h * w).transpose(1, 2)  # (B*M, h*w, C)
        return out if prefix == 0 else torch.cat([x[:, :prefix], out], 1)

    def __call__(self, module: nn.Module, args: tuple, *output: Tensor):
        if output:  # forward hook
            return self.apply(output[0])
        return (self.apply(args[0]), *args[1:])
