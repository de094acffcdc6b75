"""Image quality of translated images, per target modality: L1, RMSE, PSNR, SSIM, MAE, MSE.

Images are float tensors (B, C, H, W) in [0, 1] (any C: 3 for RGB or normals, 1 for depth or
shade). Predictions are clipped to [0, 1] first, as saving them to an 8-bit image would;
targets outside [0, 1] are an error (the caller's scaling is wrong). The metrics, for one
target over all images added:

    l1    mean |pred - target| over every valid pixel and channel of the set (pooled)
    rmse  sqrt(mean (pred - target)^2), pooled the same way
    psnr  mean over images of 10 log10(1 / MSE_image) dB (data range 1; a perfect image is inf)
    ssim  mean over images of SSIM (Wang et al. 2004: Gaussian window 11 x 11, sigma 1.5,
          K1 0.01, K2 0.03, data range 1), averaged over the windows that lie inside the image
          (as ssim.m and scikit-image); torchmetrics computes the map (needs H, W >= 11)
    mae   the authors' code's L1 (CEN, TokenFusion, hence MANGO's Table 2): images mapped to
          [-1, 1], per-image mean |error| averaged over images, i.e. 2 x l1 when no pixel is masked
    mse   the same code's MSE: 4 x the per-image mean squared error, averaged over images

`mae` and `mse` are reported for the targets MANGO scores with them (normal, shade, depth);
MANGO prints them x 10 ("x 10^-1" in its table header). `valid` (optional, (B, 1 or C, H, W)
bool) leaves pixels out of every metric but SSIM, e.g. depth holes; an image with no valid pixel
counts for SSIM only.

The state is one float64 vector per target of sums and counts (`state()`), so processes combine
by summing: under DDP `q.load_state(fabric.all_reduce(q.state(), reduce_op="sum"))` before
`compute()`. Updates add on the tensors' device without a host sync, apart from the range check.

Usage:
    q = ImageQuality(["rgb"])
    q.update(pred, target)                  # one target: tensors
    q.update({"rgb": pred}, {"rgb": target}) # or mappings keyed by target
    q.compute()  # {"rgb": {"l1": ..., "rmse": ..., "psnr": ..., "ssim": ..., "images": n}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

MAE_MSE_TARGETS = ("normal", "shade", "depth")
SSIM_SIGMA = 1.5
SSIM_KERNEL = 11  # the Gaussian window torchmetrics derives from sigma 1.5
# positions in a target's state vector
ABS, SQ, COUNT, PSNR, SSIM, IMAGES, MAE, MSE, SCORED = range(9)


class ImageQuality:
    """Streaming L1 / RMSE / PSNR / SSIM (and MAE / MSE) for every target (module docstring).

    Args:
        targets: the target modality names, in report order.
        mae_mse_targets: targets that also get `mae` and `mse` (default: MANGO's).
    """

    def __init__(self, targets: Sequence[str], mae_mse_targets: Sequence[str] = MAE_MSE_TARGETS):
        if not targets or len(set(targets)) != len(targets):
            raise ValueError(f"targets must be distinct names, got {list(targets)}")
        self.targets = list(targets)
        self.mae_mse = [t for t in self.targets if t in mae_mse_targets]
        self._state = {t: torch.zeros(9, dtype=torch.float64) for t in self.targets}

    def state(self) -> dict[str, Tensor]:
        """Sums and counts per target: add two processes' states to combine them."""
        return {t: s.clone() for t, s in self._state.items()}  # in-place all_reduce is safe

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        """Replace the state, e.g. with the sum of every process's `state()`."""
        if set(state) != set(self.targets):
            raise ValueError(f"state has targets {sorted(state)}, expected {self.targets}")
        self._state = {t: state[t].to(torch.float64).reshape(9) for t in self.targets}

    def reset(self) -> None:
        self._state = {t: torch.zeros_like(s) for t, s in self._state.items()}

    def update(
        self,
        pred: Tensor | Mapping[str, Tensor],
        target: Tensor | Mapping[str, Tensor],
        valid: Tensor | Mapping[str, Tensor] | None = None,
    ) -> None:
        """Add a batch: tensors when there is one target, else mappings keyed by target name.

        Raises:
            ValueError: shapes differ, a target is missing or out of [0, 1], images are
                smaller than the SSIM window.
        """
        preds, targets, valids = (
            self._by_target(pred, "pred"),
            self._by_target(target, "target"),
            self._by_target(valid, "valid") if valid is not None else {},
        )
        for name in self.targets:
            self._state[name] = self._state[name].to(targets[name].device) + _batch_sums(
                preds[name], targets[name], valids.get(name), name
            )

    def _by_target(self, x: Tensor | Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
        if isinstance(x, Tensor):
            if len(self.targets) != 1:
                raise ValueError(
                    f"{what}: give a mapping {{target: tensor}} for the targets {self.targets}"
                )
            return {self.targets[0]: x}
        missing = [t for t in self.targets if t not in x]
        if missing and what != "valid":
            raise ValueError(f"{what}: no tensor for target(s) {missing}")
        return dict(x)

    def compute(self) -> dict[str, dict[str, float]]:
        """{target: {"l1", "rmse", "psnr", "ssim", ["mae", "mse"], "images"}} over all updates."""
        result = {}
        for name in self.targets:
            s = self._state[name].cpu().tolist()
            if s[IMAGES] == 0:
                raise ValueError(f"ImageQuality: no image of target {name!r} was added")
            # every pixel masked out: the pixel metrics are undefined (NaN, null in JSON)
            pixels, scored = s[COUNT] or math.nan, s[SCORED] or math.nan
            metrics = {
                "l1": s[ABS] / pixels,
                "rmse": math.sqrt(s[SQ] / pixels),
                "psnr": s[PSNR] / scored,
                "ssim": s[SSIM] / s[IMAGES],
            }
            if name in self.mae_mse:
                metrics.update(mae=s[MAE] / scored, mse=s[MSE] / scored)
            metrics["images"] = int(s[IMAGES])
            result[name] = metrics
        return result


def _batch_sums(pred: Tensor, target: Tensor, valid: Tensor | None, name: str) -> Tensor:
    """One batch's contribution to a target's state vector (float64, on the batch's device)."""
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(
            f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
            f"must be equal (B, C, H, W)"
        )
    if min(target.shape[-2:]) < SSIM_KERNEL:
        raise ValueError(
            f"{name}: images of {tuple(target.shape[-2:])} pixels are smaller than "
            f"the {SSIM_KERNEL} x {SSIM_KERNEL} SSIM window"
        )
    low, high = torch.aminmax(target.detach())
    if low < 0 or high > 1:
        raise ValueError(
            f"{name}: target values must lie in [0, 1], got {float(low):.4g}..{float(high):.4g}"
        )
    # float32 at least: half-precision outputs (mixed precision) would blur SSIM's moments
    dtype = torch.promote_types(target.dtype, torch.float32)
    pred = pred.detach().to(dtype).clamp(0, 1)
    target = target.detach().to(dtype)
    err = pred - target  # (B, C, H, W)
    if valid is None:
        mask = torch.ones_like(err, dtype=torch.bool)
    else:
        if (
            valid.dim() != 4
            or valid.shape[1] not in (1, err.shape[1])
            or (valid.shape[0], *valid.shape[2:]) != (err.shape[0], *err.shape[2:])
        ):
            raise ValueError(f"{name}: valid {tuple(valid.shape)} does not fit {tuple(err.shape)}")
        mask = valid.to(torch.bool).expand_as(err)
    weights = mask.to(err.dtype)
    dims = (1, 2, 3)
    abs_sum = (err.abs() * weights).sum(dims, dtype=torch.float64)  # (B,)
    sq_sum = (err.square() * weights).sum(dims, dtype=torch.float64)
    count = weights.sum(dims, dtype=torch.float64)
    scored = count > 0
    per_count = count.clamp(min=1)
    mse_image = sq_sum / per_count
    # log10 of 0 is -inf: a perfect image has infinite PSNR, an image with no valid pixel none
    psnr = torch.where(scored, -10 * torch.log10(mse_image), torch.zeros_like(mse_image))
    # torchmetrics' SSIM map (H, W), less the border windows that reach into its reflect
    # padding: the standard windows-inside-the-image SSIM (Wang et al.'s ssim.m, scikit-image),
    # the same for every torchmetrics version (the mean it returns changed to include them)
    _, ssim_map = structural_similarity_index_measure(
        pred,
        target,
        data_range=1.0,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL,
        reduction="none",
        return_full_image=True,
    )
    pad = SSIM_KERNEL // 2
    ssim = ssim_map[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))  # (B,)
    zero = torch.zeros((), dtype=torch.float64, device=err.device)
    return torch.stack(
        [
            abs_sum.sum(),
            sq_sum.sum(),
            count.sum(),
            psnr.sum(),
            ssim.to(torch.float64).sum(),
            zero + err.shape[0],
            torch.where(scored, 2 * abs_sum / per_count, zero).sum(),  # [-1, 1] scale: |2e|
            torch.where(scored, 4 * mse_image, zero).sum(),  # (2e)^2
            scored.sum(dtype=torch.float64),
        ]
    )
