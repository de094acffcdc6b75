"""FeatureDistance: FID / KID against independent references, the feature networks, bad weights."""

import sys

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from fusescope.errors import FusescopeError
from fusescope.metrics import FeatureDistance
from fusescope.metrics.fid import EfficientNetLite0Features, InceptionFeatures


class Flatten(nn.Module):
    """Features = the pixels: lets a test choose the features exactly."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, images):
        return images.flatten(1)


class Pooled(nn.Module):
    """A cheap stand-in feature network: 4 x 4 average-pooled pixels (48-d)."""

    num_features = 48

    def forward(self, images):
        return nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)


def images_with_features(features):
    """(N, 3, 1, d / 3) images whose flattened pixels are `features` (N, d) in [0, 1]."""
    n, d = features.shape
    return torch.as_tensor(features, dtype=torch.float32).reshape(n, 3, 1, d // 3)


def mmd2_unbiased_reference(x, y, degree=3):
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(a, b) = (a.b / d + 1)^degree,
    written with explicit sums over distinct pairs."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1) ** degree

    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return within_x + within_y - 2 * kxy.mean()


def fid_reference(x, y):
    """Frechet distance of Gaussians fitted to two feature sets (scipy's matrix square root)."""
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(sx @ sy).real
    return float(((mx - my) ** 2).sum() + np.trace(sx + sy - 2 * root))


def random_features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.beta(2, 3, size=(n, d)) + shift, 0, 1)


def test_kid_and_fid_match_references_on_random_features():
    """Sets larger than the KID subsets, so subsets are drawn: the reference draws the same
    indices (torch.randperm from the seed, as torchmetrics draws them) and computes each
    subset's MMD^2 with its own NumPy estimator; FID against scipy's matrix square root."""
    real, fake = random_features(30, 12, seed=0), random_features(24, 12, seed=1, shift=0.15)
    fd = FeatureDistance(Flatten(12), label="pixels", kid_subset_size=10, kid_subsets=7, seed=3)
    fd.update(real=images_with_features(real[:13]), fake=images_with_features(fake[:5]))
    fd.update(real=images_with_features(real[13:]), fake=images_with_features(fake[5:]))
    result = fd.compute()
    real32 = real.astype(np.float32).astype(np.float64)  # the images hold float32 pixels
    fake32 = fake.astype(np.float32).astype(np.float64)
    torch.manual_seed(3)
    subsets = []
    for _ in range(7):
        r, f = torch.randperm(30)[:10].numpy(), torch.randperm(24)[:10].numpy()
        subsets.append(mmd2_unbiased_reference(real32[r], fake32[f]))
    assert result["kid_subset_size"] == 10 and result["kid_subsets"] == 7
    assert result["kid"] == pytest.approx(100 * np.mean(subsets), rel=1e-9)
    assert result["kid_std"] == pytest.approx(100 * np.std(subsets), rel=1e-9)
    assert result["kid_std"] > 0  # the subsets differ: they were drawn
    assert result["fid"] == pytest.approx(fid_reference(real32, fake32), rel=1e-6)
    assert result["real_images"] == 30 and result["fake_images"] == 24
    assert result["feature_network"] == "pixels" and result["comparable_to_inception"] is False
    assert result["comparable_to_published"] is False


def test_kid_over_subsets_estimates_the_full_sets_mmd():
    """The unbiased MMD^2 of random subsets (without replacement) has the full sets' unbiased
    MMD^2 as its expectation (a U-statistic): the mean over many subsets lies within a few
    standard errors of it, whatever the draws."""
    real, fake = random_features(40, 9, seed=4), random_features(36, 9, seed=5, shift=0.1)
    fd = FeatureDistance(Flatten(9), label="pixels", kid_subset_size=12, kid_subsets=3000)
    fd.update(real=images_with_features(real), fake=images_with_features(fake))
    result = fd.compute()
    full = 100 * mmd2_unbiased_reference(
        real.astype(np.float32).astype(np.float64), fake.astype(np.float32).astype(np.float64)
    )
    standard_error = result["kid_std"] / np.sqrt(3000)
    assert abs(result["kid"] - full) < 4 * standard_error
    assert standard_error < 0.1 * abs(full)  # the check is tight enough to fail


