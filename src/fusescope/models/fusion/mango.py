"""MANGO: fusion by a multimodal attention-based normalizing flow (Truong et al.).

`LatentFlow` is the one MANGO glue every task uses: two modalities' tokens are mapped by the
flow G (`models/flow.py`, L blocks of MMCA / IMCA / LICA invertible cross-attention layers and an
affine coupling) to Z, and the negative log-likelihood of the tokens under G with a standard
normal prior, per dimension, times `nll_weight`, is the aux loss `flow_nll`.

* On a multi-stream model (segmentation, translation; the `mango` op of `FUSION_OPS`) it acts
  at one stage's output (`stage`, default the stride-16 stage of an encoder, level depth - 3 of
  the U-Net): each modality's map is projected to `flow_width` channels by a shared 1x1 conv
  and normalised per token without affine parameters (a scale-free latent: a jointly trained
  encoder cannot shrink its features to drive the NLL to -infinity, and a per-token norm keeps
  samples independent at any batch size), pooled to a fixed `grid` (or kept at the native
  size, `grid: null`: the flow then runs on every token the encoder gives), flattened to tokens
  `[A tokens, B tokens]` and mapped to Z. Z, back on the grid, both modalities' parts side by
  side, is projected to the stage's width by a 1x1 conv, resized to the stage's size and added
  to both streams (`combine: add`, the fused feature every stream carries on with, as the
  baselines' keep-streams setting) or replaces them (`combine: replace`: every stream then
  reads the flow's output, MANGO's TaskHead(Z)).
* The classification model (`models/classification/mango.py`) gives it slot tokens of a poster
  and a plot, which share no grid, through `flow_tokens`.

Design choices, where the paper leaves room:
- A fixed token grid (`grid`): LICA mixes all N tokens with an N x N matrix, so N must be fixed
  while inputs vary in size (scale augmentation, whole-frame and multi-scale evaluation); the
  grid also bounds the cost, O(N^2 D) per ICA layer. `grid: null` is allowed only without LICA.
- The flow runs in float32 under mixed precision: log-determinants sum thousands of terms.
- `latent: false` (segmentation, the paper's "no latent model" ablation, Table 6): no encoder;
  the flow runs on raw `patch` x `patch` pixel patches of both inputs (1-channel ones tiled to
  the widest) and the decoder reads Z.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.core import FusionOp, resize_to, tile_channels
from fusescope.models.decoders import build_decoder
from fusescope.models.flow import PARTITIONS, MangoFlow, bits_per_dim, nll_per_dim
from fusescope.models.methods import segmentation_host
from fusescope.models.registry import FUSION_METHODS, FUSION_OPS
from fusescope.models.segmentor import Segmentor
from fusescope.models.sites import ForwardScope, Where

COMBINES = ("add", "replace")


class LatentFlow(FusionOp):
    """MANGO's flow over two modalities' tokens (see the module docstring).

    Args:
        channels: the stage's width (None: token mode only, `flow_tokens`).
        flow_width: token features D.
        grid: [rows, cols] token grid per modality, or None (the native size).
        num_tokens: the flow's token count where there is no grid (slot tokens), else None.
        blocks, partitions, coupling, attn_dim, hidden, log_scale_bound: the flow.
        nll_weight: weight of the NLL per dimension (nats) in the loss.
        combine: "add" or "replace" (see the module docstring).
    """

    uses_scope = True
    layout = "map"

    def __init__(
        self,
        channels: int | None,
        *,
        flow_width: int,
        grid: Sequence[int] | None,
        blocks: int,
        partitions: Sequence[str],
        coupling: bool,
        attn_dim: int,
        hidden: int,
        nll_weight: float,
        log_scale_bound: float,
        combine: str = "add",
        num_tokens: int | None = None,
    ):
        super().__init__()
        self.grid = tuple(int(g) for g in grid) if grid is not None else None
        self.nll_weight = nll_weight
        self.combine = combine
        if self.grid is not None:
            num_tokens = 2 * self.grid[0] * self.grid[1]
        if channels is not None:
            self.to_tokens = nn.Conv2d(channels, flow_width, 1)
        self.flow = MangoFlow(
            flow_width,
            blocks,
            num_tokens,
            partitions=tuple(partitions),
            coupling=coupling,
            attn_dim=attn_dim,
            hidden=hidden,
            log_scale_bound=log_scale_bound,
        )
        if channels is not None:
            self.from_latent = nn.Conv2d(2 * flow_width, channels, 1)
        self._stats: dict[str, Tensor] = {}

    def flow_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens (B, N, D), modality A's first, -> (Z, the NLL per dimension, batch mean).
        Runs in float32; records the unweighted NLL for `stat_parts`."""
        dtype = torch.promote_types(tokens.dtype, torch.float32)
        # the meta device (parameter / FLOP counts) has no autocast, nor needs one
        device = tokens.device.type
        full_precision = (
            contextlib.nullcontext()
            if device == "meta"
            else torch.autocast(device_type=device, enabled=False)
        )
        with full_precision:
            z, log_prob = self.flow.log_prob(tokens.to(dtype))
        dims = tokens.shape[1] * tokens.shape[2]
        nll = nll_per_dim(log_prob, dims).mean()
        # kept as tensors: converting to floats here would sync the device every step
        self._stats = {
            "flow_nll_nats": nll.detach(),
            "flow_bpd": bits_per_dim(log_prob, dims).mean().detach(),
        }
        return z.to(tokens.dtype), nll

    def fuse_maps(self, x5: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2, C, H, W) -> (the fused map (B, C, H, W), the unweighted NLL)."""
        B, M, C, H, W = x5.shape
        maps = self.to_tokens(x5.flatten(0, 1))  # (B*2, D, H, W)
        if self.grid is not None and tuple(maps.shape[-2:]) != self.grid:
            maps = F.adaptive_avg_pool2d(maps, self.grid)
        rows, cols = maps.shape[-2:]
        # scale-free tokens: each token normalised over its D features, no affine
        tokens = F.layer_norm(maps.flatten(2).transpose(1, 2), (maps.shape[1],))  # (B*2, n, D)
        z, nll = self.flow_tokens(tokens.unflatten(0, (B, M)).flatten(1, 2))  # (B, 2n, D)
        # (B, 2n, D) -> (B, 2, rows, cols, D) -> (B, 2D, rows, cols): modality A's features first
        z_map = z.view(B, M, rows, cols, -1).permute(0, 1, 4, 2, 3).reshape(B, -1, rows, cols)
        return resize_to(self.from_latent(z_map), (H, W)), nll

    def forward(self, x5: Tensor, site: str, scope: ForwardScope) -> Tensor:
        fused, nll = self.fuse_maps(x5)
        scope.add_loss("flow_nll", self.nll_weight * nll)
        if self.combine == "replace":
            return fused.unsqueeze(1).expand_as(x5).contiguous()
        return x5 + fused.unsqueeze(1)

    def onnx_unsupported(self) -> str:
        """Why ONNX export with a dynamic height and width cannot work."""
        if self.grid is None:
            # found by export's check against PyTorch: right at the traced size only
            return (
                "its flow's token partitions follow the token count, which tracing freezes "
                "at the export size (ONNX Runtime differs from PyTorch at other sizes)"
            )
        return (
            f"its fixed token grid (model.grid {list(self.grid)}, needed by LICA) is an "
            f"adaptive average pool over a size-dependent window, which torch's ONNX "
            f"exporter cannot express for a variable input size"
        )

    def stat_parts(self) -> dict[str, tuple[Tensor, float]]:
        """The last batch's unweighted NLL per dimension under the flow (`flow_nll_nats`; the aux
        loss `flow_nll` is this times nll_weight) and the same in bits per dimension."""
        return {name: (value, 1.0) for name, value in self._stats.items()}


def check_flow_options(
    partitions: Sequence[str] = PARTITIONS,
    grid: Sequence[int] | None = (8, 8),
    nll_weight: float = 0.1,
    combine: str = "add",
    **_,
) -> None:
    unknown = sorted(set(partitions) - set(PARTITIONS))
    if unknown:
        raise OptionError(f"unknown partitions {unknown}; known: {', '.join(PARTITIONS)}")
    if grid is not None and (len(grid) != 2 or min(grid) < 1):
        raise OptionError(f"grid must be [rows, cols] of positive ints or null, got {grid}")
    if grid is None and "lica" in partitions:
        raise OptionError(
            "LICA mixes a fixed number of tokens: set model.grid, or drop lica from "
            "model.partitions"
        )
    if nll_weight < 0:
        raise OptionError(f"nll_weight must be >= 0, got {nll_weight}")
    if combine not in COMBINES:
        raise OptionError(f"combine must be one of {', '.join(COMBINES)}, not {combine!r}")


def default_flow_stage(encoder) -> int:
    """The U-Net's own choice (`UNetEncoder.flow_stage`: level depth - 3, 8x8 at 256 px); on a
    single-scale encoder (ViT: every stage at the patch stride) its last stage, the tokens the
    encoder gives; else the encoder stage of stride 16."""
    body = encoder.body
    if hasattr(body, "flow_stage"):
        return body.flow_stage()
    if len(set(encoder.stage_strides)) == 1:
        return encoder.num_stages
    reductions = list(encoder.feature_info.reduction())
    return reductions.index(16) + 1 if 16 in reductions else min(3, encoder.num_stages)


@FUSION_OPS.register(
    "mango",
    check=check_flow_options,
    paper="MANGO: Multimodal Attention-based Normalizing Flow (Truong et al.)",
    task_defaults={"translation": {"grid": (4, 4), "blocks": 2}},
)
def mango(
    model,
    *,
    stage: int | None = None,
    flow_width: int = 64,
    grid: Sequence[int] | None = (8, 8),
    blocks: int = 12,
    partitions: Sequence[str] = PARTITIONS,
    coupling: bool = True,
    attn_dim: int = 64,
    coupling_hidden: int = 128,
    nll_weight: float = 0.1,
    log_scale_bound: float = 2.0,
    combine: str = "add",
) -> None:
    """MANGO's latent flow at the output of `stage` (see the module docstring).

    Args:
        stage: the stage whose features the flow models (default: stride 16; a ViT's last
            stage; the U-Net's level depth - 3).
        flow_width: token features D (a 1x1 projection of the stage's map).
        grid: [rows, cols] token grid per modality (fixed N, needed by LICA); null: native size.
        blocks: flow blocks L (paper: 12).
        partitions: ICA families per block, a subset of [mmca, imca, lica] (table 5: [mmca],
            [mmca, imca], [mmca, imca, lica]; [] with coupling: true is the coupling-only flow of
            table 4).
        coupling: the affine coupling at the end of each block.
        attn_dim, coupling_hidden, log_scale_bound: ICA query/key width, coupling conditioner
            width, tanh bound of the coupling's log-scale.
        nll_weight: weight of the flow's NLL per dimension (nats) in the loss.
        combine: add the fused map to every stream, or replace the streams by it.
    """
    encoder = model.encoder
    if encoder.num_modalities != 2:
        raise OptionError(
            f"MANGO's partitions are defined for two modalities; data.modalities is "
            f"{model.modalities}"
        )
    chosen = default_flow_stage(encoder) if stage is None else int(stage)
    if not 1 <= chosen <= encoder.num_stages:
        raise OptionError(f"stage must be in 1..{encoder.num_stages}, got {stage}")
    encoder.insert(
        Where(("stage_out",), stages=(chosen,)),
        lambda point: LatentFlow(
            point.channels,
            flow_width=flow_width,
            grid=grid,
            blocks=blocks,
            partitions=partitions,
            coupling=coupling,
            attn_dim=attn_dim,
            hidden=coupling_hidden,
            nll_weight=nll_weight,
            log_scale_bound=log_scale_bound,
            combine=combine,
        ),
    )


class PixelFlowSegmentor(Segmentor):
    """`latent: false`: the flow on raw pixel patches of both inputs, the decoder on Z."""

    def __init__(self, modalities, in_channels, num_classes, decoder, patch, flow: dict):
        super().__init__(modalities, num_classes)
        if flow["grid"] is None:
            raise OptionError("latent: false resizes the input to grid x patch pixels: set grid")
        self.patch = patch
        self.grid = tuple(flow["grid"])
        self.pixel_channels = max(in_channels[m] for m in modalities)
        dim = self.pixel_channels * patch**2
        self.flow = LatentFlow(None, flow_width=dim, **flow)
        self.decoder = build_decoder(decoder, [2 * dim], [patch], num_classes)

    def _pixel_tokens(self, x: Tensor) -> Tensor:
        size = (self.grid[0] * self.patch, self.grid[1] * self.patch)
        x = resize_to(tile_channels(x, self.pixel_channels), size)
        x = F.pixel_unshuffle(x, self.patch)  # (B, C p^2, rows, cols)
        return x.flatten(2).transpose(1, 2)  # (B, n, C p^2)

    def onnx_unsupported(self) -> str | None:
        return (
            f"its fixed token grid (model.grid {list(self.grid)}) resizes the input by a "
            f"size-dependent factor, which torch's ONNX exporter cannot express for a variable "
            f"input size"
        )

    def forward(self, batch: dict[str, Tensor]) -> dict:
        inputs = self.inputs(batch)
        tokens = torch.cat([self._pixel_tokens(x) for x in inputs], dim=1)  # (B, 2n, C p^2)
        z, nll = self.flow.flow_tokens(tokens)
        B, rows, cols = z.shape[0], *self.grid
        z_map = z.view(B, 2, rows, cols, -1).permute(0, 1, 4, 2, 3).reshape(B, -1, rows, cols)
        logits = resize_to(self.decoder([z_map]), inputs[0].shape[-2:])
        return self.output(logits, aux_losses={"flow_nll": self.flow.nll_weight * nll})


@FUSION_METHODS.register("mango")
def segmentation_mango(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
    shared: bool = True,
    stage: int | None = None,
    flow_width: int = 64,
    grid: Sequence[int] | None = (8, 8),
    blocks: int = 12,
    partitions: Sequence[str] = PARTITIONS,
    coupling: bool = True,
    attn_dim: int = 64,
    coupling_hidden: int = 128,
    nll_weight: float = 0.1,
    log_scale_bound: float = 2.0,
    combine: str = "add",
    latent: bool = True,
    patch: int = 16,
) -> Segmentor:
    """MANGO for segmentation: the `mango` op on the multi-stream model (`shared: true` shares
    the encoder's weights with private norms, as TokenFusion's encoders; `shared: false` gives
    each modality its own convolutions, the paper's two encoders, on convolutional backbones),
    or with `latent: false` the flow on raw `patch` x `patch` pixel patches (Table 6). Flow
    options: see the `mango` op."""
    flow = {
        "grid": list(grid) if grid is not None else None,
        "blocks": blocks,
        "partitions": list(partitions),
        "coupling": coupling,
        "attn_dim": attn_dim,
        "nll_weight": nll_weight,
        "log_scale_bound": log_scale_bound,
    }
    check_flow_options(**flow, combine=combine)
    if len(modalities) != 2:
        raise OptionError(
            f"MANGO's partitions are defined for two modalities; data.modalities is {modalities}"
        )
    if not latent:
        flow["hidden"] = coupling_hidden
        return PixelFlowSegmentor(modalities, in_channels, num_classes, decoder, patch, flow)
    model = segmentation_host(
        modalities,
        in_channels,
        num_classes,
        backbone=backbone,
        pretrained=pretrained,
        decoder=decoder,
        shared=shared,
    )
    mango(
        model,
        stage=stage,
        flow_width=flow_width,
        coupling_hidden=coupling_hidden,
        combine=combine,
        **{k: v for k, v in flow.items()},
    )
    return model
