"""Dissection toolkit: feature taps, CKA, Net2Vec Set IoU, semantic variance, Grad-CAM.

The primitives read any model through forward hooks (`FeatureTaps`); `protocol` runs the
dissection paper's protocol over trained runs and `report` writes it up.
"""

from fusescope.dissect.cka import CKAAccumulator, linear_cka
from fusescope.dissect.gradcam import GradCAM, shared_scale
from fusescope.dissect.net2vec import Net2Vec, Net2VecResult
from fusescope.dissect.svar import ConceptVariance, concept_variance, semantic_variance
from fusescope.dissect.taps import FeatureTaps, Tap, concat_features, stream_features

__all__ = [
    "CKAAccumulator",
    "ConceptVariance",
    "FeatureTaps",
    "GradCAM",
    "Net2Vec",
    "Net2VecResult",
    "Tap",
    "concat_features",
    "concept_variance",
    "linear_cka",
    "semantic_variance",
    "shared_scale",
    "stream_features",
]
