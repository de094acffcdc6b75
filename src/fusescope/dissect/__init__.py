"""Dissection toolkit: feature taps, CKA, Net2Vec Set IoU, semantic variance, Grad-CAM.

The primitives read any model through forward hooks (`FeatureTaps`); `protocol` runs the
dissection paper's protocol over trained runs and `report` writes it up.

The names below are imported on first use (PEP 562), so importing the `dissect` command's
module for the command line's help does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CKAAccumulator": "cka",
    "linear_cka": "cka",
    "GradCAM": "gradcam",
    "shared_scale": "gradcam",
    "Net2Vec": "net2vec",
    "Net2VecResult": "net2vec",
    "ConceptVariance": "svar",
    "concept_variance": "svar",
    "semantic_variance": "svar",
    "FeatureTaps": "taps",
    "Tap": "taps",
    "concat_features": "taps",
    "stream_features": "taps",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
