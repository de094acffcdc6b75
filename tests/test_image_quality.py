"""ImageQuality: hand-computed values, torchmetrics' PSNR, an independent SSIM, masks, merging."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from fusescope.metrics import ImageQuality


def smooth_images(b, c, h, w, seed):
    """Random images with structure at several scales (SSIM needs some)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, c, h // 4, w // 4, generator=g)
    up = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")
    return (0.7 * up + 0.3 * torch.rand(b, c, h, w, generator=g)).clamp(0, 1)


def ssim_reference(x, y, k=11, sigma=1.5, c1=0.01**2, c2=0.03**2):
    """Mean SSIM of two (C, H, W) images: Gaussian-weighted statistics over every k x k window
    that lies inside the image, written out window by window (Wang et al. 2004)."""
    r = np.arange(k) - (k - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / g.sum() ** 2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - k + 1):
            for j in range(x.shape[2] - k + 1):
                a, b = x[c, i : i + k, j : j + k], y[c, i : i + k, j : j + k]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cov = (w * a * b).sum() - ma * mb
                values.append(
                    (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
                )
    return float(np.mean(values))


def test_constant_images_known_values():
    q = ImageQuality(["depth"])
    pred = torch.full((2, 1, 16, 16), 0.5)
    target = torch.full((2, 1, 16, 16), 0.25)
    q.update(pred, target)
    m = q.compute()["depth"]
    assert m["l1"] == pytest.approx(0.25) and m["rmse"] == pytest.approx(0.25)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / 0.0625))  # 12.04 dB
    # constant windows: no variance, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = 0.01**2
    assert m["ssim"] == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1), rel=1e-5)
    # the authors' code's scale, [-1, 1]: errors double
    assert m["mae"] == pytest.approx(0.5) and m["mse"] == pytest.approx(0.25)
    assert m["images"] == 2


def test_psnr_is_the_mean_over_images_and_matches_torchmetrics():
    target = smooth_images(2, 3, 16, 16, seed=1)
    pred = target.clone()
    pred[0] = (pred[0] + 0.01).clamp(0, 1)
    pred[1] = (pred[1] - 0.2).clamp(0, 1)
    q = ImageQuality(["rgb"])
    q.update(pred, target)
    m = q.compute()["rgb"]
    per_image = [
        float(peak_signal_noise_ratio(pred[i : i + 1], target[i : i + 1], data_range=1.0))
        for i in range(2)
    ]
    assert m["psnr"] == pytest.approx(np.mean(per_image), rel=1e-5)
    pooled = float(peak_signal_noise_ratio(pred, target, data_range=1.0))
    assert abs(m["psnr"] - pooled) > 1  # the two definitions differ here: ours is per image
    assert m["l1"] == pytest.approx(float((pred - target).abs().mean()), rel=1e-6)
    assert m["rmse"] == pytest.approx(float((pred - target).square().mean().sqrt()), rel=1e-6)
    assert "mae" not in m and "mse" not in m  # rgb: not a MANGO MAE / MSE target


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_an_independent_reference(channels):
    target = smooth_images(2, channels, 16, 18, seed=2)
    pred = (0.8 * target + 0.2 * smooth_images(2, channels, 16, 18, seed=3)).clamp(0, 1)
    q = ImageQuality(["x"])
    q.update(pred, target)
    expected = np.mean(
        [ssim_reference(pred[i].double().numpy(), target[i].double().numpy()) for i in range(2)]
    )
    assert q.compute()["x"]["ssim"] == pytest.approx(expected, abs=1e-5)
    assert 0.3 < expected < 0.99  # a case where SSIM says something


