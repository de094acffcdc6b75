"""The registries of model parts. Builders register themselves when their module is imported;
`fusescope.models` imports every module that registers one."""

from fusescope.registry import Registry

FUSION_METHODS = Registry("fusion method")
DECODERS = Registry("decoder")
CLASSIFICATION_METHODS = Registry("classification method")  # fusescope.models.classification
