"""SA-Gate with bi-directional multi-step propagation (Chen et al., ECCV 2020).

Two unshared encoder streams (the first modality plays the paper's "RGB", the second its "HHA" or
depth). After each gated stage an SA-Gate

  1. separates (FS): a cross-modality channel gate filters each stream before it recalibrates
     the other one: `rec_rgb = rgb + w_d * depth`, `rec_depth = depth + w_r * rgb`, with
     `w = sigmoid(FC(ReLU(FC(GAP(rgb || depth)))))`, 2C -> C/16 -> C, one MLP per direction;
  2. aggregates (FA): two 1x1 convs (2C -> 1) on `rec_rgb || rec_depth` give one logit map per
     modality, a softmax over the two gives per-pixel weights `a` and `1 - a`, and the merged
     feature is `rgb * a + depth * (1 - a)` on the ORIGINAL inputs (eq. 8);
  3. propagates (BMP): `rgb' = (rgb + merged) / 2`, `depth' = (depth + merged) / 2` feed the next
     stage. The authors' code adds a ReLU here (`bmp_relu`); after a ResNet stage (non-negative
     outputs) with the proposed FA it changes nothing, after other backbones it does.

The decoder (DeepLabV3+ by default: ASPP on the stage-4 merge, low-level features from the stage-1
merge) reads the merged features. Ablation switches follow the paper's tables:

  separation   (Table 2) proposed | concat (no FS: FA sees the raw inputs) | self_global (each
               stream is filtered by an MLP on its own GAP only) | cross_global (cross-modal
               descriptor, but each stream recalibrates itself: `rgb + w * rgb`) | product
               (`rgb * (w_d * depth)`, re-weighting instead of the offset of eq. 4)
  aggregation  (Table 3) proposed | addition (`rec_rgb + rec_depth`) | conv (1x1 conv 2C -> C on
               `rec_rgb || rec_depth`)
  bmp          (Table 5) off: the streams continue unchanged; the merge only feeds the decoder
  gates        (Table 4) the stages that carry a gate; at an ungated stage the decoder reads
               `(rgb + depth) / 2`
  head         merged (default) | average: one decoder per stream on its own (propagated)
               features, logits averaged (the starred rows of Table 4)

  shared_shortcuts  the authors' dual ResNet hands one `downsample` module to both streams
               (`self.hha_downsample = downsample` in their builder): each stage's projection
               shortcut (conv + BN) is one module in both streams; false (the default, the
               paper's text: two separate streams) keeps a copy per stream

Gate maps: the model keeps none; read them with a tap on `fuse.<stage>` (element 3, `a`: the
first modality's per-pixel weight, (B, 1, h, w); benchmarks/sagate_gates.py does).
`save_gate_figure` draws them like the paper's Fig. 4 (red = first modality trusted, blue = second).

Dissection taps: `encoders.<modality>` are the two timm encoders. The model runs their stage
modules one at a time, so hooks on their children fire (`encoders.rgb.layer2`: that stream's
stage output before its gate) but a hook on `encoders.rgb` itself does not. `fuse.<stage>` are the
gates (output: rgb', depth', merged, a), `decoder` the decoder.
"""

from __future__ import annotations

import os
from pathlib import Path

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
from fusescope.models.decoders import build_decoder
from fusescope.models.deeplab import aux_logits, supports_aux, with_aux
from fusescope.models.registry import FUSION_METHODS
from fusescope.models.segmentor import Segmentor, resize_to

SEPARATIONS = ("proposed", "concat", "self_global", "cross_global", "product")
AGGREGATIONS = ("proposed", "addition", "conv")
HEADS = ("merged", "average")
AUTHORS_AUX_WEIGHT = 0.2  # the authors' `aux_rate`


class ChannelFilter(nn.Module):
    """Squeeze-excitation style channel gate: descriptor (B, Cin) -> weights (B, C, 1, 1)."""

    def __init__(self, cin: int, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, descriptor: Tensor) -> Tensor:
        return self.mlp(descriptor)[:, :, None, None]


def global_pool(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3))  # (B, C)


