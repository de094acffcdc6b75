"""The PatchGAN discriminator of pix2pix (Isola et al. 2017): a fully convolutional net whose
every output logit judges one overlapping input patch as real or translated.

`layers` = 3 gives the 70x70 patches of pix2pix and CEN: conv 4x4 stride 2 (no norm), then
`layers - 1` more stride-2 convs and one stride-1 conv, each with instance norm and
LeakyReLU(0.2), doubling the width up to 8x, and a last stride-1 conv to one logit per patch.
It is conditional: it sees the generator's inputs beside the image (pix2pix's D(x, y)). By
default every output is judged given all inputs, so one discriminator serves every method;
`model.disc_condition: stream` conditions each stream's output (and the real image, once per
stream) on that stream's input only, as CEN's code does (`pix2pix.Translator`).

Logits, no sigmoid: the task's loss applies the GAN's criterion (vanilla: BCE with logits,
numerically safer than the CEN code's sigmoid + BCE; lsgan: least squares).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """Args:
    in_channels: channels of the condition (the inputs, concatenated) plus the image's.
    width: channels of the first conv (pix2pix's ndf, 64).
    layers: stride-2 convs (3: 70x70 receptive field).
    """

    def __init__(self, in_channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        cin = width
        for n in range(1, layers + 1):
            cout = width * min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [
                nn.Conv2d(cin, cout, 4, stride, 1),
                nn.InstanceNorm2d(cout, affine=True),
                nn.LeakyReLU(0.2),
            ]
            cin = cout
        blocks.append(nn.Conv2d(cin, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, condition: Tensor, image: Tensor) -> Tensor:
        """Patch logits (B, 1, h, w) for `image` (B, C, H, W) given `condition` (B, C', H, W)."""
        return self.net(torch.cat([condition, image.to(condition.dtype)], dim=1))


def receptive_field(layers: int) -> int:
    """Input pixels one output logit sees (70 for layers = 3), from the conv stack's geometry."""
    size = 1
    strides = [2] * layers + [1, 1]  # the stride-2 convs, the stride-1 conv, the output conv
    for stride in reversed(strides):
        size = (size - 1) * stride + 4
    return size
