"""Small layers every model part uses."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU; state-dict keys `0.*`, `1.*`."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )
