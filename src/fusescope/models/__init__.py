"""Models: `build_model` turns the `model` config section into a Segmentor.

Importing this package registers every fusion method and decoder.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from fusescope.errors import FusescopeError, OptionError
from fusescope.models import decoders, deeplab, refinenet  # noqa: F401  (register decoders)
from fusescope.models.registry import DECODERS, FUSION_METHODS
from fusescope.models.segmentor import Segmentor

# every module under models/fusion registers its methods on import
for _info in pkgutil.iter_modules(importlib.import_module("fusescope.models.fusion").__path__):
    importlib.import_module(f"fusescope.models.fusion.{_info.name}")


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


__all__ = ["build_model", "Segmentor", "FUSION_METHODS", "DECODERS"]