def test_mask_leaves_pixels_out_and_predictions_are_clipped():
    target = torch.zeros(2, 1, 12, 12)
    target[:, :, :6] = 0.5  # the top half has depth, the bottom half is a hole
    pred = torch.full_like(target, 0.75)
    pred[1, :, :6] = 1.7  # beyond the range: clipped to 1
    q = ImageQuality(["depth"])
    q.update(pred, target, valid=target > 0)
    m = q.compute()["depth"]
    assert m["l1"] == pytest.approx((0.25 + 0.5) / 2)  # valid pixels only
    assert m["rmse"] == pytest.approx(math.sqrt((0.25**2 + 0.5**2) / 2))
    assert m["psnr"] == pytest.approx((-10 * math.log10(0.25**2) - 10 * math.log10(0.5**2)) / 2)
    assert m["mae"] == pytest.approx(2 * (0.25 + 0.5) / 2)
    assert m["mse"] == pytest.approx(4 * (0.25**2 + 0.5**2) / 2)


def test_states_of_two_processes_sum_to_the_whole():
    targets = {"rgb": smooth_images(6, 3, 16, 16, seed=4), "shade": smooth_images(6, 1, 16, 16, 5)}
    preds = {k: (v + 0.05 * torch.randn_like(v)).clamp(0, 1) for k, v in targets.items()}
    whole, a, b = (ImageQuality(["rgb", "shade"]) for _ in range(3))
    whole.update(preds, targets)
    a.update({k: v[:2] for k, v in preds.items()}, {k: v[:2] for k, v in targets.items()})
    b.update({k: v[2:] for k, v in preds.items()}, {k: v[2:] for k, v in targets.items()})
    merged = ImageQuality(["rgb", "shade"])
    merged.load_state({k: a.state()[k] + b.state()[k] for k in ("rgb", "shade")})
    for name, metrics in whole.compute().items():
        assert merged.compute()[name] == pytest.approx(metrics, rel=1e-9)
    assert set(whole.compute()["shade"]) == {"l1", "rmse", "psnr", "ssim", "mae", "mse", "images"}


def test_bad_input():
    q = ImageQuality(["rgb", "depth"])
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="mapping"):
        q.update(x, x)
    with pytest.raises(ValueError, match=r"no tensor for target\(s\) \['depth'\]"):
        q.update({"rgb": x}, {"rgb": x})
    one = ImageQuality(["rgb"])
    too_bright = torch.zeros(1, 3, 16, 16)
    too_bright[0, 0, 0, 0] = 2
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 1\], got 0..2"):
        one.update(x, too_bright)
    with pytest.raises(ValueError, match="smaller than the 11 x 11 SSIM window"):
        one.update(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="must be equal"):
        one.update(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="no image of target 'rgb'"):
        one.compute()


def test_half_precision_predictions_are_scored_in_float32():
    """Half-precision predictions (mixed precision) against float64 references computed from
    the same half values: errors of 1e-3 have squares near half precision's smallest normal
    number, so a metric computed in half would be off (PSNR by ~4e-3 dB here)."""
    target = smooth_images(2, 3, 16, 16, seed=6)
    g = torch.Generator().manual_seed(6)
    pred = (target + 1e-3 * torch.randn(target.shape, generator=g)).clamp(0, 1).half()
    q = ImageQuality(["rgb"])
    q.update(pred, target)
    m = q.compute()["rgb"]
    p64, t64 = pred.double().clamp(0, 1), target.double()
    err = p64 - t64
    mse = err.square().flatten(1).mean(1)
    assert m["l1"] == pytest.approx(float(err.abs().mean()), rel=1e-9)
    assert m["rmse"] == pytest.approx(float(err.square().mean().sqrt()), rel=1e-9)
    assert m["psnr"] == pytest.approx(float((-10 * torch.log10(mse)).mean()), abs=1e-6)
    ssim = np.mean([ssim_reference(p64[i].numpy(), t64[i].numpy()) for i in range(2)])
    assert m["ssim"] == pytest.approx(ssim, abs=1e-5)
    # half arithmetic gives another PSNR: the check above can tell
    half_mse = (pred - target.half()).square().flatten(1).float().mean(1)
    assert abs(float((-10 * torch.log10(half_mse)).mean()) - m["psnr"]) > 1e-3
