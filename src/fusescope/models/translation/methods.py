"""The translation methods: every fusion method that makes sense for a pix2pix U-Net.

Each builder is `builder(modalities, in_channels, out_channels, **model_cfg) -> UNetTranslator`
and takes the U-Net's size: `depth` (encoder levels; 8 is the papers' U-Net-256), `width`
(pix2pix's ngf, 64) and `dropout` (innermost decoder levels with dropout 0.5; pix2pix: 3).

Single stream: `unimodal` (one input), `early_concat` (inputs concatenated on the channel axis).
Multi-stream (shared convs, private instance norms, per-modality outputs + learned ensemble, as
CEN's translation code): `multistream` (no fusion), `cen`, `asymfusion`, `baseline` (concat /
align / self-attention at early / middle / late / all levels), `mango`.

Levels are numbered 1..depth from the finest (stride 2) to the innermost (1x1 at 256 px for
depth 8). CEN and AsymFusion act where the encoder has instance norms, levels 2..depth-1 (CEN's
code: conv2..conv7); the baselines at CEN Table 4's positions (`position_levels`).

Every multi-stream builder takes `decoder_norms`: shared (the paper's text) or private (the
CEN code) instance-norm affines in the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

from fusescope.errors import OptionError
from fusescope.models.flow import PARTITIONS
from fusescope.models.fusion.baselines import AlignFusion, AttentionFusion, ConcatFusion
from fusescope.models.fusion.exchange import ChannelExchange, check_exchange_options
from fusescope.models.multistream import FusionPoint
from fusescope.models.translation.fusion import (
    AverageFusion,
    LatentFlowFusion,
    LevelShuffleShift,
    instance_normed,
)
from fusescope.models.translation.registry import TRANSLATION_METHODS
from fusescope.models.translation.unet import UNetTranslator

FUSIONS = ("concat", "align", "attention", "average")
POSITIONS = ("early", "middle", "late", "all")


def position_levels(position: str | Sequence[int], depth: int) -> tuple[int, ...]:
    """Encoder levels of a baseline position, CEN section 4.2's for U-Net-256 (depth 8):
    early = the 1st conv layer, middle = the 4th (depth / 2), late = the 8th (the innermost),
    all = every level; or an explicit list of levels."""
    if isinstance(position, str):
        table = {
            "early": (1,),
            "middle": (max(1, depth // 2),),
            "late": (depth,),
            "all": tuple(range(1, depth + 1)),
        }
        if position not in table:
            raise OptionError(
                f"position must be one of {', '.join(POSITIONS)} or a list of "
                f"levels, not {position!r}"
            )
        return table[position]
    levels = tuple(sorted({int(v) for v in position}))
    if not levels or any(not 1 <= v <= depth for v in levels):
        raise OptionError(f"position levels must be in 1..{depth}, got {list(position)}")
    return levels


def normed_levels(levels: Sequence[int] | None, depth: int) -> tuple[int, ...]:
    """CEN / AsymFusion levels: the given ones (each must have a norm) or all normed ones."""
    if levels is None:
        return tuple(range(2, depth))
    chosen = tuple(sorted({int(v) for v in levels}))
    if not chosen or any(not 2 <= v <= depth - 1 for v in chosen):
        raise OptionError(
            f"levels must be in 2..{depth - 1} (the encoder levels with an "
            f"instance norm), got {list(levels)}"
        )
    return chosen


def _needs_streams(modalities: list[str], method: str) -> None:
    if len(modalities) < 2:
        raise OptionError(f"{method} fuses >= 2 modalities; data.modalities is {modalities}")


@TRANSLATION_METHODS.register("unimodal")
def unimodal(
    modalities, in_channels, out_channels, depth: int = 8, width: int = 64, dropout: int = 3
) -> UNetTranslator:
    """pix2pix on one input modality."""
    if len(modalities) != 1:
        raise OptionError(f"unimodal reads one modality; data.modalities is {modalities}")
    return UNetTranslator(
        modalities,
        in_channels,
        out_channels,
        streams="concat",
        depth=depth,
        width=width,
        dropout=dropout,
    )


@TRANSLATION_METHODS.register("early_concat")
def early_concat(
    modalities, in_channels, out_channels, depth: int = 8, width: int = 64, dropout: int = 3
) -> UNetTranslator:
    """pix2pix on the channel-concatenation of the inputs (input-level fusion)."""
    return UNetTranslator(
        modalities,
        in_channels,
        out_channels,
        streams="concat",
        depth=depth,
        width=width,
        dropout=dropout,
    )


@TRANSLATION_METHODS.register("multistream")
def multistream(
    modalities,
    in_channels,
    out_channels,
    depth: int = 8,
    width: int = 64,
    dropout: int = 3,
    decoder_norms: str = "shared",
) -> UNetTranslator:
    """Shared convs, private instance norms, per-modality outputs + ensemble; no fusion."""
    _needs_streams(modalities, "multistream")
    return UNetTranslator(
        modalities,
        in_channels,
        out_channels,
        depth=depth,
        width=width,
        dropout=dropout,
        decoder_norms=decoder_norms,
    )


@TRANSLATION_METHODS.register("cen")
def cen(
    modalities,
    in_channels,
    out_channels,
    depth: int = 8,
    width: int = 64,
    dropout: int = 3,
    theta: float = 1e-2,
    l1_weight: float = 1e-3,
    mode: str = "exchange",
    split: bool = True,
    random_portion: float = 0.3,
    gamma_lr_scale: float = 1.0,
    exchange_scope: str = "own_part",
    levels: list[int] | None = None,
    decoder_norms: str = "shared",
) -> UNetTranslator:
    """CEN for translation (section 4.2): channel exchange guided by the private instance
    norms' gammas at every normed encoder level (`levels`, default 2..depth-1), `theta` 1e-2,
    l1 sparsity `l1_weight` 1e-3 on each modality's own part of the gammas.

    The options are those of the segmentation `cen` (`fusescope.models.fusion.exchange`):
    `exchange_scope: any` is the authors' code (any channel below theta is exchanged; the l1
    stays on the own part), `gamma_lr_scale` lets gammas that start at 1 reach theta within a
    short from-scratch budget (Adam moves a parameter by ~lr per step).
    """
    _needs_streams(modalities, "cen")
    check_exchange_options(theta, l1_weight, mode, random_portion, gamma_lr_scale, exchange_scope)

    def exchange(level: int, channels: int, norm) -> ChannelExchange:
        point = FusionPoint(
            name=f"down.{level - 1}",
            stage=level,
            block=0,
            last=True,
            channels=channels,
            bn=norm,
            in_channels=None,
        )
        return ChannelExchange(
            point, theta, l1_weight, mode, split, random_portion, gamma_lr_scale, exchange_scope
        )

    return UNetTranslator(
        modalities,
        in_channels,
        out_channels,
        depth=depth,
        width=width,
        dropout=dropout,
        fusion=exchange,
        fusion_levels=normed_levels(levels, depth),
        decoder_norms=decoder_norms,
    )


@TRANSLATION_METHODS.register("asymfusion")
def asymfusion(
    modalities,
    in_channels,
    out_channels,
    depth: int = 8,
    width: int = 64,
    dropout: int = 3,
    shuffle: bool = True,
    shift: bool = True,
    levels: list[int] | None = None,
    decoder_norms: str = "shared",
) -> UNetTranslator:
    """AsymFusion's shuffle and shift at the normed encoder levels (`levels`, default
    2..depth-1), on each level's output (see `fusion.LevelShuffleShift`)."""
    _needs_streams(modalities, "asymfusion")
    if not (shuffle or shift):
        raise OptionError("asymfusion needs shuffle or shift (use name: multistream for neither)")
    return UNetTranslator(
        modalities,
        in_channels,
        out_channels,
        depth=depth,
        width=width,
        dropout=dropout,
        fusion=lambda level, channels, norm: LevelShuffleShift(channels, shuffle, shift),
        fusion_levels=normed_levels(levels, depth),
        decoder_norms=decoder_norms,
    )


