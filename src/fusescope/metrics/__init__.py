"""Metrics of generated images: `ImageQuality` (L1, RMSE, PSNR, SSIM, MAE, MSE per target) and
`FeatureDistance` (FID and KID with a pluggable feature network). Segmentation's confusion
metrics live in `fusescope.tasks.segmentation.metrics`.

Importing this package loads torch and torchmetrics; `fid` loads timm only when built.
"""

from fusescope.metrics.fid import FeatureDistance
from fusescope.metrics.image_quality import ImageQuality

__all__ = ["FeatureDistance", "ImageQuality"]
