"""The pix2pix U-Net generator (Isola et al. 2017), as CEN section 4.2 fuses it.

Encoder level i (1..D) is a 4x4 stride-2 conv to `width * min(2^(i-1), 8)` channels; levels
2..D-1 are pre-activated by LeakyReLU(0.2) and followed by an instance norm, the first level has
neither, the innermost (1x1 at 256 px for D = 8, "U-Net-256") no norm. The decoder mirrors it:
ReLU, 4x4 stride-2 transposed conv, instance norm (not on the last), dropout 0.5 on the
`dropout` innermost levels, and the skip concatenation with the encoder level of the same size;
a tanh ends it. D = 8, width 64 is the papers' U-Net-256; tests and CPU configs use fewer levels.
Frames whose sides are not multiples of 2^D are padded (replicate) and the output cropped back.

Every method is the one multi-stream host (`models/multistream.MultiStreamModel`) with the
U-Net's encoder (`UNetEncoder`, its levels `UNetLevel`) and decoder (`UNetDecoder`):

* `streams="concat"` (unimodal, early concat): the inputs are concatenated on the channel axis
  into one stream (M = 1).
* `streams="stacked"` (CEN, AsymFusion, the baselines, MANGO, the plain multi-stream network):
  the modalities are stacked on the batch axis sample-major, `(B*M, C, H, W)`, so every conv is
  shared and runs once for all modalities, while each modality has its own instance-norm affine
  parameters (`ModalityInstanceNorm`) in the encoder. The decoder's norms are shared
  (`decoder_norms="shared"`, CEN section 4.2: "individual INs in the encoder, and share all
  other parameters including INs in the decoder") or private
  per modality (`"private"`, what the CEN code does). Each stream decodes to its own image
  (`per_modality`); the scored image is their learned ensemble (`Ensemble`: softmax(alpha)
  weighted sum of the detached streams, so its loss trains alpha only).

Fusion ops act at the levels' sites (`models/sites.py`, family `level`): `norm_out` after a
level's instance norm, `stage_out` at its output (the same place: after the norm, before the
next level's activation), in the `(B, M, C, H, W)` view, so every op of `FUSION_OPS` inserts
here as on a timm encoder. Levels are the encoder's stages, numbered 1..D.

Output: `{"image": (B, C_out, H, W) in [-1, 1] (tanh), "per_modality": {m: (B, C_out, H, W)},
"aux_losses": {...}}`. The translation task maps every target to [-1, 1] (images: 2x - 1) and
back, so the model never sees a target and needs no statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.core import common_channels
from fusescope.models.multistream import MultiStreamModel, streams_first
from fusescope.models.norms import ModalityInstanceNorm
from fusescope.models.sites import BlockKind, Site

STREAMS = ("concat", "stacked")


def level_widths(depth: int, width: int) -> list[int]:
    """Channels of encoder levels 1..depth: width, 2w, 4w, 8w, 8w, ... (pix2pix's cap at 8w)."""
    return [width * min(2**i, 8) for i in range(depth)]


class UNetLevel(nn.Module):
    """One encoder level: LeakyReLU(0.2) (not on the first), a 4x4 stride-2 conv, and the
    level's instance norm (None on the first and the innermost level)."""

    # its fusion sites (`sites.block_kind` reads this)
    fusion_block_kind = BlockKind("level", {"norm_out": Site("norm", "post", "nchw")}, "norm")

    def __init__(self, cin: int, cout: int, num_streams: int, pre_act: bool, norm: bool):
        super().__init__()
        self.pre_act = pre_act
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1)
        self.norm = ModalityInstanceNorm(cout, num_streams) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_act:
            x = F.leaky_relu(x, 0.2)
        x = self.conv(x)
        return self.norm(x) if self.norm is not None else x