def test_kid_subsets_are_capped_and_seeded():
    real, fake = random_features(9, 6, seed=2), random_features(7, 6, seed=3, shift=0.1)

    def kid(seed, subset_size):
        fd = FeatureDistance(Flatten(6), label="pixels", kid_subset_size=subset_size, seed=seed)
        fd.update(real=images_with_features(real), fake=images_with_features(fake))
        return fd.compute()

    capped = kid(0, 1000)
    assert capped["kid_subset_size"] == 7  # min(1000, 9 real, 7 generated), as CEN
    small = kid(0, 4)
    assert small["kid_subset_size"] == 4 and small["kid_std"] > 0
    assert kid(0, 4)["kid"] == small["kid"] and kid(1, 4)["kid"] != small["kid"]


def test_distances_are_zero_for_the_same_set_and_grow_with_a_distortion():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(400, 3, 2, 2, generator=g)
    real, other = images[:200], images[200:]  # two samples of one distribution

    def distances(fake):
        fd = FeatureDistance(Flatten(12), label="pixels")
        fd.update(real=real, fake=fake)
        result = fd.compute()
        return result["fid"], result["kid"]

    fid_self, _ = distances(real)
    # the distortion: brightness raised by s
    fids, kids = zip(*(distances((other + s).clamp(0, 1)) for s in (0.0, 0.15, 0.4)), strict=True)
    # float64 moments from running sums: the same set comes out ~1e-6 of a second sample's FID
    assert abs(fid_self) < 1e-4 * fids[0]
    # KID is unbiased: near 0 for a second sample (a set against itself is not two samples:
    # its diagonal kernel terms make the estimate negative)
    assert abs(kids[0]) < 0.1 * kids[1]
    assert fids[0] < fids[1] < fids[2] and kids[0] < kids[1] < kids[2]


