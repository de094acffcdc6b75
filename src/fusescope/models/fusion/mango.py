"""MANGO: fusion by a multimodal attention-based normalizing flow on encoder features.

Each modality has its own encoder. At one level (`flow_stride`, 16 by default) both modalities'
features are projected to a common width, pooled to a fixed token grid and flattened to tokens
`[A tokens, B tokens]`; the flow G (models/flow.py) maps them to Z, which is reshaped back and fed
to the task head at that level (the paper's TaskHead(Z)). The decoder's other levels get the
per-level concatenation of both modalities reduced by a 1x1 conv, as in `two_stream_concat`, so
the segmentation head keeps its fine detail. The loss adds `nll_weight` times the negative
log-likelihood of the tokens under G with a standard normal prior, per dimension.

Design choices, where the paper leaves room:
- A fixed token grid (`grid`): LICA mixes all N tokens with an N x N matrix, so N must be fixed
  while inputs vary in size (scale augmentation, whole-frame and multi-scale evaluation). The
  flow level is adaptive-average-pooled to the grid and Z is resized back; with the grid equal to
  the training feature size nothing is lost there. `grid: null` runs at the native size and is
  allowed only without LICA. The grid also bounds the cost, which is O(N^2 D) per ICA layer.
- A scale-free latent: the projection ends in a BatchNorm without affine parameters. Without it
  the jointly trained encoder could shrink its features and drive the NLL to -infinity (a
  density grows without bound as its support contracts); fixing each channel's variance closes
  that shortcut.
- The flow runs in float32 under mixed precision: log-determinants sum thousands of terms.
- `latent: false` is the paper's "no latent model" ablation: no encoders, the flow runs on raw
  `flow_stride` x `flow_stride` pixel patches (depth tiled to the widest modality's channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import create_encoder, feature_channels, feature_reductions
from fusescope.models.decoders import build_decoder
from fusescope.models.flow import PARTITIONS, MangoFlow, bits_per_dim, nll_per_dim
from fusescope.models.registry import FUSION_METHODS
from fusescope.models.segmentor import Segmentor, output, resize_to, tile_channels
from fusescope.nn.layers import conv_bn_relu


class Mango(Segmentor):
    """Two encoders, the MANGO flow at one level, one decoder. See the module docstring.

    Parts under stable names for dissection taps: `encoders.{m}`, `to_tokens.{m}`, `flow`,
    `from_latent`, `fuse.{level}`, `decoder`.
    """

    def __init__(
        self,
        modalities: list[str],
        in_channels: dict[str, int],
        num_classes: int,
        *,
        backbone: str,
        pretrained: bool | str,
        decoder: str | dict,
        width: int,
        attn_dim: int,
        coupling_hidden: int,
        blocks: int,
        partitions: Sequence[str],
        coupling: bool,
        latent: bool,
        flow_stride: int,
        grid: Sequence[int] | None,
        nll_weight: float,
        log_scale_bound: float,
    ):
        super().__init__(modalities, num_classes)
        if len(modalities) != 2:
            raise OptionError(
                f"MANGO's partitions are defined for two modalities; "
                f"data.modalities is {modalities}"
            )
        unknown = sorted(set(partitions) - set(PARTITIONS))
        if unknown:
            raise OptionError(f"unknown partitions {unknown}; known: {', '.join(PARTITIONS)}")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise OptionError(f"grid must be [rows, cols] of positive ints or null, got {grid}")
        if grid is None and "lica" in partitions:
            raise OptionError(
                "LICA mixes a fixed number of tokens: set model.grid, or drop "
                "lica from model.partitions"
            )
        if grid is None and not latent:
            raise OptionError(
                "latent: false resizes the input to grid x flow_stride pixels: set model.grid"
            )
        if nll_weight < 0:
            raise OptionError(f"nll_weight must be >= 0, got {nll_weight}")
        self.grid = tuple(grid) if grid is not None else None
        self.latent = latent
        self.flow_stride = flow_stride
        self.nll_weight = nll_weight
        num_tokens = 2 * self.grid[0] * self.grid[1] if self.grid else None

        if latent:
            self.encoders = nn.ModuleDict(
                {m: create_encoder(backbone, in_channels[m], pretrained) for m in modalities}
            )
            first = self.encoders[modalities[0]]
            channels, reductions = feature_channels(first), feature_reductions(first)
            if flow_stride not in reductions:
                raise OptionError(
                    f"flow_stride {flow_stride} is not an encoder level; "
                    f"{backbone} has strides {reductions}"
                )
            self.level = reductions.index(flow_stride)
            self.to_tokens = nn.ModuleDict(
                {
                    m: nn.Sequential(
                        nn.Conv2d(channels[self.level], width, 1),
                        nn.BatchNorm2d(width, affine=False),
                    )
                    for m in modalities
                }
            )
            self.fuse = nn.ModuleDict(
                {
                    str(i): conv_bn_relu(2 * c, c, 1)
                    for i, c in enumerate(channels)
                    if i != self.level
                }
            )
            self.from_latent = conv_bn_relu(2 * width, channels[self.level], 1)
            self.token_dim = width
        else:
            self.pixel_channels = max(in_channels[m] for m in modalities)
            self.token_dim = self.pixel_channels * flow_stride**2
            channels, reductions = [2 * self.token_dim], [flow_stride]
        self.flow = MangoFlow(
            self.token_dim,
            blocks,
            num_tokens,
            partitions=tuple(partitions),
            coupling=coupling,
            attn_dim=attn_dim,
            hidden=coupling_hidden,
            log_scale_bound=log_scale_bound,
        )
        self.decoder = build_decoder(decoder, channels, reductions, num_classes)
        self._stats: dict[str, Tensor] = {}

    # ----------------------------------------------------------------------------- tokens
    def _feature_tokens(self, m: str, feature: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.to_tokens[m](feature)  # (B, D, h, w)
        if self.grid is not None and tuple(x.shape[-2:]) != self.grid:
            x = F.adaptive_avg_pool2d(x, self.grid)
        grid = tuple(x.shape[-2:])
        return x.flatten(2).transpose(1, 2), grid  # (B, n, D), n = rows * cols

    def _pixel_tokens(self, x: Tensor) -> Tensor:
        size = (self.grid[0] * self.flow_stride, self.grid[1] * self.flow_stride)
        x = resize_to(tile_channels(x, self.pixel_channels), size)
        x = F.pixel_unshuffle(x, self.flow_stride)  # (B, C p^2, rows, cols)
        return x.flatten(2).transpose(1, 2)  # (B, n, C p^2)

    def _run_flow(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Z for tokens (B, N, D); records the NLL per dimension for the loss and the stats."""
        dtype = torch.promote_types(tokens.dtype, torch.float32)
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            z, log_prob = self.flow.log_prob(tokens.to(dtype))
        dims = tokens.shape[1] * tokens.shape[2]
        nll = nll_per_dim(log_prob, dims).mean()
        # kept as tensors: converting to floats here would sync the device every step
        self._stats = {
            "flow_nll_nats": nll.detach(),
            "flow_bpd": bits_per_dim(log_prob, dims).mean().detach(),
        }
        return z, nll

    @staticmethod
    def _tokens_to_map(z: Tensor, grid: tuple[int, int]) -> Tensor:
        b, num, d = z.shape
        # (B, 2n, D) -> (B, 2, rows, cols, D) -> (B, 2D, rows, cols), modality A's channels first
        return z.view(b, 2, *grid, d).permute(0, 1, 4, 2, 3).reshape(b, 2 * d, *grid)

    # ---------------------------------------------------------------------------- forward
    def onnx_unsupported(self) -> str | None:
        """Why ONNX export with dynamic height and width is impossible (None if it is not)."""
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

    def forward(self, batch: dict[str, Tensor]) -> dict:
        inputs = self.inputs(batch)
        size = inputs[0].shape[-2:]
        if not self.latent:
            tokens = torch.cat([self._pixel_tokens(x) for x in inputs], dim=1)  # (B, 2n, C p^2)
            z, nll = self._run_flow(tokens)
            levels = [self._tokens_to_map(z.to(inputs[0].dtype), self.grid)]
        else:
            per_stream = [self.encoders[m](x) for m, x in zip(self.modalities, inputs, strict=True)]
            pairs = [
                self._feature_tokens(m, feats[self.level])
                for m, feats in zip(self.modalities, per_stream, strict=True)
            ]
            tokens = torch.cat([t for t, _ in pairs], dim=1)  # (B, 2n, D)
            z, nll = self._run_flow(tokens)
            z_map = self._tokens_to_map(z.to(tokens.dtype), pairs[0][1])
            level_size = per_stream[0][self.level].shape[-2:]
            levels = []
            for i, level in enumerate(zip(*per_stream, strict=True)):
                if i == self.level:
                    levels.append(resize_to(self.from_latent(z_map), level_size))
                else:
                    levels.append(self.fuse[str(i)](torch.cat(level, dim=1)))
        logits = resize_to(self.decoder(levels), size)
        return output(logits, aux_losses={"flow_nll": self.nll_weight * nll})

    def training_stats(self) -> dict[str, float]:
        """The last batch's unweighted NLL per dimension under the flow (`flow_nll_nats`; the aux
        loss `flow_nll` is this times nll_weight) and the same in bits per dimension."""
        return {k: float(v) for k, v in self._stats.items()}


