"""The fusion-baseline matrix of CEN Table 2, and the plain multi-stream model.

`baseline` (one fusion op, for every task): `fusion` x `position` (x `shared` convolutions, a
host option).

* `fusion: concat`: the modalities' stage outputs are concatenated and reduced by a 1x1 conv
  (M*C -> C) + BN + ReLU.
* `fusion: attention`: self-attention fusion in the style of SSMA [CEN ref. 44]: a channel gate on
  the concatenation (1x1 conv M*C -> M*C/r, ReLU, 1x1 conv -> M*C, sigmoid) re-weights it, then a
  3x3 conv (M*C -> C) + BN + ReLU.
* `fusion: align`: no feature mixing; an MMD loss between the modalities' stage outputs (aux loss
  `align_mmd`, weight `align_weight`) pulls their distributions together [CEN eq. 3].
* `fusion: average`: the modalities' mean (CEN Table 4's extra translation baseline).

On the U-Net translator the concat / self-attention ops end in an instance norm instead of a
BatchNorm (translation nets train with batch 1, where batch statistics are one image's), and in
no norm at the innermost level, whose 1x1 map (U-Net-256) has no instance statistics either.

Two settings, as CEN Table 2:

* `streams: keep` (CEN's "same setting", Table 2 right): every modality keeps its own stream to
  the end (its own decoder pass, supervised as `per_modality`, combined by the learned
  ensemble); the fused feature is added to every modality's stream (`x_m + fused`) before the
  next stage and the decoder. `shared: true` shares the convolutions with private BNs (CEN's
  setting); `shared: false` gives each modality its own convolutions.
* `streams: merge` (the "commonly used setting", Table 2 left; needs `shared: false`): unshared
  streams up to the last fusion stage, where they merge into one stream that runs the rest of
  the encoder and one decoder. At an earlier fusion stage the fused feature carries on in the
  first modality's stream (the others stay pure, FuseNet-style) and feeds the decoder; a level
  without fusion gives the decoder the first modality's feature. This reproduces the paper's
  parameter totals: early fusion costs one extra stem-to-stage-2 copy, late fusion a second
  whole encoder. `align` merges by the mean of the streams (its MMD pulls them together).

Positions, stages numbered 1-4 (strides 4-32): `early` = stage 2, `middle` = stage 3, `late` =
stage 4, `all` = stages 1-4; a list of stages is accepted too. The U-Net translator has its own
table (CEN section 4.2: the 1st, the middle and the innermost level, `UNetEncoder.positions`).
The mapping follows the fusion parameter counts of CEN Table 2 for ResNet101 (widths
256/512/1024/2048): concat uses 0.6M / 2.1M / 8.4M / 11.2M parameters for early / middle / late /
all, i.e. 2C^2 with C = 512 / 1024 / 2048 and the sum over all four stages.

`multistream` (every task's multi-stream host with no op, `models/methods.py`): the same
network with no fusion at all (CEN Table 1, "shared convs, unshared BNs": the reference the fused
methods are measured against).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import (
    create_encoder,
    encoder_stages,
    feature_channels,
    feature_reductions,
)
from fusescope.models.core import (
    FusionOp,
    common_channels,
    modality_view,
    resize_to,
    stack_modalities,
    tile_channels,
)
from fusescope.models.decoders import build_decoder
from fusescope.models.methods import segmentation_host
from fusescope.models.norms import convert_modules
from fusescope.models.registry import FUSION_METHODS, FUSION_OPS
from fusescope.models.segmentor import Segmentor
from fusescope.models.sites import ForwardScope, Where
from fusescope.nn.layers import conv_bn_relu

FUSIONS = ("concat", "align", "attention", "average")
POSITIONS = {"early": (2,), "middle": (3,), "late": (4,), "all": (1, 2, 3, 4)}


def stack_channels(x5: Tensor) -> Tensor:
    """(B, M, C, H, W) -> (B, M*C, H, W): the modalities' features side by side (a view of the
    sample-major stack)."""
    return x5.flatten(1, 2)  # no sizes baked in: an ONNX export keeps any batch size


class MergeOp(FusionOp):
    """An op that fuses the modalities into one feature, `fuse(x5) -> (B, C, H, W)`; at a site
    of a multi-stream encoder the fused feature is added to every stream (CEN's "same
    setting"), when merging streams it replaces them."""

    layout = "map"

    def fuse(self, x5: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x5: Tensor, site: str) -> Tensor:
        return x5 + self.fuse(x5).unsqueeze(1)  # (B, M, C, H, W)


class ConcatFusion(MergeOp):
    """Concat + 1x1 conv-BN-ReLU."""

    def __init__(self, channels: int, num_modalities: int):
        super().__init__()
        self.reduce = conv_bn_relu(num_modalities * channels, channels, 1)

    def fuse(self, x5: Tensor) -> Tensor:  # (B, M, C, H, W) -> (B, C, H, W)
        return self.reduce(stack_channels(x5))


class AttentionFusion(MergeOp):
    """SSMA-style self-attention: channel gate on the concatenation, then 3x3 conv-BN-ReLU."""

    def __init__(self, channels: int, num_modalities: int, reduction: int = 16):
        super().__init__()
        width = num_modalities * channels
        hidden = max(width // reduction, 8)
        self.gate = nn.Sequential(
            nn.Conv2d(width, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, width, 1),
            nn.Sigmoid(),
        )
        self.reduce = conv_bn_relu(width, channels, 3)

    def fuse(self, x5: Tensor) -> Tensor:  # (B, M, C, H, W) -> (B, C, H, W)
        cat = stack_channels(x5)  # (B, M*C, H, W)
        return self.reduce(cat * self.gate(cat))


class AverageFusion(MergeOp):
    """The modalities' mean added to every stream (parameter-free)."""

    def fuse(self, x5: Tensor) -> Tensor:  # (B, M, C, H, W) -> (B, C, H, W)
        return x5.mean(1)


def pairwise_mmd(samples: Tensor, scales: tuple[float, ...] = (0.5, 1.0, 2.0)) -> Tensor:
    """Mean over modality pairs of the biased (V-statistic) squared MMD.

    Args:
        samples: (M, N, D), N samples per modality.
        scales: Gaussian kernel bandwidths, as multiples of the mean pairwise squared distance
            (detached, so the bandwidth does not chase the loss).
    """
    M, N, D = samples.shape
    z = samples.reshape(M * N, D)
    d2 = torch.cdist(z, z).pow(2)  # (M*N, M*N), every pair of samples at once
    base = d2.detach().mean().clamp_min(1e-6)
    k = sum(torch.exp(-d2 / (s * base)) for s in scales)
    block = k.view(M, N, M, N).mean(dim=(1, 3))  # (M, M): mean kernel between modalities
    diag = block.diagonal()
    per_pair = diag[:, None] + diag[None, :] - 2 * block  # MMD^2 of modality i vs j
    upper = torch.triu(torch.ones(M, M, dtype=torch.bool, device=z.device), diagonal=1)
    return per_pair[upper].mean()


class AlignFusion(MergeOp):
    """MMD between each pair of modalities' features; features pass unchanged.

    Samples are the feature vectors of an 8x8 average-pooled grid per image (B*64 samples of
    dimension C), enough to estimate a distribution with small batches at a small cost. The
    loss goes out with the forward that measured it (`ForwardScope.losses` at a site, `losses`
    when merging streams), never kept in the op.
    """

    uses_scope = True

    def __init__(self, weight: float, grid: int = 8):
        super().__init__()
        self.weight = weight
        self.grid = grid

    def losses(self, x5: Tensor) -> dict[str, Tensor]:
        M, C = x5.shape[1:3]
        pooled = F.adaptive_avg_pool2d(x5.flatten(0, 1), self.grid)
        samples = pooled.unflatten(0, (-1, M)).flatten(3)  # (B, M, C, g*g)
        samples = samples.permute(1, 0, 3, 2).reshape(M, -1, C)  # (M, N, C)
        return {"align_mmd": self.weight * pairwise_mmd(samples)}

    def fuse(self, x5: Tensor) -> Tensor:  # merging streams: their mean
        return x5.mean(1)

    def forward(self, x5: Tensor, site: str, scope: ForwardScope) -> Tensor:
        for name, value in self.losses(x5).items():
            scope.add_loss(name, value)
        return x5


def instance_normed(op: nn.Module, norm: bool = True) -> nn.Module:
    """`op` with every BatchNorm2d replaced by an affine InstanceNorm2d of the same width
    (`norm=False`: by nothing)."""
    for name, child in op.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(
                op,
                name,
                nn.InstanceNorm2d(child.num_features, affine=True) if norm else nn.Identity(),
            )
        else:
            instance_normed(child, norm)
    return op


# fusion name -> (channels, M, options) -> op
MAKERS: dict[str, Callable[..., MergeOp]] = {
    "concat": lambda c, M, opts: ConcatFusion(c, M),
    "attention": lambda c, M, opts: AttentionFusion(c, M, opts["attention_reduction"]),
    "align": lambda c, M, opts: AlignFusion(opts["align_weight"]),
    "average": lambda c, M, opts: AverageFusion(),
}


def position_stages(encoder, position: str | Sequence[int]) -> tuple[int, ...]:
    """The stages of a baseline `position` on `encoder` (a multi-stream encoder): its body's
    own table (`positions`, the U-Net's), else `POSITIONS`; or an explicit list of stages."""
    body = encoder.body
    table = body.positions() if hasattr(body, "positions") else POSITIONS
    if isinstance(position, str):
        if position not in table:
            raise OptionError(
                f"position must be one of {', '.join(table)} or a list of stages, not {position!r}"
            )
        return tuple(table[position])
    stages = tuple(sorted({int(s) for s in position}))
    if not stages or any(not 1 <= s <= encoder.num_stages for s in stages):
        raise OptionError(
            f"position stages must be in 1..{encoder.num_stages}, got {list(position)}"
        )
    return stages


def _check_baseline(fusion: str = "concat", **_) -> None:
    if fusion not in FUSIONS:
        raise OptionError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")


@FUSION_OPS.register(
    "baseline",
    check=_check_baseline,
    paper="CEN Table 2 / 4 fusion baselines (Wang et al., NeurIPS 2020)",
)
def baseline(
    model,
    *,
    fusion: str = "concat",
    position: str | list[int] = "all",
    align_weight: float = 0.1,
    attention_reduction: int = 16,
) -> None:
    """CEN Table 2's baselines in CEN's "same setting" (every stream to the end, the fused
    feature added to every stream): `fusion` concat | align | attention (self-attention) |
    average at `position` early | middle | late | all or a list of stages."""
    encoder = model.encoder
    M = encoder.num_modalities
    stages = position_stages(encoder, position)
    options = {"align_weight": align_weight, "attention_reduction": attention_reduction}
    on_levels = encoder.block_family == "level"

    def make(point) -> MergeOp:
        op = MAKERS[fusion](point.channels, M, options)
        if on_levels:  # instance norms; none at the innermost level (see the module doc)
            return instance_normed(op, norm=point.stage < encoder.num_stages)
        return op

    encoder.insert(Where(("stage_out",), stages=stages), make)


class MergedStreams(Segmentor):
    """The "commonly used setting" (see module doc): unshared streams (one grouped conv per
    layer over the modality-stacked batch, private BNs) up to the merge stage, one trunk after.

    Args:
        make_fusion: `(channels, M) -> op` with `op.fuse(x5) -> (B, C, H, W)`.
        stages: the fusion stages (1-4); the last one is where the streams merge.
    """

    def __init__(
        self,
        modalities,
        in_channels,
        num_classes,
        backbone,
        pretrained,
        decoder,
        make_fusion: Callable[[int, int], nn.Module],
        stages: tuple[int, ...],
    ):
        super().__init__(modalities, num_classes)
        M = len(modalities)
        if M < 2:
            raise OptionError(
                f"merging streams needs >= 2 modalities; data.modalities is {modalities}"
            )
        self.in_chans = common_channels(modalities, in_channels)
        plain = create_encoder(backbone, self.in_chans, pretrained)
        channels = feature_channels(plain)
        cut = encoder_stages(plain)  # holds plain's modules; only the cut pieces are registered
        merge = max(stages)
        self.streams = nn.ModuleList(convert_modules(st, M, shared=False) for st in cut[:merge])
        self.trunk = nn.ModuleList(cut[merge:])
        self.fuse = nn.ModuleDict({str(s): make_fusion(channels[s - 1], M) for s in stages})
        self.decoder = build_decoder(decoder, channels, feature_reductions(plain), num_classes)

    def forward(self, batch: dict[str, Tensor]) -> dict:
        inputs = self.inputs(batch)
        M, (H, W) = len(inputs), inputs[0].shape[-2:]
        x = stack_modalities([tile_channels(t, self.in_chans) for t in inputs])  # (B*M, C, H, W)
        levels = []
        measured: dict[str, Tensor] = {}  # losses the fusion ops measure on this forward
        for index, stage in enumerate(self.streams):
            x = stage(x)
            x5 = modality_view(x, M)  # (B, M, C, H, W)
            op = self.fuse[str(index + 1)] if str(index + 1) in self.fuse else None
            if op is None:
                levels.append(x5[:, 0])
                continue
            fused = op.fuse(x5)
            for name, value in (op.losses(x5) if hasattr(op, "losses") else {}).items():
                measured[name] = measured[name] + value if name in measured else value
            levels.append(fused)
            if index + 1 < len(self.streams):  # the first stream carries the fusion on
                x = torch.cat([fused.unsqueeze(1), x5[:, 1:]], dim=1).view_as(x)
        x = levels[-1]  # fused at the merge stage: from here on one stream
        for stage in self.trunk:
            x = stage(x)
            levels.append(x)
        return self.output(resize_to(self.decoder(levels), (H, W)), aux_losses=measured)


@FUSION_METHODS.register("baseline")
def segmentation_baseline(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
    shared: bool = True,
    fusion: str = "concat",
    position: str | list[int] = "all",
    align_weight: float = 0.1,
    attention_reduction: int = 16,
    streams: str = "keep",
) -> Segmentor:
    """CEN Table 2 baselines: the `baseline` op (`fusion`, `position`, `align_weight`,
    `attention_reduction`) on the multi-stream model with `shared` convolutions or not, or with
    `streams: merge` the commonly used setting (unshared streams merge into one after the last
    fusion stage; needs `shared: false`)."""
    _check_baseline(fusion)
    if streams not in ("keep", "merge"):
        raise OptionError(f"streams must be keep or merge, not {streams!r}")
    if streams == "keep":
        model = segmentation_host(
            modalities,
            in_channels,
            num_classes,
            backbone=backbone,
            pretrained=pretrained,
            decoder=decoder,
            shared=shared,
        )
        baseline(
            model,
            fusion=fusion,
            position=position,
            align_weight=align_weight,
            attention_reduction=attention_reduction,
        )
        return model
    if shared:
        raise OptionError(
            "streams: merge is the commonly used setting, whose streams do not "
            "share convolutions: set shared: false"
        )
    if isinstance(position, str):
        if position not in POSITIONS:
            raise OptionError(
                f"position must be one of {', '.join(POSITIONS)} or a list of "
                f"stages, not {position!r}"
            )
        stages = POSITIONS[position]
    else:
        stages = tuple(sorted({int(s) for s in position}))
        if not stages or any(s not in (1, 2, 3, 4) for s in stages):
            raise OptionError(f"position stages must be in 1-4, got {list(position)}")
    options = {"align_weight": align_weight, "attention_reduction": attention_reduction}
    return MergedStreams(
        modalities,
        in_channels,
        num_classes,
        backbone,
        pretrained,
        decoder,
        lambda channels, M: MAKERS[fusion](channels, M, options),
        stages,
    )
