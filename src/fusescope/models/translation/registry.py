"""The registry of image-to-image translation generators (`model.name` of `task: translation`).

A builder is `builder(modalities, in_channels, out_channels, **model_cfg) -> nn.Module`, the
convention of `FUSION_METHODS` with the target's channel count in place of the class count.
"""

from fusescope.registry import Registry

TRANSLATION_METHODS = Registry("translation method")
