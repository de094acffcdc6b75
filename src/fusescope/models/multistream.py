"""Multi-stream networks: one timm CNN shared by M modalities, with private BatchNorms.

Module surgery turns a `create_encoder` encoder (or any conv/BN module, e.g. a decoder) into an
M-stream network (CEN section 3.4, AsymFusion's parameter-sharing scheme):

* the modalities are stacked along the batch axis, sample-major: `[B*M, C, H, W]`, row
  `b*M + m` holding modality m of sample b (`stack_modalities`), so every shared convolution
  runs once for all modalities;
* every `BatchNorm2d` (timm's `BatchNormAct2d` included, which keeps its activation) becomes a
  `ModalityBatchNorm`: M sets of statistics and affine parameters, each initialised from the
  (pretrained) BN. Sample-major stacking makes `(B*M, C, H, W)` and `(B, M*C, H, W)` the same
  memory, so one native `batch_norm` call over M*C channels normalises every modality with its
  own statistics: no copy, no loop over modalities, the speed of the native kernel (modality-
  major stacking would need a transposed copy in and out of every BN; `benchmarks/fusion_speed.py`);
* with `shared=False` every convolution becomes a `ModalityConv2d` (M private filters run as one
  grouped convolution over the same free `(B, M*C, H, W)` view): the "commonly used" unshared
  setting of CEN Table 2.

Fusion ops act on the `(B, M, C, H, W)` view (modality axis 1) at *points* the encoder
exposes. A fusion method declares where it acts with a `Where` (site kind, stages, all blocks
or the last block of each stage) and a factory building one op per matching point; the encoder
knows no method by name.
Sites, per residual block's *spatial unit* (the 3x3 / depthwise conv whose BN feeds an
activation: BasicBlock conv1/bn1/act1, Bottleneck conv2/bn2/act2, EfficientNet conv_dw and the
BatchNormAct2d after it), plus one per stage:

* `conv_in`:  the input of the unit's conv (the residual shortcut is not touched);
* `bn_out`:   right after the unit's BN, before its activation;
* `act_out`:  right after the unit's activation;
* `stage_out`: the output of a stage, before it feeds the next stage and the decoder.

Stages are numbered 1-4 from the encoder's `feature_info` (strides 4, 8, 16, 32); blocks before
the first feature level (EfficientNet's `blocks.0`) belong to stage 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import create_encoder, feature_channels, feature_reductions
from fusescope.models.decoders import build_decoder
from fusescope.models.segmentor import Segmentor, output, resize_to, tile_channels
from fusescope.nn.norm import combine_moments

SITES = ("conv_in", "bn_out", "act_out", "stage_out")

# (conv, bn, act) attribute names of each block type's spatial unit; act None: inside the BN
SPATIAL_UNITS: dict[type, tuple[str, str, str | None]] = {
    BasicBlock: ("conv1", "bn1", "act1"),  # conv1's BN is the one followed by a ReLU
    Bottleneck: ("conv2", "bn2", "act2"),
    DepthwiseSeparableConv: ("conv_dw", "bn1", None),
    InvertedResidual: ("conv_dw", "bn2", None),
}


# ---------------------------------------------------------------------------------------------
# per-modality layers


def stack_modalities(tensors: list[Tensor]) -> Tensor:
    """M tensors `(B, ...)` -> `(B*M, ...)`, sample-major: row `b*M + m` is modality m of b."""
    return torch.stack(tensors, dim=1).flatten(0, 1)


def modality_view(x: Tensor, num_modalities: int) -> Tensor:
    """`(B*M, ...)` -> `(B, M, ...)`, a view (the inverse of `stack_modalities`)."""
    return x.unflatten(0, (-1, num_modalities))


class ModalityBatchNorm(nn.Module):
    """M BatchNorms over a modality-stacked batch, with fusion slots between norm and activation.

    Equals M separate `BatchNorm2d` calls (train and eval, running statistics included) but runs
    as one native `batch_norm` (cuDNN / MIOpen / CPU kernel, as the device has it) over the
    `(B, M*C, H, W)` view of the sample-major stack, channel `m*C + c` being channel c of
    modality m; the (M, C) parameters and buffers are flattened as views, so the kernel updates
    the running statistics in place. Under mixed precision the
    statistics are computed and kept in float32 (the native kernel does so for a bf16/fp16 input
    with float32 parameters), and the output has the input's dtype.

    Args:
        num_features: channels C.
        num_modalities: M.
        eps, momentum: as `nn.BatchNorm2d` (momentum None: cumulative average).
        act: activation applied after normalisation (timm's BatchNormAct2d carries one).
        drop: drop layer between norm and activation (BatchNormAct2d's `drop`).

    `gather_stats`, when set (the engine's `convert_batchnorm` does it for multi-process runs),
    stacks a tensor from every process, differentiably; training statistics are then those of
    the global batch, per modality, as SyncBatchNorm gives a plain BatchNorm.
    """

    is_norm = True  # the engine's protocol (fusescope.nn.norm): no weight decay,
    tracks_batch_stats = True  # frozen by train.freeze_bn_stats, statistics gathered in DDP

    def __init__(
        self,
        num_features: int,
        num_modalities: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        act: nn.Module | None = None,
        drop: nn.Module | None = None,
    ):
        super().__init__()
        self.num_features = num_features
        self.num_modalities = num_modalities
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_modalities, num_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_features))
        self.register_buffer("running_mean", torch.zeros(num_modalities, num_features))
        self.register_buffer("running_var", torch.ones(num_modalities, num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()
        # fusion slots: (op, site) pairs; plain lists so the ops stay registered only once
        # (in MultiStreamEncoder.fusion) and the state-dict keys do not depend on the method
        self.after_norm: list[tuple[nn.Module, str]] = []
        self.after_act: list[tuple[nn.Module, str]] = []
        self.gather_stats: Callable[[Tensor], Tensor] | None = None

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, num_modalities: int) -> ModalityBatchNorm:
        """Every modality starts from `bn`'s parameters and running statistics."""
        if not (bn.affine and bn.track_running_stats):
            raise OptionError(
                f"{type(bn).__name__} without affine parameters or running "
                f"statistics is not supported"
            )
        act = drop = None
        if isinstance(bn, BatchNormAct2d):
            act, drop = bn.act, bn.drop
        elif type(bn) is not nn.BatchNorm2d:
            raise OptionError(f"unsupported BatchNorm subclass {type(bn).__name__}")
        new = cls(bn.num_features, num_modalities, bn.eps, bn.momentum, act=act, drop=drop)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, name).copy_(getattr(bn, name).detach().expand(num_modalities, -1))
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
        return new.to(bn.weight.device)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, modalities={self.num_modalities}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.gather_stats is not None:
            y = self._global_norm(x)
        else:
            factor = 0.0
            if self.training:
                self.num_batches_tracked.add_(1)
                # momentum None: cumulative average, as nn.BatchNorm2d (which also reads the
                # count on the host here)
                factor = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
            M = self.num_modalities
            BM, C, H, W = x.shape
            # the (M, C) parameters and statistics flattened as views: modality m's channel c
            # is channel m*C + c, and the kernel updates the running statistics in place
            y = F.batch_norm(
                x.reshape(BM // M, M * C, H, W),  # (B, M*C, H, W): the same memory
                self.running_mean.view(-1),
                self.running_var.view(-1),
                self.weight.view(-1),
                self.bias.view(-1),
                self.training,
                factor,
                self.eps,
            )
            # back to (B*M, C, H, W) as `_unsafe_view`: the same memory, but not an autograd
            # view of the kernel's output (a temporary nothing else holds, and batch norm's
            # backward does not need it), so the in-place ReLU / `+= shortcut` that timm blocks
            # apply to a BN's output stay cheap (on a view, autograd would copy the whole
            # tensor in backward)
            if torch.onnx.is_in_onnx_export():  # ONNX has no _unsafe_view; no backward there
                y = y.reshape(BM, C, H, W)
            else:
                y = torch.ops.aten._unsafe_view(y.contiguous(), (BM, C, H, W))
        if not self.after_norm:
            y = self.act(self.drop(y))
            if not self.after_act:
                return y
        y5 = modality_view(y, self.num_modalities)  # (B, M, C, H, W)
        for op, site in self.after_norm:
            y5 = op(y5, site)
        if self.after_norm:  # the activation acts on the ops' output itself, not a view of it
            y5 = self.act(self.drop(y5))
        for op, site in self.after_act:
            y5 = op(y5, site)
        return y5.reshape(y.shape)

    def _global_norm(self, x: Tensor) -> Tensor:
        """Training normalisation with the global batch's per-modality moments (several
        processes), differentiable through the gathered moments; statistics in float32."""
        M = self.num_modalities
        BM, C, H, W = x.shape
        xf = x.float()
        wide = xf.view(BM // M, M * C, H, W)
        var, mean = torch.var_mean(wide, dim=(0, 2, 3), correction=0)  # (M*C,) each
        n = wide.numel() // (M * C)
        count = torch.full((1,), n, dtype=xf.dtype, device=xf.device)
        stacked = self.gather_stats(torch.cat([mean, var, count]))  # (P, 2*M*C + 1)
        MC = M * C
        mean, var, total = combine_moments(
            stacked[:, :MC], stacked[:, MC : 2 * MC], stacked[:, 2 * MC :]
        )
        mean, var = mean.view(M, C), var.view(M, C)
        self._update_running_stats(mean, var, total[0])
        # y = (x - mean) / sqrt(var + eps) * gamma + beta, folded to one multiply-add; the
        # (M, C) factors repeated per sample give one row per (sample, modality)
        scale = self.weight * torch.rsqrt(var + self.eps)  # (M, C)
        shift = self.bias - mean * scale
        rows = BM // M
        y = torch.addcmul(
            shift.repeat(rows, 1)[:, :, None, None], xf, scale.repeat(rows, 1)[:, :, None, None]
        )
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d (no host sync)
            factor = 1.0 / self.num_batches_tracked.to(mean.dtype)
        else:
            factor = self.momentum
        # BatchNorm2d keeps the unbiased variance in its running estimate
        unbiased = var * (n / (n - 1).clamp(min=1))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


class ModalityConv2d(nn.Module):
    """M private copies of a convolution, run as one grouped convolution (unshared streams).

    The filters of modality m are rows `[m*C_out, (m+1)*C_out)` of `weight`, each initialised
    from the source conv.
    """

    def __init__(self, conv: nn.Conv2d, num_modalities: int):
        super().__init__()
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
            raise OptionError(
                f"cannot unshare {type(conv).__name__} (padding_mode={conv.padding_mode})"
            )
        self.num_modalities = num_modalities
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups * num_modalities
        self.weight = nn.Parameter(conv.weight.detach().repeat(num_modalities, 1, 1, 1))
        self.bias = (
            nn.Parameter(conv.bias.detach().repeat(num_modalities))
            if conv.bias is not None
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, modalities={self.num_modalities}, "
            f"stride={self.stride}, groups={self.groups}"
        )

    def forward(self, x: Tensor) -> Tensor:
        M = self.num_modalities
        BM, C, H, W = x.shape
        # (B*M, C, H, W) is (B, M*C, H, W) in memory: modality m is channel group m of a
        # grouped conv, and its output (B, M*C', H', W') is again (B*M, C', H', W')
        y = F.conv2d(
            x.reshape(BM // M, M * C, H, W),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return y.view(BM, y.shape[1] // M, *y.shape[2:])


def convert_modules(module: nn.Module, num_modalities: int, shared: bool = True) -> nn.Module:
    """In place: every BatchNorm2d -> ModalityBatchNorm; with `shared=False` also every Conv2d
    -> ModalityConv2d. Returns `module`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, ModalityBatchNorm.from_batchnorm(child, num_modalities))
        elif isinstance(child, nn.Conv2d) and not shared:
            setattr(module, name, ModalityConv2d(child, num_modalities))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise OptionError(f"{name}: {type(child).__name__} cannot be made per-modality")
        else:
            convert_modules(child, num_modalities, shared)
    return module


class ForwardScope:
    """What fusion ops hand on within one encoder forward, and nothing across forwards.

    `MultiStreamEncoder.run` opens a fresh scope per forward and drops it when the forward ends
    (on an error too), so no op keeps tensors, or their autograd graphs, between calls. An op
    with `uses_scope = True` is called as `op(x5, site, scope)`:

    * `carry`: {op: value} one site of an op hands to a later site of the same op within the
      forward (AsymFusion: the shifted conv input, from `conv_in` to `act_out`);
    * `losses`: {name: scalar} auxiliary losses measured during the forward (the baselines'
      MMD), summed by name and returned by `run` beside the features.
    """

    def __init__(self):
        self.carry: dict[nn.Module, Tensor] = {}
        self.losses: dict[str, Tensor] = {}

    def add_loss(self, name: str, value: Tensor) -> None:
        self.losses[name] = self.losses[name] + value if name in self.losses else value


class ScopeSlot:
    """The scope of the forward in progress (None outside one); shared by an encoder's hooks."""

    def __init__(self):
        self.current: ForwardScope | None = None


class ScopedOp:
    """A fusion op as its site calls it: `(x5, site) -> x5`, with the forward's scope passed on
    to ops that declare `uses_scope`."""

    def __init__(self, op: nn.Module, slot: ScopeSlot):
        self.op, self.slot = op, slot

    def __call__(self, x5: Tensor, site: str) -> Tensor:
        if getattr(self.op, "uses_scope", False):
            if self.slot.current is None:
                raise RuntimeError(
                    "a scoped fusion op ran outside a forward scope "
                    "(MultiStreamEncoder.run or .forward_scope())"
                )
            return self.op(x5, site, self.slot.current)
        return self.op(x5, site)


class SiteHook:
    """Runs a fusion op on a module's input (forward pre-hook) or output (forward hook) in the
    `(B, M, C, H, W)` view.

    Hooks rather than wrapper modules keep every state-dict key and module name equal to the
    plain timm encoder's (pretrained weights, checkpoints across methods, dissection taps); a
    callable object rather than a closure so `copy.deepcopy` of a model rewires its copy.
    """

    def __init__(self, op: ScopedOp, site: str, num_modalities: int, on_input: bool):
        self.op, self.site, self.num_modalities, self.on_input = op, site, num_modalities, on_input

    def _apply(self, x: Tensor) -> Tensor:
        return self.op(modality_view(x, self.num_modalities), self.site).reshape(x.shape)

    def __call__(self, module: nn.Module, args: tuple, *output: Tensor):
        if self.on_input:
            return (self._apply(args[0]), *args[1:])
        return self._apply(output[0])


# ---------------------------------------------------------------------------------------------
# fusion points


@dataclass(frozen=True)
class Where:
    """Where a fusion method acts: `sites` (see module doc) in `stages` (1-based), in every
    block or only the last block of each stage (ignored for `stage_out`)."""

    sites: tuple[str, ...]
    stages: tuple[int, ...] = (1, 2, 3, 4)
    blocks: str = "all"  # all | last

    def __post_init__(self):
        bad = [s for s in self.sites if s not in SITES]
        if bad:
            raise OptionError(f"unknown fusion sites {bad}; known: {', '.join(SITES)}")
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
        channels: channels at the point (the unit's BN width; the stage's output width).
        bn: the unit's ModalityBatchNorm (its gammas drive CEN); None for `stage_out`.
        in_channels: input channels of the unit's conv (None for `stage_out`).
    """

    name: str
    stage: int
    block: int
    last: bool
    channels: int
    bn: ModalityBatchNorm | None = field(default=None, repr=False)
    in_channels: int | None = None


@dataclass
class _Block:
    name: str
    module: nn.Module
    stage: int
    index: int = 0
    last: bool = False


class MultiStreamEncoder(nn.Module):
    """A timm `features_only` encoder made M-stream by module surgery (see module doc).

    Args:
        encoder: from `fusescope.models.backbones.create_encoder` (pretrained weights already in).
        num_modalities: M >= 2.
        shared: share the convolutions (CEN); False keeps one private copy per modality.

    `forward((B*M, C, H, W)) -> [(B*M, C_l, H_l, W_l) per level]` (sample-major stacks, see
    `stack_modalities`); `feature_info` is the source encoder's.
    """

    def __init__(self, encoder: nn.Module, num_modalities: int, shared: bool = True):
        super().__init__()
        if num_modalities < 2:
            raise OptionError(f"a multi-stream encoder needs >= 2 modalities, got {num_modalities}")
        self.num_modalities = num_modalities
        self.shared = shared
        self.feature_info = encoder.feature_info
        self.body = convert_modules(encoder, num_modalities, shared)
        self.fusion = nn.ModuleDict()
        self.scope_slot = ScopeSlot()
        self._stage_modules = [d["module"] for d in encoder.feature_info.get_dicts()]
        self._blocks = self._find_blocks()

    def _find_blocks(self) -> list[_Block]:
        names = [n for n, _ in self.body.named_modules()]
        # a module's position = the position of its last descendant in named_modules order
        stage_end = []
        for stage_name in self._stage_modules:
            inside = [
                i for i, n in enumerate(names) if n == stage_name or n.startswith(stage_name + ".")
            ]
            stage_end.append(max(inside))
        blocks: list[_Block] = []
        for i, (name, module) in enumerate(self.body.named_modules()):
            if type(module) in SPATIAL_UNITS:
                stage = next((s + 1 for s, end in enumerate(stage_end) if i <= end), None)
                if stage is not None:
                    blocks.append(_Block(name, module, stage))
        for stage in {b.stage for b in blocks}:
            in_stage = [b for b in blocks if b.stage == stage]
            for j, b in enumerate(in_stage):
                b.index, b.last = j, j == len(in_stage) - 1
        return blocks

    def points(self, where: Where) -> list[FusionPoint]:
        """The points `where` selects, in forward order."""
        num_stages = len(self._stage_modules)
        bad = [s for s in where.stages if not (isinstance(s, int) and 1 <= s <= num_stages)]
        if bad or not where.stages or len(set(where.stages)) != len(where.stages):
            raise OptionError(
                f"stages {list(where.stages)}: each must be a distinct stage "
                f"number in 1..{num_stages} of this backbone"
            )
        if where.sites == ("stage_out",):
            chans = self.feature_info.channels()
            return [
                FusionPoint(self._stage_modules[s - 1], s, -1, True, chans[s - 1])
                for s in where.stages
            ]
        out = []
        for b in self._blocks:
            if b.stage in where.stages and (where.blocks == "all" or b.last):
                conv_name, bn_name, _ = SPATIAL_UNITS[type(b.module)]
                bn = getattr(b.module, bn_name)
                conv = getattr(b.module, conv_name)
                out.append(
                    FusionPoint(
                        b.name,
                        b.stage,
                        b.index,
                        b.last,
                        bn.num_features,
                        bn,
                        in_channels=conv.in_channels,
                    )
                )
        return out

    def insert(self, where: Where, factory: Callable[[FusionPoint], nn.Module]) -> list[nn.Module]:
        """Build one op per point with `factory` and wire it into every site of `where`.

        An op is called as `op(x5, site) -> x5` with `x5` of shape (B, M, C, H, W); it is
        registered under `fusion.<point name>` (dots as underscores).
        """
        points = self.points(where)
        if not points:
            kinds = sorted({type(b.module).__name__ for b in self._blocks})
            raise OptionError(
                f"{where} selects no fusion point in this backbone (recognised blocks: {kinds})"
            )
        ops = []
        for point in points:
            op = factory(point)
            key = point.name.replace(".", "_")
            if key in self.fusion:
                raise OptionError(f"a fusion op is already registered at {point.name}")
            self.fusion[key] = op
            for site in where.sites:
                self._wire(point, site, op)
            ops.append(op)
        return ops

    def _wire(self, point: FusionPoint, site: str, op: nn.Module) -> None:
        M = self.num_modalities
        op = ScopedOp(op, self.scope_slot)
        if site == "stage_out":
            stage = self.body.get_submodule(point.name)
            stage.register_forward_hook(SiteHook(op, site, M, on_input=False))
            return
        block = self.body.get_submodule(point.name)
        conv_name, bn_name, act_name = SPATIAL_UNITS[type(block)]
        if site == "bn_out":
            getattr(block, bn_name).after_norm.append((op, site))
            act = getattr(block, act_name) if act_name is not None else None
            if getattr(act, "inplace", False):
                # the op's output reaches the activation as a (B*M, ...) view of its
                # (B, M, ...) result; in place on a view, autograd would copy it in backward
                act.inplace = False
        elif site == "act_out" and act_name is None:  # activation lives in the BN module
            getattr(block, bn_name).after_act.append((op, site))
        elif site == "act_out":
            getattr(block, act_name).register_forward_hook(SiteHook(op, site, M, False))
        else:  # conv_in
            getattr(block, conv_name).register_forward_pre_hook(SiteHook(op, site, M, True))

    def run(self, x: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Features per level and the auxiliary losses fusion ops measured in this forward."""
        if x.shape[0] % self.num_modalities:
            raise ValueError(
                f"batch {x.shape[0]} is not a multiple of {self.num_modalities} modalities"
            )
        with self.forward_scope() as scope:
            return self.body(x), scope.losses

    @contextlib.contextmanager
    def forward_scope(self) -> Iterator[ForwardScope]:
        """A fresh scope for the fusion ops of one forward (`run` opens one; open one to run a
        block of `body` directly), dropped when it ends."""
        scope = ForwardScope()
        self.scope_slot.current = scope
        try:
            yield scope
        finally:
            self.scope_slot.current = None

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.run(x)[0]


def fusion_ops(module: nn.Module) -> Iterable[nn.Module]:
    """Every fusion op of a model (anything registered under a MultiStreamEncoder.fusion)."""
    for m in module.modules():
        if isinstance(m, MultiStreamEncoder):
            yield from m.fusion.values()


# ---------------------------------------------------------------------------------------------
# helpers for fusion ops


def sum_aux_losses(ops: Iterable[nn.Module]) -> dict[str, Tensor]:
    """The ops' `aux_losses()` summed by name, in a fixed order (the loss sums its parts)."""
    losses: dict[str, Tensor] = {}
    for op in ops:
        for name, value in getattr(op, "aux_losses", dict)().items():
            losses[name] = losses[name] + value if name in losses else value
    return losses


def mean_of_others(x5: Tensor) -> Tensor:
    """(B, M, ...) -> (B, M, ...): entry m is the mean over the other modalities (CEN eq. 6).

    For M = 2 an exact swap; otherwise a (M x M) mixing matrix keeps it one vectorised op. The
    result is contiguous in the (B, M, ...) order, so it folds back to `(B*M, ...)` for free.
    """
    M = x5.shape[1]
    if M == 2:
        return x5.flip(1)
    mix = (1.0 - torch.eye(M, device=x5.device, dtype=x5.dtype)) / (M - 1)
    # view_as, not view(x5.shape): a traced export keeps the sizes dynamic (view(shape) bakes
    # in the example's batch, height and width)
    return torch.matmul(mix, x5.reshape(x5.shape[0], M, -1)).view_as(x5)


class Ensemble(nn.Module):
    """Learned ensemble of per-modality logits (CEN eq. 4, AsymFusion): alpha (M, init 1) ->
    softmax -> weighted sum. The logits are detached, so the ensemble's loss trains alpha only
    (each modality's own branch is supervised through its `per_modality` output)."""

    def __init__(self, num_modalities: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(num_modalities))

    def forward(self, logits5: Tensor) -> Tensor:  # (M, B, K, H, W) -> (B, K, H, W)
        weights = torch.softmax(self.alpha, 0).to(logits5.dtype)
        return torch.tensordot(weights, logits5.detach(), dims=1)


# ---------------------------------------------------------------------------------------------
# the segmentor every multi-stream method builds on


def common_channels(modalities: list[str], in_channels: dict[str, int]) -> int:
    """The channel count every modality is tiled to (depth: 1 channel -> 3, as CEN feeds it)."""
    target = max(in_channels[m] for m in modalities)
    bad = [m for m in modalities if in_channels[m] not in (1, target)]
    if bad:
        raise OptionError(
            f"shared convolutions need equal input channels: {bad} have "
            f"{[in_channels[m] for m in bad]}, others {target} (only 1-channel "
            f"inputs are tiled)"
        )
    return target


class MultiStreamSegmentor(Segmentor):
    """M streams through one encoder-decoder with shared convolutions and private BNs; each
    stream predicts (`per_modality`), and the learned `Ensemble` of them is scored (`logits`).

    Fusion methods call `self.encoder.insert(where, factory)` after construction. Fusion ops
    may define `aux_losses() -> {name: scalar}` (already weighted; summed over ops by name) and
    `stat_parts() -> {name: (numerator tensor, denominator)}` (summed over ops by name and
    divided in `training_stats`, with one host transfer) and `lr_scales() -> [(param, scale)]`.

    Args:
        shared: share convolutions across modalities (encoder and decoder); False: unshared.
    """

    def __init__(
        self,
        modalities: list[str],
        in_channels: dict[str, int],
        num_classes: int,
        backbone: str = "resnet18",
        pretrained: bool | str = False,
        decoder: str | dict = "light",
        shared: bool = True,
    ):
        super().__init__(modalities, num_classes)
        M = len(modalities)
        if M < 2:
            raise OptionError(
                f"a multi-stream model needs >= 2 modalities; data.modalities is {modalities}"
            )
        self.in_chans = common_channels(modalities, in_channels)
        plain = create_encoder(backbone, self.in_chans, pretrained)
        dec = build_decoder(
            decoder, feature_channels(plain), feature_reductions(plain), num_classes
        )
        self.encoder = MultiStreamEncoder(plain, M, shared=shared)
        self.decoder = convert_modules(dec, M, shared=shared)
        self.ensemble = Ensemble(M)

    def forward(self, batch: dict[str, Tensor]) -> dict:
        inputs = self.inputs(batch)
        B, _, H, W = inputs[0].shape
        M = len(self.modalities)
        x = stack_modalities([tile_channels(t, self.in_chans) for t in inputs])  # (B*M, C, H, W)
        features, measured = self.encoder.run(x)
        small = modality_view(self.decoder(features), M)  # (B, M, K, h, w)
        # modality-major before upsampling, where the copy is small: each modality's full-size
        # logits are then contiguous for its loss
        small = small.transpose(0, 1).flatten(0, 1)  # (M*B, K, h, w)
        logits5 = resize_to(small, (H, W)).unflatten(0, (M, -1))  # (M, B, K, H, W)
        per_modality = dict(zip(self.modalities, logits5.unbind(0), strict=True))
        return output(self.ensemble(logits5), per_modality, {**self.aux_losses(), **measured})

    def combine_present(self, per_modality: dict[str, Tensor], present: list[str]) -> Tensor:
        """The ensemble over the present modalities only (a modality absent at inference): the
        learned alpha renormalised over them by a softmax restricted to the present streams."""
        alpha = self.ensemble.alpha
        mask = torch.tensor([m in present for m in self.modalities], device=alpha.device)
        weights = torch.softmax(alpha.masked_fill(~mask, float("-inf")), 0)
        logits5 = torch.stack([per_modality[m] for m in self.modalities])  # (M, B, K, H, W)
        return torch.tensordot(weights.to(logits5.dtype), logits5, dims=1)

    def aux_losses(self) -> dict[str, Tensor]:
        """Losses of the ops' parameters (CEN's L1 on its gammas); those measured on features
        during a forward come from `encoder.run`."""
        return sum_aux_losses(fusion_ops(self))

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        return [pair for op in fusion_ops(self) for pair in getattr(op, "lr_scales", list)()]

    @torch.no_grad()
    def training_stats(self) -> dict[str, float]:
        num: dict[str, list[Tensor]] = {}
        den: dict[str, float] = {}
        for op in fusion_ops(self):
            for name, (n, d) in getattr(op, "stat_parts", dict)().items():
                num.setdefault(name, []).append(n.float().reshape(()))
                den[name] = den.get(name, 0.0) + float(d)
        if not num:
            return {}
        totals = torch.stack([torch.stack(v).sum() for v in num.values()]).tolist()
        return {name: t / max(den[name], 1.0) for name, t in zip(num, totals, strict=True)}