@FUSION_METHODS.register("mango")
def mango(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
    width: int = 64,
    attn_dim: int = 64,
    coupling_hidden: int = 128,
    blocks: int = 12,
    partitions: Sequence[str] = PARTITIONS,
    coupling: bool = True,
    latent: bool = True,
    flow_stride: int = 16,
    grid: Sequence[int] | None = (8, 8),
    nll_weight: float = 0.1,
    log_scale_bound: float = 2.0,
) -> Segmentor:
    """MANGO (Truong et al.): the multimodal attention-based latent normalizing flow.

    Args:
        backbone, pretrained: each modality's encoder (`create_encoder`).
        decoder: task head name or {name, **options}.
        width: token features D (1x1 projection of the flow level).
        attn_dim: ICA query/key width.
        coupling_hidden: affine coupling conditioner width.
        blocks: flow blocks L (paper: 12).
        partitions: ICA families per block, a subset of [mmca, imca, lica] (table 5: [mmca],
            [mmca, imca], [mmca, imca, lica]; [] with coupling: true is the coupling-only flow of
            table 4).
        coupling: the affine coupling at the end of each block.
        latent: run the flow on encoder features (true) or on raw pixel patches (table 6).
        flow_stride: the encoder stride whose features the flow models (latent: true), or the
            pixel patch size (latent: false).
        grid: [rows, cols] token grid per modality (fixed N, needed by LICA); null: native size.
        nll_weight: weight of the flow's NLL per dimension (nats) in the loss.
        log_scale_bound: tanh bound of the coupling's log-scale.
    """
    return Mango(
        modalities,
        in_channels,
        num_classes,
        backbone=backbone,
        pretrained=pretrained,
        decoder=decoder,
        width=width,
        attn_dim=attn_dim,
        coupling_hidden=coupling_hidden,
        blocks=blocks,
        partitions=list(partitions),
        coupling=coupling,
        latent=latent,
        flow_stride=flow_stride,
        grid=list(grid) if grid is not None else None,
        nll_weight=nll_weight,
        log_scale_bound=log_scale_bound,
    )
