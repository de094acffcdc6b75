"""Parameter and FLOP counts of a model, as the papers' efficiency tables report them.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2
FLOPs (a convolution or matmul of M multiply-accumulates is 2M FLOPs) and counts only
convolutions, matmuls and attention (not BN, activations, pooling or interpolation). The papers'
"FLOPs" are the same unit: SA-Gate Table 1's numbers are reproduced within 1% by this count
(see benchmarks/params_table.py --paper), while MACs would be half of them.

Models can be built and counted on the meta device: no memory is allocated and no arithmetic is
done, so a ResNet-101 at 480x640 costs about a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from fusescope.models import build_model


def count_params(model: nn.Module) -> int:
    """Every parameter of the model (trainable or not, each shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, batch: Mapping[str, Tensor]) -> int:
    """FLOPs (2 per multiply-add) of one inference forward pass of `model` on `batch`.

    The model is put in eval mode (training-only parts such as auxiliary heads do not run) and
    restored afterwards; no gradients are recorded.
    """
    from torch.fx.experimental import _config as fx_config

    was_training = model.training
    model.eval()
    try:
        # on the meta device boolean-mask indexing (e.g. the MMD's upper-triangle pick) needs a
        # size; the mask only selects a few scalars, so "all selected" changes no counted FLOP
        with (
            fx_config.patch(meta_nonzero_assume_all_nonzero=True),
            FlopCounterMode(display=False) as counter,
            torch.no_grad(),
        ):
            model(dict(batch))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def meta_cost(
    model_cfg: Mapping[str, Any],
    modalities: list[str],
    in_channels: dict[str, int],
    num_classes: int,
    size: tuple[int, int],
) -> tuple[int, int]:
    """(parameters, FLOPs) of `build_model(model_cfg, ...)` on one frame of `size`, counted on
    the meta device (pretrained weights are not loaded: they change neither count)."""
    cfg = {**model_cfg, "pretrained": False}
    with torch.device("meta"):
        model = build_model(cfg, modalities, in_channels, num_classes)
        batch = {m: torch.zeros(1, in_channels[m], *size) for m in modalities}
    return count_params(model), count_flops(model, batch)
