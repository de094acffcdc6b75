"""The pix2pix U-Net generator (Isola et al. 2017), as CEN section 4.2 fuses it.

Encoder level i (1..D) is a 4x4 stride-2 conv to `width * min(2^(i-1), 8)` channels; levels
2..D-1 are pre-activated by LeakyReLU(0.2) and followed by an instance norm, the first level has
neither, the innermost (1x1 at 256 px for D = 8, "U-Net-256") no norm. The decoder mirrors it:
ReLU, 4x4 stride-2 transposed conv, instance norm (not on the last), dropout 0.5 on the
`dropout` innermost levels, and the skip concatenation with the encoder level of the same size;
a tanh ends it. D = 8, width 64 is the papers' U-Net-256; tests and CPU configs use fewer levels.
Frames whose sides are not multiples of 2^D are padded (replicate) and the output cropped back.

One class serves every method, M streams at once:

* `streams="concat"` (unimodal, early concat): the inputs are concatenated on the channel axis
  into one stream (M = 1).
* `streams="stacked"` (CEN, AsymFusion, the baselines, MANGO, the plain multi-stream network):
  the modalities are stacked on the batch axis sample-major, `(B*M, C, H, W)` as
  `models/multistream.py` does, so every conv is shared and runs once for all modalities, while
  each modality has its own instance-norm affine parameters (`ModalityInstanceNorm`) in the
  encoder. The decoder's norms are shared (`decoder_norms="shared"`, CEN section 4.2: "individual
  INs in the encoder, and share all other parameters including INs in the decoder") or private
  per modality (`"private"`, what the CEN code does). Each stream decodes to its own image
  (`per_modality`); the scored image is their learned ensemble (`Ensemble`: softmax(alpha)
  weighted sum of the detached streams, so its loss trains alpha only).

Fusion ops act on encoder level outputs (after the norm, before the next level's activation)
in the `(B, M, C, H, W)` view, with the calling convention of the segmentation ops
(`op(x5, site)`, or `op(x5, site, scope)` for ops with `uses_scope`), so CEN's
`ChannelExchange` and the baselines' `ConcatFusion` / `AttentionFusion` / `AlignFusion` run
here unchanged. Aux losses: the ops' `aux_losses()` (CEN's l1 on gammas) and what they add to
the forward's scope (MMD, the flow's NLL).

Output: `{"image": (B, C_out, H, W) in [-1, 1] (tanh), "per_modality": {m: (B, C_out, H, W)},
"aux_losses": {...}}`. The translation task maps every target to [-1, 1] (images: 2x - 1) and
back, so the model never sees a target and needs no statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.multistream import (
    Ensemble,
    ForwardScope,
    common_channels,
    stack_modalities,
)
from fusescope.models.segmentor import tile_channels

STREAMS = ("concat", "stacked")


def level_widths(depth: int, width: int) -> list[int]:
    """Channels of encoder levels 1..depth: width, 2w, 4w, 8w, 8w, ... (pix2pix's cap at 8w)."""
    return [width * min(2**i, 8) for i in range(depth)]


class ModalityInstanceNorm(nn.Module):
    """Instance norm over a modality-stacked batch with private affine parameters per modality.

    Instance statistics are per sample and channel, so the stacked `(B*M, C, H, W)` batch needs
    one native `instance_norm` call with no affine; the (M, C) gammas and betas then apply on the
    `(B, M, C, H, W)` view. Statistics are computed in float32 under mixed precision. No running
    statistics: training and evaluation normalise alike (pix2pix's instance norm; the CEN code's
    `track_running_stats=True` would make evaluation use training averages instead).

    The gammas are what CEN's exchange reads (`weight`, (M, C)), as `ModalityBatchNorm`'s.
    """

    is_norm = True  # fusescope.nn.norm protocol: an affine norm, no weight decay

    def __init__(self, num_features: int, num_modalities: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.num_modalities = num_modalities
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_modalities, num_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_features))

    def forward(self, x: Tensor) -> Tensor:  # (B*M, C, H, W)
        y = F.instance_norm(x.float(), eps=self.eps)
        y5 = y.unflatten(0, (-1, self.num_modalities))  # (B, M, C, H, W)
        y5 = y5 * self.weight[..., None, None] + self.bias[..., None, None]
        return y5.flatten(0, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, modalities={self.num_modalities}"


FusionFactory = Callable[[int, int, "ModalityInstanceNorm | None"], nn.Module]


class UNetTranslator(nn.Module):
    """The pix2pix U-Net over M streams (see the module docstring).

    Args:
        modalities: input modality names, in model order.
        in_channels: channels per modality.
        out_channels: channels of the translated image (the targets' total).
        streams: "concat" (one stream of concatenated inputs) or "stacked" (one per modality).
        depth: encoder levels D (8: U-Net-256).
        width: channels of the first level (pix2pix's ngf, 64).
        dropout: how many innermost decoder levels use dropout 0.5 (pix2pix: 3).
        fusion: `(level, channels, norm) -> op` building the fusion op of an encoder level
            (`norm` is the level's `ModalityInstanceNorm`, None where the level has none).
        fusion_levels: encoder levels (1..D) that get an op.
        decoder_norms: "shared" (one affine per decoder norm for every stream) or "private".
    """

    def __init__(
        self,
        modalities: list[str],
        in_channels: dict[str, int],
        out_channels: int,
        *,
        streams: str = "stacked",
        depth: int = 8,
        width: int = 64,
        dropout: int = 3,
        fusion: FusionFactory | None = None,
        fusion_levels: tuple[int, ...] = (),
        decoder_norms: str = "shared",
    ):
        super().__init__()
        if decoder_norms not in ("shared", "private"):
            raise OptionError(f"decoder_norms must be shared or private, not {decoder_norms!r}")
        if streams not in STREAMS:
            raise OptionError(f"streams must be one of {', '.join(STREAMS)}, not {streams!r}")
        if depth < 2 or width < 1 or not 0 <= dropout <= depth - 1:
            raise OptionError(
                f"depth must be >= 2, width >= 1 and dropout in 0..depth-1; got "
                f"depth={depth}, width={width}, dropout={dropout}"
            )
        bad = [lvl for lvl in fusion_levels if not 1 <= lvl <= depth]
        if bad:
            raise OptionError(f"fusion levels {bad} outside the encoder's levels 1..{depth}")
        self.modalities = list(modalities)
        self.streams = streams
        self.depth = depth
        self.out_channels = out_channels
        if streams == "stacked":
            self.num_streams = len(modalities)
            self.in_chans = common_channels(modalities, in_channels)
        else:
            self.num_streams = 1
            self.in_chans = sum(in_channels[m] for m in modalities)
        M, widths = self.num_streams, level_widths(depth, width)
        self.down = nn.ModuleList(
            nn.Conv2d(cin, cout, 4, 2, 1)
            for cin, cout in zip([self.in_chans, *widths[:-1]], widths, strict=True)
        )
        # ModuleDicts keyed by level number, so state-dict keys name the level
        self.down_norm = nn.ModuleDict(
            {str(i + 1): ModalityInstanceNorm(widths[i], M) for i in range(1, depth - 1)}
        )
        # decoder level j (D..1) maps level j's resolution to level j-1's
        ups, up_norms = {}, {}
        for j in range(depth, 0, -1):
            cin = widths[j - 1] * (1 if j == depth else 2)
            cout = widths[j - 2] if j > 1 else out_channels
            ups[str(j)] = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
            if j > 1:
                up_norms[str(j)] = ModalityInstanceNorm(
                    cout, M if decoder_norms == "private" else 1
                )
        self.up = nn.ModuleDict(ups)
        self.up_norm = nn.ModuleDict(up_norms)
        self.dropout_levels = tuple(range(depth, depth - dropout, -1))
        self.fusion = nn.ModuleDict()
        if fusion is not None:
            for lvl in sorted(set(fusion_levels)):
                norm = self.down_norm[str(lvl)] if str(lvl) in self.down_norm else None
                self.fusion[str(lvl)] = fusion(lvl, widths[lvl - 1], norm)
        self.ensemble = Ensemble(M) if M > 1 else None
        for module in self.modules():  # pix2pix's initialisation: N(0, 0.02) conv weights
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def size_multiple(self) -> int:
        return 2**self.depth

    def inputs(self, batch: dict[str, Tensor]) -> list[Tensor]:
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise KeyError(f"batch lacks modalities {missing}; has {sorted(batch)}")
        return [batch[m] for m in self.modalities]

    def _fuse(self, level: int, x: Tensor, scope: ForwardScope) -> Tensor:
        op = self.fusion[str(level)] if str(level) in self.fusion else None
        if op is None:
            return x
        x5 = x.unflatten(0, (-1, self.num_streams))  # (B, M, C, H, W)
        x5 = op(x5, "level_out", scope) if getattr(op, "uses_scope", False) else op(x5, "level_out")
        return x5.flatten(0, 1)

    def forward(self, batch: dict[str, Tensor]) -> dict:
        inputs = self.inputs(batch)
        H, W = inputs[0].shape[-2:]
        if self.streams == "stacked":  # (B*M, C, H, W), sample-major
            x = stack_modalities([tile_channels(t, self.in_chans) for t in inputs])
        else:
            x = torch.cat(inputs, dim=1)  # (B, sum C, H, W)
        k = self.size_multiple
        pad_h, pad_w = -H % k, -W % k
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        scope = ForwardScope()
        skips = []
        for i, conv in enumerate(self.down, start=1):
            if i > 1:
                x = F.leaky_relu(x, 0.2)
            x = conv(x)
            if str(i) in self.down_norm:
                x = self.down_norm[str(i)](x)
            x = self._fuse(i, x, scope)
            skips.append(x)
        y = skips[-1]
        for j in range(self.depth, 0, -1):
            if j < self.depth:
                y = torch.cat([y, skips[j - 1]], dim=1)
            y = self.up[str(j)](F.relu(y))
            if j > 1:
                y = self.up_norm[str(j)](y)
                if j in self.dropout_levels:
                    y = F.dropout(y, 0.5, self.training)
        out = torch.tanh(y)[..., :H, :W]  # (B*M, C_out, H, W)
        aux = dict(scope.losses)
        for op in self.fusion.values():
            for name, value in getattr(op, "aux_losses", dict)().items():
                aux[name] = aux[name] + value if name in aux else value
        if self.ensemble is None:
            return {"image": out, "per_modality": {}, "aux_losses": aux}
        out5 = out.unflatten(0, (-1, self.num_streams))  # (B, M, C_out, H, W)
        per_modality = {m: out5[:, i] for i, m in enumerate(self.modalities)}
        image = self.ensemble(out5.transpose(0, 1))
        return {"image": image, "per_modality": per_modality, "aux_losses": aux}

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        return [pair for op in self.fusion.values() for pair in getattr(op, "lr_scales", list)()]

    def training_stats(self) -> dict[str, float]:
        """Fusion ops' statistics (CEN: the exchanged fraction per level), summed over ops."""
        parts: dict[str, list] = {}
        for op in self.fusion.values():
            for name, (count, total) in getattr(op, "stat_parts", dict)().items():
                c, t = parts.get(name, (0.0, 0.0))
                parts[name] = (c + float(count), t + total)
        return {name.replace("stage", "level"): c / max(t, 1.0) for name, (c, t) in parts.items()}

    def combine_present(self, per_modality: dict[str, Tensor], present: list[str]) -> Tensor:
        """The ensemble over the present streams only (a modality absent at inference)."""
        alpha = self.ensemble.alpha
        mask = torch.tensor([m in present for m in self.modalities], device=alpha.device)
        weights = torch.softmax(alpha.masked_fill(~mask, float("-inf")), 0)
        stacked = torch.stack([per_modality[m] for m in self.modalities])
        return torch.tensordot(weights.to(stacked.dtype), stacked, dims=1)
