"""Classification models: per-modality branches (timm image encoders, the text encoder), heads,
and the fusion methods registered in `CLASSIFICATION_METHODS` (importing this package registers
them). `build_classifier` turns the `model` config section into a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fusescope.errors import FusescopeError, OptionError
from fusescope.models.classification import mango, methods, multistream  # noqa: F401  (register)
from fusescope.models.classification.base import Classifier, Encoded
from fusescope.models.registry import CLASSIFICATION_METHODS


def build_classifier(
    model_cfg: Mapping[str, Any],
    modalities: list[str],
    in_specs: Mapping[str, Mapping[str, Any]],
    num_classes: int,
) -> Classifier:
    """Build the classification method named by `model_cfg["name"]`; other keys are options."""
    options = dict(model_cfg)
    if "name" not in options:
        raise FusescopeError(
            f"model.name is missing; known: {', '.join(CLASSIFICATION_METHODS.names())}"
        )
    name = options.pop("name")
    try:
        return CLASSIFICATION_METHODS.build(
            name,
            options,
            where="model",
            modalities=list(modalities),
            in_specs={m: dict(in_specs[m]) for m in modalities},
            num_classes=num_classes,
        )
    except OptionError as err:  # an option value the builder rejects; other errors are bugs
        raise FusescopeError(f"model {name!r}: {err}") from None


__all__ = ["CLASSIFICATION_METHODS", "Classifier", "Encoded", "build_classifier"]