class FeatureSeparation(nn.Module):
    """The FS part and its ablation variants; returns (rec_rgb, rec_depth).

    `filters[0]` makes the weights that act on the depth stream when recalibrating RGB (the paper's
    W_hha), `filters[1]` those acting on the RGB stream when recalibrating depth, except for
    `cross_global`, where each filter re-weights its own stream.
    """

    def __init__(self, channels: int, variant: str, reduction: int):
        super().__init__()
        self.variant = variant
        if variant == "concat":
            self.filters = None
        else:
            cin = channels if variant == "self_global" else 2 * channels
            self.filters = nn.ModuleList(ChannelFilter(cin, channels, reduction) for _ in range(2))

    def forward(self, rgb: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        if self.variant == "concat":
            return rgb, depth
        if self.variant == "self_global":
            w_depth = self.filters[0](global_pool(depth))  # depth filtered by its own context
            w_rgb = self.filters[1](global_pool(rgb))
        else:
            joint = torch.cat([global_pool(rgb), global_pool(depth)], dim=1)  # (B, 2C), eq. 1
            w_depth, w_rgb = self.filters[0](joint), self.filters[1](joint)
        if self.variant == "cross_global":
            # the weights for the other stream's filter now re-weight the stream itself
            return rgb + w_depth * rgb, depth + w_rgb * depth
        if self.variant == "product":
            return rgb * (w_depth * depth), depth * (w_rgb * rgb)
        return rgb + w_depth * depth, depth + w_rgb * rgb  # eq. 3-4, both directions


class FeatureAggregation(nn.Module):
    """The FA part and its ablation variants; returns (merged, a) with `a` None without a gate."""

    def __init__(self, channels: int, variant: str):
        super().__init__()
        self.variant = variant
        if variant == "proposed":
            # the paper's two 1x1 convs (2C -> 1 each) as one conv with two outputs:
            # channel 0 is G_rgb, channel 1 is G_depth
            self.gates = nn.Conv2d(2 * channels, 2, 1)
        elif variant == "conv":
            self.conv = nn.Conv2d(2 * channels, channels, 1)

    def forward(
        self, rgb: Tensor, depth: Tensor, rec_rgb: Tensor, rec_depth: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        if self.variant == "addition":
            return rec_rgb + rec_depth, None
        recalibrated = torch.cat([rec_rgb, rec_depth], dim=1)  # (B, 2C, h, w)
        if self.variant == "conv":
            return self.conv(recalibrated), None
        weights = torch.softmax(self.gates(recalibrated), dim=1)  # (B, 2, h, w), eq. 7
        a = weights[:, :1]  # (B, 1, h, w): the first modality's share
        return rgb * a + depth * weights[:, 1:], a  # eq. 8, on the original inputs


class SAGate(nn.Module):
    """One gate: separation, aggregation, then (optionally) bi-directional propagation.

    Returns `(rgb', depth', merged, a)`; `a` is the first modality's per-pixel weight or None.
    """

    def __init__(
        self,
        channels: int,
        separation: str = "proposed",
        aggregation: str = "proposed",
        reduction: int = 16,
        bmp: bool = True,
        bmp_relu: bool = False,
    ):
        super().__init__()
        self.separation = FeatureSeparation(channels, separation, reduction)
        self.aggregation = FeatureAggregation(channels, aggregation)
        self.bmp = bmp
        self.bmp_relu = bmp_relu

    def forward(self, rgb: Tensor, depth: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        rec_rgb, rec_depth = self.separation(rgb, depth)
        merged, a = self.aggregation(rgb, depth, rec_rgb, rec_depth)
        if not self.bmp:
            return rgb, depth, merged, a
        rgb_out, depth_out = (rgb + merged) / 2, (depth + merged) / 2
        if self.bmp_relu:
            rgb_out, depth_out = F.relu(rgb_out), F.relu(depth_out)
        return rgb_out, depth_out, merged, a


def share_shortcuts(source: nn.Module, target: nn.Module) -> int:
    """Make every projection shortcut (`downsample`) of `target` the very module of `source` at
    the same place, as the authors' dual ResNet does; returns how many were shared.

    Raises:
        OptionError: the encoders have no projection shortcuts (not a ResNet), or differ.
    """
    shared = 0
    modules = dict(target.named_modules())
    for name, module in source.named_modules():
        shortcut = getattr(module, "downsample", None)
        if not isinstance(shortcut, nn.Module):
            continue
        twin = modules.get(name)
        if twin is None or not isinstance(getattr(twin, "downsample", None), nn.Module):
            raise OptionError(f"shared_shortcuts: the second stream has no shortcut at {name!r}")
        twin.downsample = shortcut
        shared += 1
    if not shared:
        raise OptionError(
            "shared_shortcuts needs a backbone with projection shortcuts (`downsample`, ResNets)"
        )
    return shared


def run_segment(segment: nn.Sequential, x: Tensor) -> Tensor:
    for module in segment:
        x = module(x)
    return x


class SAGateNet(Segmentor):
    """Two encoder streams joined by SA-Gates; see the module docstring for the options."""

    def __init__(
        self,
        modalities: list[str],
        in_channels: dict[str, int],
        num_classes: int,
        *,
        backbone: str,
        pretrained: bool | str,
        decoder: str | dict,
        separation: str,
        aggregation: str,
        bmp: bool,
        bmp_relu: bool,
        gates: list[int],
        reduction: int,
        head: str,
        aux_weight: float | None,
        shared_shortcuts: bool = False,
    ):
        super().__init__(modalities, num_classes)
        self.encoders = nn.ModuleDict(
            {m: create_encoder(backbone, in_channels[m], pretrained) for m in modalities}
        )
        if shared_shortcuts:  # the first stream's (pretrained) shortcuts serve both
            share_shortcuts(self.encoders[modalities[0]], self.encoders[modalities[1]])
        first = self.encoders[modalities[0]]
        channels, reductions = feature_channels(first), feature_reductions(first)
        # plain lists (not registered twice): the modules live in `encoders`
        self._stages = {m: encoder_stages(self.encoders[m]) for m in modalities}
        num_stages = len(channels)
        bad = [g for g in gates if not 1 <= g <= num_stages]
        if bad or len(set(gates)) != len(gates):
            raise OptionError(
                f"gates must be distinct stage numbers in 1..{num_stages}, got {list(gates)}"
            )
        self.gated = sorted(gates)
        self.fuse = nn.ModuleDict(
            {
                str(s): SAGate(channels[s - 1], separation, aggregation, reduction, bmp, bmp_relu)
                for s in self.gated
            }
        )
        self.head = head
        if head == "merged":
            auto = aux_weight is None
            spec = with_aux(decoder) if auto or aux_weight > 0 else decoder
            self.decoder = build_decoder(spec, channels, reductions, num_classes)
            if auto:
                aux_weight = AUTHORS_AUX_WEIGHT if supports_aux(self.decoder) else 0.0
            elif aux_weight > 0 and not supports_aux(self.decoder):
                raise OptionError(
                    f"aux_weight {aux_weight} needs a decoder with an auxiliary "
                    f"head (deeplabv3plus); set model.aux_weight=0"
                )
        else:
            if not bmp and self.gated:
                raise OptionError(
                    "head 'average' reads the streams, which only see the gates "
                    "through BMP: set bmp true"
                )
            if aux_weight:
                raise OptionError("aux_weight is only used with head 'merged'")
            aux_weight = 0.0
            self.decoders = nn.ModuleDict(
                {m: build_decoder(decoder, channels, reductions, num_classes) for m in modalities}
            )
        self.aux_weight = float(aux_weight)
        self._gate_means: dict[int, Tensor] = {}

    def encode(self, rgb: Tensor, depth: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Run both streams stage by stage; returns (merged, rgb', depth') per stage."""
        first, second = self.modalities
        merged_levels, rgb_levels, depth_levels = [], [], []
        gates: dict[int, Tensor] = {}
        for stage, (seg_rgb, seg_depth) in enumerate(
            zip(self._stages[first], self._stages[second], strict=True), start=1
        ):
            rgb, depth = run_segment(seg_rgb, rgb), run_segment(seg_depth, depth)
            if stage in self.gated:
                rgb, depth, merged, a = self.fuse[str(stage)](rgb, depth)
                if a is not None:
                    gates[stage] = a.detach()
            else:
                merged = (rgb + depth) / 2
            merged_levels.append(merged)
            rgb_levels.append(rgb)
            depth_levels.append(depth)
        self._gate_means = {s: a.mean() for s, a in gates.items()}
        return merged_levels, rgb_levels, depth_levels

    def forward(self, batch: dict[str, Tensor]) -> dict:
        rgb, depth = self.inputs(batch)
        size = rgb.shape[-2:]
        merged, rgb_levels, depth_levels = self.encode(rgb, depth)
        if self.head == "merged":
            logits = resize_to(self.decoder(merged), size)
            return self.output(
                logits, aux_logits=aux_logits(self.decoder, merged, self.aux_weight, size)
            )
        first, second = self.modalities
        per_modality = {
            first: resize_to(self.decoders[first](rgb_levels), size),
            second: resize_to(self.decoders[second](depth_levels), size),
        }
        return self.output(
            (per_modality[first] + per_modality[second]) / 2, per_modality=per_modality
        )

    def training_stats(self) -> dict[str, float]:
        """Mean per-pixel weight of the first modality at each gate of the last forward."""
        return {
            f"gate/{self.modalities[0]}_weight/stage{s}": float(v)
            for s, v in self._gate_means.items()
        }


@FUSION_METHODS.register("sagate")
def sagate(
    modalities,
    in_channels,
    num_classes,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "deeplabv3plus",
    separation: str = "proposed",
    aggregation: str = "proposed",
    bmp: bool = True,
    bmp_relu: bool = False,
    gates: list[int] = (1, 2, 3, 4),
    reduction: int = 16,
    head: str = "merged",
    aux_weight: float | None = None,
    shared_shortcuts: bool = False,
) -> Segmentor:
    """SA-Gate + BMP.

    Args:
        backbone: timm encoder name for both (unshared) streams.
        pretrained: as for every method (see `fusescope.models.backbones`).
        decoder: decoder spec; reads the merged features (default DeepLabV3+).
        separation: FS variant, one of SEPARATIONS (paper Table 2).
        aggregation: FA variant, one of AGGREGATIONS (Table 3).
        bmp: feed `(x + merged) / 2` to the next stage (Table 5).
        bmp_relu: the authors' code's ReLU after BMP.
        gates: stages (1-based) that carry a gate (Table 4).
        reduction: the FS MLP's bottleneck ratio (C -> C / reduction).
        head: "merged" (one decoder on the merged features) or "average" (one decoder per stream,
            logits averaged).
        aux_weight: weight of the auxiliary FCN head's loss; None: the authors' 0.2 when the
            decoder has an auxiliary head (deeplabv3plus), else 0.
        shared_shortcuts: one projection shortcut module per stage for both streams, as the
            authors' code builds it (their 63.4 M for ResNet-50); false: one per stream.
    """
    if len(modalities) != 2:
        raise OptionError(f"sagate fuses exactly two modalities; data.modalities is {modalities}")
    for key, value, allowed in (
        ("separation", separation, SEPARATIONS),
        ("aggregation", aggregation, AGGREGATIONS),
        ("head", head, HEADS),
    ):
        if value not in allowed:
            raise OptionError(f"{key} {value!r} is not one of {', '.join(allowed)}")
    if int(reduction) < 1:
        raise OptionError(f"reduction must be >= 1, got {reduction}")
    if aux_weight is not None and aux_weight < 0:
        raise OptionError(f"aux_weight must be >= 0, got {aux_weight}")
    return SAGateNet(
        modalities,
        in_channels,
        num_classes,
        backbone=backbone,
        pretrained=pretrained,
        decoder=decoder,
        separation=separation,
        aggregation=aggregation,
        bmp=bool(bmp),
        bmp_relu=bool(bmp_relu),
        gates=[int(g) for g in gates],
        reduction=int(reduction),
        head=head,
        aux_weight=aux_weight,
        shared_shortcuts=bool(shared_shortcuts),
    )


def save_gate_figure(
    path: str | os.PathLike,
    gates: dict[int, Tensor],
    images: dict[str, Tensor] | None = None,
    max_rows: int = 4,
    names: tuple[str, str] = ("rgb", "depth"),
) -> Path:
    """Write a PNG of gate maps: one row per image, inputs first, then one panel per stage.

    Gate maps share one fixed colour scale (0..1, red = first modality trusted, blue = second), so
    panels and images compare directly; input images are min-max scaled for display only.

    Args:
        path: the PNG to write.
        gates: {stage: (B, 1, h, w)} first-modality weights (tapped at `fuse.<stage>`).
        images: optional {name: (B, C, H, W)} inputs to show beside the maps (C = 1 or 3).
        max_rows: at most this many images of the batch.
        names: the two modalities' names, for the colour bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not gates:
        raise ValueError("no gate maps to draw (aggregation 'proposed' has them)")
    images = images or {}
    batch = next(iter(gates.values())).shape[0]
    rows = min(batch, max_rows)
    cols = len(images) + len(gates)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False)
    mappable = None
    for r in range(rows):
        c = 0
        for name, img in images.items():
            x = img[r].detach().float().cpu()
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
            axes[r, c].imshow(
                x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x[0].numpy(),
                cmap=None if x.shape[0] == 3 else "gray",
            )
            axes[r, c].set_title(name if r == 0 else "")
            c += 1
        for stage, a in sorted(gates.items()):
            mappable = axes[r, c].imshow(
                a[r, 0].detach().float().cpu().numpy(),
                cmap="bwr",
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
            )
            axes[r, c].set_title(f"gate stage {stage}" if r == 0 else "")
            c += 1
    for ax in axes.flat:
        ax.set_axis_off()
    bar = fig.colorbar(mappable, ax=axes, fraction=0.02)
    bar.set_label(f"weight of {names[0]} (1 - weight of {names[1]})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