@TRANSLATION_METHODS.register("baseline")
def baseline(
    modalities,
    in_channels,
    out_channels,
    depth: int = 8,
    width: int = 64,
    dropout: int = 3,
    fusion: str = "concat",
    position: str | list[int] = "all",
    align_weight: float = 0.1,
    attention_reduction: int = 16,
    decoder_norms: str = "shared",
) -> UNetTranslator:
    """CEN Table 4's baselines on the U-Net (CEN's "same setting": every stream to the end, the
    fused feature added to every stream): `fusion` concat | align | attention (self-attention)
    | average at `position` early | middle | late | all (`position_levels`) or a list of
    levels. At the innermost level the concat / attention ops have no norm (1x1 maps)."""
    _needs_streams(modalities, "baseline")
    if fusion not in FUSIONS:
        raise OptionError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
    M = len(modalities)

    def make(level: int, channels: int, norm):
        if fusion == "concat":
            return instance_normed(ConcatFusion(channels, M), norm=level < depth)
        if fusion == "attention":
            return instance_normed(
                AttentionFusion(channels, M, attention_reduction), norm=level < depth
            )
        if fusion == "average":
            return AverageFusion()
        return AlignFusion(align_weight)

    return UNetTranslator(
        modalities,
        in_channels,
        out_channels,
        depth=depth,
        width=width,
        dropout=dropout,
        fusion=make,
        fusion_levels=position_levels(position, depth),
        decoder_norms=decoder_norms,
    )


