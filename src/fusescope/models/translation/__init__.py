"""Image-to-image translation: the pix2pix U-Net generator fused by every method, the PatchGAN
discriminator, and their registry. Importing the package registers every method."""

from fusescope.models.translation import methods as _methods  # noqa: F401  (registers)
from fusescope.models.translation.registry import TRANSLATION_METHODS

__all__ = ["TRANSLATION_METHODS"]
