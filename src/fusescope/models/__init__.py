"""Models: `build_model` turns the `model` config section into a segmentation model.

Importing this package registers every decoder, every fusion op (`FUSION_OPS`) and every
segmentation method (`FUSION_METHODS`: the task's own, then one per fusion op on the multi-stream
host, `models/methods.py`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from fusescope.errors import FusescopeError, OptionError
from fusescope.models import bmc, decoders, deeplab, refinenet  # noqa: F401  (register)
from fusescope.models.methods import register_fusion_ops, segmentation_host
from fusescope.models.registry import DECODERS, FUSION_METHODS, FUSION_OPS
from fusescope.models.segmentor import Segmentor

# every module under models/fusion registers its ops and segmentation methods on import
for _info in pkgutil.iter_modules(importlib.import_module("fusescope.models.fusion").__path__):
    importlib.import_module(f"fusescope.models.fusion.{_info.name}")
# then every op the task did not register itself, on the multi-stream host
register_fusion_ops("segmentation", FUSION_METHODS, segmentation_host)


def build_model(
    model_cfg: Mapping[str, Any],
    modalities: list[str],
    in_channels: dict[str, int],
    num_classes: int,
) -> Segmentor:
    """Build the fusion method named by `model_cfg["name"]`; the other keys are its options."""
    options = dict(model_cfg)
    if "name" not in options:
        raise FusescopeError(f"model.name is missing; known: {', '.join(FUSION_METHODS.names())}")
    name = options.pop("name")
    try:
        return FUSION_METHODS.build(
            name,
            options,
            where="model",
            modalities=list(modalities),
            in_channels=dict(in_channels),
            num_classes=num_classes,
        )
    except OptionError as err:  # an option value the builder rejects; other errors are bugs
        raise FusescopeError(f"model {name!r}: {err}") from None


__all__ = ["build_model", "Segmentor", "FUSION_METHODS", "FUSION_OPS", "DECODERS"]