class UNetEncoder(nn.Module):
    """The U-Net's encoder levels; `forward` pads to a multiple of 2^D (replicate) and returns
    every level's output (the skips), finest first."""

    def __init__(self, in_chans: int, depth: int, width: int, num_streams: int):
        super().__init__()
        widths = level_widths(depth, width)
        self.levels = nn.ModuleList(
            UNetLevel(cin, cout, num_streams, pre_act=i > 0, norm=0 < i < depth - 1)
            for i, (cin, cout) in enumerate(zip([in_chans, *widths[:-1]], widths, strict=True))
        )
        self.depth = depth
        self.family = "unet"
        self.feature_info = FeatureInfo(
            [
                {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"levels.{i}"}
                for i, c in enumerate(widths)
            ],
            list(range(depth)),
        )

    @property
    def size_multiple(self) -> int:
        return 2**self.depth

    def positions(self) -> dict[str, tuple[int, ...]]:
        """CEN section 4.2's baseline positions for U-Net-256 (depth 8): early = the 1st conv
        layer, middle = the 4th (depth / 2), late = the 8th (the innermost), all = every level."""
        D = self.depth
        return {
            "early": (1,),
            "middle": (max(1, D // 2),),
            "late": (D,),
            "all": tuple(range(1, D + 1)),
        }

    def flow_stage(self) -> int:
        """MANGO's default level: depth - 3 (8x8 at 256 px for U-Net-256)."""
        return max(1, self.depth - 3)

    def forward(self, x: Tensor) -> list[Tensor]:
        k = self.size_multiple
        pad_h, pad_w = -x.shape[-2] % k, -x.shape[-1] % k
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    """The decoder: level j (D..1) is ReLU, a 4x4 stride-2 transposed conv to level j-1's width
    (the output's channels at j = 1), instance norm (not on the last), dropout 0.5 on the
    `dropout` innermost levels, and the skip concatenation; a tanh ends it.

    Args:
        norm_streams: affine sets per decoder norm: M (private) or 1 (shared by the streams).
    """

    def __init__(self, depth: int, width: int, out_channels: int, dropout: int, norm_streams: int):
        super().__init__()
        widths = level_widths(depth, width)
        ups, up_norms = {}, {}
        for j in range(depth, 0, -1):
            cin = widths[j - 1] * (1 if j == depth else 2)
            cout = widths[j - 2] if j > 1 else out_channels
            ups[str(j)] = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
            if j > 1:
                up_norms[str(j)] = ModalityInstanceNorm(cout, norm_streams)
        # ModuleDicts keyed by level number, so state-dict keys name the level
        self.up = nn.ModuleDict(ups)
        self.up_norm = nn.ModuleDict(up_norms)
        self.depth = depth
        self.dropout_levels = tuple(range(depth, depth - dropout, -1))

    def forward(self, skips: list[Tensor]) -> Tensor:
        y = skips[-1]
        for j in range(self.depth, 0, -1):
            if j < self.depth:
                y = torch.cat([y, skips[j - 1]], dim=1)
            y = self.up[str(j)](F.relu(y))
            if j > 1:
                y = self.up_norm[str(j)](y)
                if j in self.dropout_levels:
                    y = F.dropout(y, 0.5, self.training)
        return torch.tanh(y)


def crop_streams(image: Tensor, num_streams: int, size: tuple[int, int]) -> Tensor:
    """The decoder's `(B*M, C, H', W')` images (padded frames) -> `(M, B, C, H, W)`."""
    return streams_first(image[..., : size[0], : size[1]], num_streams)


def unet(
    modalities: list[str],
    in_channels: dict[str, int],
    out_channels: int,
    *,
    streams: str = "stacked",
    depth: int = 8,
    width: int = 64,
    dropout: int = 3,
    decoder_norms: str = "shared",
) -> MultiStreamModel:
    """The pix2pix U-Net over M streams (see the module docstring); initialise it with
    `pix2pix_init` once its fusion ops are in.

    Args:
        streams: "concat" (one stream of concatenated inputs) or "stacked" (one per modality).
        depth: encoder levels D (8: U-Net-256).
        width: channels of the first level (pix2pix's ngf, 64).
        dropout: how many innermost decoder levels use dropout 0.5 (pix2pix: 3).
        decoder_norms: "shared" (one affine per decoder norm for every stream) or "private".
    """
    if decoder_norms not in ("shared", "private"):
        raise OptionError(f"decoder_norms must be shared or private, not {decoder_norms!r}")
    if streams not in STREAMS:
        raise OptionError(f"streams must be one of {', '.join(STREAMS)}, not {streams!r}")
    if depth < 2 or width < 1 or not 0 <= dropout <= depth - 1:
        raise OptionError(
            f"depth must be >= 2, width >= 1 and dropout in 0..depth-1; got "
            f"depth={depth}, width={width}, dropout={dropout}"
        )
    if streams == "stacked":
        M, in_chans = len(modalities), common_channels(modalities, in_channels)
    else:
        M, in_chans = 1, sum(in_channels[m] for m in modalities)
    encoder = UNetEncoder(in_chans, depth, width, M)
    decoder = UNetDecoder(
        depth, width, out_channels, dropout, M if decoder_norms == "private" else 1
    )
    model = MultiStreamModel(
        modalities,
        in_chans,
        encoder,
        decoder,
        crop_streams,
        head_name="decoder",
        streams=streams,
        output_key="image",
        convert_head=False,
    )
    model.out_channels = out_channels
    return model


def translation_host(
    modalities: list[str],
    in_channels: dict[str, int],
    out_channels: int,
    *,
    depth: int = 8,
    width: int = 64,
    dropout: int = 3,
    decoder_norms: str = "shared",
) -> MultiStreamModel:
    """The multi-stream U-Net every fusion op of `FUSION_OPS` inserts into for translation:
    shared convs, private encoder instance norms, `decoder_norms` shared (CEN section 4.2's
    text) or private (the CEN code), per-modality outputs and their learned ensemble."""
    if len(modalities) < 2:
        raise OptionError(
            f"a multi-stream U-Net fuses >= 2 modalities; data.modalities is {modalities}"
        )
    return unet(
        modalities,
        in_channels,
        out_channels,
        depth=depth,
        width=width,
        dropout=dropout,
        decoder_norms=decoder_norms,
    )


def pix2pix_init(model: MultiStreamModel) -> MultiStreamModel:
    """pix2pix's initialisation, N(0, 0.02) conv weights and zero biases: the U-Net's own
    convolutions (encoder, then decoder), then those of its fusion ops."""
    parts = (model.encoder.body, model.decoder, model.encoder.fusion)
    for part in parts:
        for module in part.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return model
