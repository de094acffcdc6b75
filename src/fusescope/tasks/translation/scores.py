"""The translation task's scores over an evaluation split: `ImageQuality` (L1, RMSE, PSNR,
SSIM, and MAE / MSE for normal, depth and shade targets) and `FeatureDistance` (FID, KID x 100)
per target, plus the headline numbers `fusescope eval --json` prints.

Every metric compares images in [0, 1]: the generator's [-1, 1] output and the target mapped as
`data/paired.TargetSpace` does, back by (y + 1) / 2, so 8-bit targets are scored in their own
units and depth as depth / range (holes left out of the pixel metrics). FID / KID see 3-channel
images: a 1-channel target is tiled to 3. The headline `l1`, `rmse`, `psnr`, `ssim`, `fid`,
`kid` are the mean over targets (with one target, that target's), `feature_network` names the
FID / KID features, `comparable_to_inception` says whether they are FID's Inception features,
and `comparable_to_published` (false) with `published_pipeline_differences` says why even those
do not compare with CEN's published numbers (`fusescope.metrics.fid`).

A multi-stream generator is scored per output as CEN's code reports it: every stream's own
image and the ensemble (`TranslationTask.evaluate` keeps one `TranslationScores` per output),
and `best_output` picks the one with the lowest FID, which is what CEN's tables print (the best
FID over its evaluations and over the streams and the ensemble).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fusescope.data.kinds import kind_of
from fusescope.data.meta import ModalitySpec
from fusescope.metrics.fid import EFFICIENTNET_LITE0, FeatureDistance, feature_network
from fusescope.metrics.image_quality import ImageQuality

HEADLINE = ("l1", "rmse", "psnr", "ssim", "fid", "kid")


class TranslationScores:
    """Args:
    targets: target modality names, in output-channel order.
    specs: their modality specs (targets of a kind with holes, depth, get a validity mask).
    feature_weights: the Inception weights file for FID / KID; None: EfficientNet-Lite0.
    network: a feature network built by `feature_network`, shared between several
        TranslationScores (one per output) instead of `feature_weights`.
    """

    def __init__(
        self,
        targets: Sequence[str],
        specs: dict[str, ModalitySpec],
        feature_weights: str | None = None,
        network: nn.Module | None = None,
    ):
        self.targets = list(targets)
        self.specs = specs
        self.quality = ImageQuality(self.targets)
        if network is None:
            network = feature_network(feature_weights or EFFICIENTNET_LITE0)
        # every process scores the whole split (see TranslationTask.evaluate): no process
        # gathers another's features (after a multi-process training only the first process
        # evaluates, and a gather would wait for the others forever)
        self.distance = {t: FeatureDistance(network, sync_on_compute=False) for t in self.targets}

    def update(self, preds: dict[str, Tensor], trues: dict[str, Tensor]) -> None:
        """Add a batch of every target: `{target: (B, C, H, W)}` in [-1, 1]."""
        pred01 = {t: (preds[t].float().clamp(-1, 1) + 1) / 2 for t in self.targets}
        true01 = {t: ((trues[t].float() + 1) / 2).clamp(0, 1) for t in self.targets}
        valid = {t: true01[t] > 0 for t in self.targets if kind_of(self.specs[t]).holes}
        self.quality.update(pred01, true01, valid or None)
        for t in self.targets:
            fake, real = pred01[t], true01[t]
            if fake.shape[1] == 1:
                fake, real = fake.expand(-1, 3, -1, -1), real.expand(-1, 3, -1, -1)
            self.distance[t].update(real=real, fake=fake)

    def compute(self) -> dict:
        per_target = self.quality.compute()
        for t in self.targets:
            per_target[t].update(self.distance[t].compute())
        first = per_target[self.targets[0]]
        result = {
            k: sum(per_target[t][k] for t in self.targets) / len(self.targets) for k in HEADLINE
        }
        result.update(
            feature_network=first["feature_network"],
            comparable_to_inception=first["comparable_to_inception"],
            comparable_to_published=first["comparable_to_published"],
            published_pipeline_differences=first["published_pipeline_differences"],
            kid_scale=100,
            per_target=per_target,
        )
        return result


def best_output(per_output: dict[str, dict]) -> dict:
    """CEN's report over one evaluation: the output (a stream or the ensemble) with the lowest
    FID, with its FID, KID and L1."""
    name = min(per_output, key=lambda k: per_output[k]["fid"])
    return {"output": name, **{k: per_output[name][k] for k in ("fid", "kid", "l1")}}