@TRANSLATION_METHODS.register("mango")
def mango(
    modalities,
    in_channels,
    out_channels,
    depth: int = 8,
    width: int = 64,
    dropout: int = 3,
    level: int | None = None,
    flow_width: int = 64,
    grid: list[int] = (4, 4),
    blocks: int = 2,
    partitions: Sequence[str] = PARTITIONS,
    coupling: bool = True,
    attn_dim: int = 64,
    coupling_hidden: int = 128,
    nll_weight: float = 0.1,
    log_scale_bound: float = 2.0,
    decoder_norms: str = "shared",
) -> UNetTranslator:
    """MANGO's latent flow (`fusion.LatentFlowFusion`) on the encoder features of `level`
    (default depth - 3: 8x8 at 256 px for U-Net-256). `blocks`: flow blocks L (paper: 12);
    `partitions`: ICA families per block; `grid`: token grid per modality."""
    if len(modalities) != 2:
        raise OptionError(
            f"MANGO's partitions are defined for two modalities; data.modalities is {modalities}"
        )
    unknown = sorted(set(partitions) - set(PARTITIONS))
    if unknown:
        raise OptionError(f"unknown partitions {unknown}; known: {', '.join(PARTITIONS)}")
    chosen = max(1, depth - 3) if level is None else int(level)
    if not 1 <= chosen <= depth - 1:
        raise OptionError(f"level must be in 1..{depth - 1}, got {level}")

    def make(lvl: int, channels: int, norm) -> LatentFlowFusion:
        return LatentFlowFusion(
            channels,
            width=flow_width,
            grid=list(grid),
            blocks=blocks,
            partitions=partitions,
            coupling=coupling,
            attn_dim=attn_dim,
            hidden=coupling_hidden,
            nll_weight=nll_weight,
            log_scale_bound=log_scale_bound,
        )

    return UNetTranslator(
        modalities,
        in_channels,
        out_channels,
        depth=depth,
        width=width,
        dropout=dropout,
        fusion=make,
        fusion_levels=(chosen,),
        decoder_norms=decoder_norms,
    )