def test_efficientnet_features_are_labelled_and_see_distortions():
    net = EfficientNetLite0Features()
    assert net.num_features == 1280 and not net.comparable_to_inception
    assert "not comparable to Inception" in net.label
    g = torch.Generator().manual_seed(1)
    clean = nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=32, mode="bilinear")
    noise = torch.randn(clean.shape, generator=g)
    with torch.no_grad():
        f = [net((clean + s * noise).clamp(0, 1)) for s in (0.0, 0.1, 0.4)]
    assert f[0].shape == (4, 1280)
    net.train()
    assert not net.training  # a fixed feature extractor: BN statistics never move
    shift = [float((f[0] - fs).norm(dim=1).mean()) for fs in f[1:]]
    assert 0 < shift[0] < shift[1]
    # the pooled features are what the ImageNet classifier reads: the package's classifier on
    # them equals the full network's logits
    import timm

    from fusescope.models.backbones import packaged_imagenet

    full = timm.create_model("efficientnet_lite0", pretrained=False)
    full.load_state_dict(packaged_imagenet("efficientnet_lite0"))
    full.eval()
    x = nn.functional.interpolate(clean, size=224, mode="bilinear", antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(full.classifier(f[0]), full((x * 255 - 127) / 128))


def test_a_built_network_is_shared_and_keeps_its_label():
    net = EfficientNetLite0Features()
    a, b = FeatureDistance(net), FeatureDistance(net)
    assert a.network is b.network is net
    assert "not comparable" in a.network.label and not a.network.comparable_to_inception


def test_default_network_end_to_end():
    """Two different image sets through the default network: FID equals the Frechet distance
    of the network's own features computed here (scipy), KID is positive."""
    g = torch.Generator().manual_seed(2)
    real = torch.rand(12, 3, 24, 24, generator=g)
    fake = torch.rand(12, 3, 24, 24, generator=g) * 0.8 + 0.1  # lower contrast
    fd = FeatureDistance()
    fd.update(real=real[:7], fake=fake[:5])
    fd.update(real=real[7:], fake=fake[5:])
    result = fd.compute()
    net = EfficientNetLite0Features()
    with torch.no_grad():
        x, y = net(real).double().numpy(), net(fake).double().numpy()
    assert result["fid"] == pytest.approx(fid_reference(x, y), rel=1e-5)
    assert result["fid"] > 1 and result["kid"] > 0
    assert "efficientnet_lite0" in result["feature_network"]
    assert result["comparable_to_inception"] is False
    assert result["published_pipeline_differences"] == ["not FID's Inception-v3 features"]


def test_bad_images():
    fd = FeatureDistance(Pooled(), label="pooled")
    with pytest.raises(ValueError, match=r"float \(B, 3, H, W\)"):
        fd.update(real=torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"real images must lie in \[0, 1\]"):
        fd.update(real=torch.rand(2, 3, 8, 8) + 1)
    fd.update(real=torch.rand(1, 3, 8, 8), fake=torch.rand(5, 3, 8, 8))
    with pytest.raises(ValueError, match="at least 2 real and 2 generated images, got 1 and 5"):
        fd.compute()


# torch-fidelity's FID Inception, from a weights file


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A weights file in torch-fidelity's format: its architecture, randomly initialised (the
    real weights cannot be downloaded here)."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

    class RandomInception(fidelity.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None  # keep the random initialisation

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    net = RandomInception(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth")
    )
    path = folder / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_features_equal_pytorch_fid_s(inception_weights, monkeypatch, tmp_path):
    """Our FID Inception (torch-fidelity's port, read from the file) against an independent
    implementation of the same network, pytorch-fid's (the one CEN's fid_kid.py uses), with the
    same tensors: pool3 features agree on 299 x 299 frames, where neither resizes; at another
    size the two resizes differ (TensorFlow-1 bilinear vs F.interpolate), one of the reasons
    the results say they do not compare with CEN's published numbers."""
    inception = pytest.importorskip("pytorch_fid.inception")
    state = torch.load(inception_weights, weights_only=True)
    # He-scaled random convolutions keep the activations of the random network at O(1), so
    # that a difference between the implementations shows (the default init fades to ~1e-7)
    g = torch.Generator().manual_seed(5)
    for tensor in state.values():
        if tensor.dim() == 4:
            fan_in = tensor[0].numel()
            tensor.copy_(torch.randn(tensor.shape, generator=g) * (2 / fan_in) ** 0.5)
    inception_weights = tmp_path / inception_weights.name
    torch.save(state, inception_weights)
    # pytorch-fid would download its weights file: it gets the same tensors instead (the two
    # ports name them alike, being torchvision's Inception3 with FID's blocks)
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: state)
    theirs = inception.InceptionV3([3], resize_input=True, normalize_input=False).eval()
    ours = FeatureDistance(inception_weights).network
    assert isinstance(ours, InceptionFeatures) and ours.comparable_to_inception
    assert "inception_v3" in ours.label and inception_weights.name in ours.label

    def pytorch_fid(images):  # 8-bit pixels, scaled as the TensorFlow graph does
        pixels = (images * 255).round()
        return theirs((pixels - 128) / 128)[0].flatten(1)

    images = torch.rand(2, 3, 299, 299, generator=g)
    with torch.no_grad():
        expected = pytorch_fid(images)
        scale = float(expected.abs().max())
        assert expected.shape == (2, 2048) and scale > 0.1
        torch.testing.assert_close(ours(images), expected, rtol=1e-4, atol=1e-5 * scale)
        small = torch.rand(2, 3, 64, 80, generator=g)
        assert (ours(small) - pytorch_fid(small)).abs().max() > 1e-3 * scale


