"""The trained translation model: a generator (any `TRANSLATION_METHODS` entry) and, with
`gan: true`, the PatchGAN discriminator that the task's adversarial loss uses.

The forward is the generator's (`{"image", "per_modality", "aux_losses"}`); the discriminator
never runs in it, because it needs the target, which models never see. It is a sub-module so
that one optimiser, one checkpoint and one `model.safetensors` hold both networks
(`generator.*`, `discriminator.*`); the forward hands it, with what it is conditioned on, to the
task's loss as `output["critic"]` (`Critic`), the one way the engine's `task.loss(output, ...)`
can reach it (`fusescope.tasks.translation`). Under DDP the loss calls the same parameters the
wrapped model holds, so their gradients are synchronised like the generator's.

What the discriminator is conditioned on (`disc_condition`): "all" inputs, concatenated, for
every output it judges (one discriminator serves every method), or, as CEN's code does, each
stream's output on that "stream"'s own input (1-channel inputs tiled to the streams' common
width, as the generator tiles them).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.core import FusionModel, tile_channels
from fusescope.models.translation.patchgan import PatchDiscriminator

DISC_CONDITIONS = ("all", "stream")


class Critic(NamedTuple):
    """What the adversarial loss needs from the model: the discriminator and its condition:
    the inputs concatenated, (B, sum C, H, W), or per stream a list of each stream's input
    (M tensors (B, C, H, W))."""

    discriminator: nn.Module
    condition: Tensor | list[Tensor]


class Translator(FusionModel):
    """Args:
    generator: a translation method's network.
    discriminator: the PatchGAN, or None to train with the reconstruction loss only.
    disc_condition: "all" (the inputs, concatenated) or "stream" (each stream's own input).

    Its fusion ops (the generator's) give the aux losses, lr scales and training statistics.
    """

    output_key = "image"

    def __init__(
        self,
        generator: nn.Module,
        discriminator: PatchDiscriminator | None = None,
        disc_condition: str = "all",
    ):
        super().__init__(generator.modalities)
        if disc_condition not in DISC_CONDITIONS:
            raise OptionError(
                f"disc_condition must be one of {', '.join(DISC_CONDITIONS)}; got "
                f"{disc_condition!r}"
            )
        self.generator = generator
        self.discriminator = discriminator
        self.disc_condition = disc_condition

    def forward(self, batch: dict[str, Tensor]) -> dict:
        out = self.generator(batch)
        if self.discriminator is not None and self.training:
            out["critic"] = Critic(self.discriminator, self.condition(batch))
        return out

    def condition(self, batch: dict[str, Tensor]) -> Tensor | list[Tensor]:
        """What the discriminator is conditioned on: the inputs concatenated (B, sum C, H, W),
        or each stream's input tiled to the generator's stream width (M x (B, C, H, W))."""
        if self.disc_condition == "stream":
            width = self.generator.in_chans
            return [tile_channels(batch[m], width) for m in self.modalities]
        return torch.cat([batch[m] for m in self.modalities], dim=1)

    @property
    def scores_streams(self) -> bool:
        return self.generator.scores_streams

    def combine_present(self, per_modality: dict[str, Tensor], present: list[str]) -> Tensor:
        return self.generator.combine_present(per_modality, present)