def test_inception_results_say_why_they_are_not_cens_published_numbers(inception_weights):
    fd = FeatureDistance(inception_weights)
    g = torch.Generator().manual_seed(4)
    fd.update(
        real=torch.rand(3, 3, 32, 32, generator=g), fake=torch.rand(3, 3, 32, 32, generator=g)
    )
    result = fd.compute()
    assert result["comparable_to_inception"] is True
    assert result["comparable_to_published"] is False
    differences = " ".join(result["published_pipeline_differences"])
    for what in ("min..max", "matplotlib", "pytorch-fid", "F.interpolate"):
        assert what in differences, what


def test_inception_weights_refused_with_one_line(tmp_path):
    pytest.importorskip("torch_fidelity")  # the file is read once torch-fidelity is found
    cases = {}
    cases["missing"] = (tmp_path / "nowhere.pth", "Inception weights file not found")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    cases["corrupt"] = (corrupt, "cannot read weights")
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    cases["other network"] = (
        other,
        r"not torch-fidelity's FID Inception weights \(.*Missing key.*Conv2d_1a_3x3",
    )
    for name, (path, match) in cases.items():
        with pytest.raises(FusescopeError, match=match) as err:
            FeatureDistance(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name


def test_inception_without_torch_fidelity_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    torch.save({}, path)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if absent
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(FusescopeError, match="pip install torch-fidelity"):
        FeatureDistance(path)


DDP_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
from fusescope.metrics import FeatureDistance, ImageQuality


class Flatten(nn.Module):
    num_features = 12

    def forward(self, images):
        return images.flatten(1)


def data():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(9, 3, 2, 2, generator=g), torch.rand(7, 3, 2, 2, generator=g)
    target = torch.rand(5, 1, 12, 12, generator=g)
    return real, fake, target, (target + 0.1 * torch.rand(5, 1, 12, 12, generator=g)).clamp(0, 1)


def measure(real, fake, target, pred, reduce=None):
    fd = FeatureDistance(Flatten(), label="pixels", kid_subset_size=6)
    fd.update(real=real, fake=fake)
    q = ImageQuality(["depth"])
    q.update(pred, target)
    if reduce is not None:
        q.load_state(reduce(q.state()))
    return {**fd.compute(), **q.compute()["depth"]}


def worker(rank, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    real, fake, target, pred = data()
    cut = {"real": (5, 9), "fake": (3, 7), "image": (2, 5)}  # uneven shares
    def part(x, key):
        a, b = cut[key]
        return x[:a] if rank == 0 else x[a:b]
    def summed(state):
        for v in state.values():
            dist.all_reduce(v)
        return state
    result = measure(part(real, "real"), part(fake, "fake"), part(target, "image"),
                     part(pred, "image"), summed)
    # unsynchronised: this process's images alone
    alone = FeatureDistance(Flatten(), label="pixels", sync_on_compute=False)
    alone.update(real=part(real, "real"), fake=part(fake, "fake"))
    result["alone"] = alone.compute()["real_images"]
    if rank == 0:
        with open(os.path.join(folder, "two.json"), "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    folder = sys.argv[1]
    with open(os.path.join(folder, "one.json"), "w") as f:
        json.dump(measure(*data()), f)
    mp.spawn(worker, args=(folder,), nprocs=2)
"""


def test_two_processes_give_the_one_process_result(tmp_path):
    """FID / KID (torchmetrics gathers the features of every process: KID's subset size and
    the counts are the global ones) and ImageQuality (states summed) under gloo DDP, with
    uneven shares of the images."""
    import json
    import os
    import socket
    import subprocess

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(port)],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two.pop("alone") == 5  # sync_on_compute=False: rank 0's 5 real images
    assert one["real_images"] == 9 and one["fake_images"] == 7 and one["kid_subset_size"] == 6
    # gathered in rank order, the features are the one process's in its order: the seeded KID
    # subsets are the same too
    for key, value in one.items():
        expected = pytest.approx(value, rel=1e-9) if isinstance(value, float) else value
        assert two[key] == expected, key
