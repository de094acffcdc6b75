"""The translation task without the engine: data checks, the one-optimiser GAN loss against the
two-optimiser reference, global-batch normalisation, and evaluation's known answers."""

from __future__ import annotations

import pytest
import torch

from fusescope.config import load_config
from fusescope.data.batching import collate
from fusescope.data.meta import load_meta
from fusescope.errors import FusescopeError
from fusescope.io import write_png
from fusescope.tasks.translation import TranslationTask, adversarial_losses, gan_criterion
from translation_helpers import write_translation_dataset


def config(root, *overrides, targets=("rgb",)):
    cfg = load_config(
        None,
        [
            "task=translation",
            f"data.root={root}",
            "data.modalities=[shade,texture]",
            f"data.targets=[{','.join(targets)}]",
            "model.name=cen",
            "model.depth=3",
            "model.width=4",
            "model.dropout=0",
            "model.disc_width=4",
            "train.batch_size=2",
            *overrides,
        ],
    )
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_translation_dataset(tmp_path_factory.mktemp("tr") / "data", n=8, size=(32, 32))


def batch_of(task, cfg, indices=(0, 1, 2, 3)):
    stats = task.normalisation_stats(cfg)
    ds = task.train_dataset(cfg, stats, seed=0)
    b = collate([ds[(0, i)] for i in indices])
    return {k: v for k, v in b.items() if k != "id"}


@pytest.mark.parametrize("mode", ["vanilla", "lsgan"])
def test_one_backward_gives_each_network_its_own_gradient(data, mode):
    """The combined loss's gradients equal pix2pix's two separate objectives': G's from
    L1 + adversarial through D, D's from real vs detached fake."""
    task = TranslationTask()
    cfg = config(data, f"train.gan_mode={mode}")
    meta = load_meta(data)
    model = task.build_model(cfg, meta)
    batch = batch_of(task, cfg)
    n = torch.tensor(4.0)
    out = model(batch)
    loss, parts = task.loss(out, batch, meta, cfg.train, n)
    loss.backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()

    # reference: two objectives, each differentiated on its own
    out = model(batch)
    y = batch["target:rgb"]
    cond = model.condition(batch)
    fakes = list(out["per_modality"].values())
    D = model.discriminator
    recon = sum((f - y).abs().flatten(1).mean(1).sum() for f in [out["image"], *fakes]) * 100 / 4
    g_adv = sum(gan_criterion(D(cond, f), True, mode).sum() for f in fakes) / 4
    (recon + g_adv + out["aux_losses"]["l1_gamma"]).backward(
        inputs=list(model.generator.parameters())
    )
    d_obj = (
        sum(
            0.5
            * (
                gan_criterion(D(cond, y), True, mode)
                + gan_criterion(D(cond, f.detach()), False, mode)
            ).sum()
            for f in fakes
        )
        / 4
    )
    d_obj.backward(inputs=list(D.parameters()))
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k], p.grad, msg=k, rtol=1e-4, atol=1e-6)
    assert {"l1", "l1_shade", "l1_texture", "gan_g", "gan_d", "l1_gamma"} == set(parts)


def test_a_step_moves_d_and_g_in_their_directions(data):
    """One optimiser step on the combined loss: D gets better at telling the (old) fakes from
    the real images, and G's new fakes fool the (old) D more; the reconstruction term is off,
    so the adversarial terms alone move G."""
    import copy

    task = TranslationTask()
    cfg = config(data, "model.name=early_concat", "train.recon_weight=0")
    meta = load_meta(data)
    model = task.build_model(cfg, meta)
    batch = batch_of(task, cfg)
    y, cond = batch["target:rgb"], model.condition(batch)
    old_d = copy.deepcopy(model.discriminator)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    out = model(batch)
    old_fake = out["image"].detach()
    loss, _ = task.loss(out, batch, meta, cfg.train, torch.tensor(4.0))
    loss.backward()
    opt.step()
    with torch.no_grad():
        d_before = adversarial_losses(old_d, cond, y, [old_fake], "vanilla")[1].sum()
        d_after = adversarial_losses(model.discriminator, cond, y, [old_fake], "vanilla")[1].sum()
        new_fake = model(batch)["image"]
        g_before = adversarial_losses(old_d, cond, y, [old_fake], "vanilla")[0].sum()
        g_after = adversarial_losses(old_d, cond, y, [new_fake], "vanilla")[0].sum()
    assert d_after < d_before
    assert g_after < g_before


def test_loss_is_normalised_by_the_global_batch(data):
    """Two halves with the whole batch's denominator sum to the whole batch's loss."""
    task = TranslationTask()
    cfg = config(data)
    meta = load_meta(data)
    model = task.build_model(cfg, meta)
    batch = batch_of(task, cfg)
    n = torch.tensor(4.0)
    whole, _ = task.loss(model(batch), batch, meta, cfg.train, n)
    halves = []
    for part in (slice(0, 2), slice(2, 4)):
        micro = {k: v[part] for k, v in batch.items()}
        loss, _ = task.loss(model(micro), micro, meta, cfg.train, n, aux_scale=0.5)
        halves.append(loss)
    torch.testing.assert_close(halves[0] + halves[1], whole, rtol=1e-5, atol=1e-5)


def test_gan_false_trains_l1_only(data):
    task = TranslationTask()
    cfg = config(data, "model.gan=false")
    model = task.build_model(cfg, load_meta(data))
    assert model.discriminator is None
    batch = batch_of(task, cfg)
    _, parts = task.loss(model(batch), batch, load_meta(data), cfg.train, torch.tensor(4.0))
    assert not any(k.startswith("gan") for k in parts)


def test_targets_are_in_unit_range_and_hidden_from_the_model(data):
    task = TranslationTask()
    cfg = config(data)
    batch = batch_of(task, cfg)
    y = batch["target:rgb"]
    assert y.min() >= -1 and y.max() <= 1 and "rgb" not in batch


def test_perfect_prediction_scores_perfectly(data):
    """Evaluation's known answer: a model returning the target scores L1 0, infinite PSNR."""
    task = TranslationTask()
    cfg = config(data)
    meta = load_meta(data)
    ds = task.eval_dataset(cfg, "val", task.normalisation_stats(cfg))

    class Oracle(torch.nn.Module):
        def forward(self, batch):
            # reads the target only to build the known answer of this test
            return {"image": batch["target:rgb"], "per_modality": {}, "aux_losses": {}}

    result = task.evaluate(Oracle(), ds, cfg, meta)
    assert result["l1"] == 0 and result["rmse"] == 0 and result["psnr"] == float("inf")
    assert result["ssim"] == pytest.approx(1.0)
    assert abs(result["fid"]) < 1e-3  # (KID, unbiased, is noise with 2 images)
    assert result["feature_network"] and result["comparable_to_inception"] is False
    assert result["targets"] == ["rgb"] and result["per_modality_l1"] == {}

    # and a prediction off by a constant 0.1 (in [0, 1]) scores exactly L1 0.1
    class Offset(torch.nn.Module):
        def forward(self, batch):
            return {
                "image": batch["target:rgb"].clamp(-1, 0.8) + 0.2 * (batch["target:rgb"] <= 0.8),
                "per_modality": {},
                "aux_losses": {},
            }

    shifted = task.evaluate(Offset(), ds, cfg, meta)
    assert 0.09 < shifted["l1"] <= 0.1 + 1e-6
    assert shifted["fid"] > result["fid"]


@pytest.mark.parametrize(
    ("overrides", "targets", "message"),
    [
        (["data.modalities=[shade,albedo]"], ["rgb"], r"no input modality \['albedo'\]"),
        ([], ["colour"], r"no target modality \['colour'\]"),
        (["data.modalities=[shade,rgb]"], ["rgb"], r"data.targets \['rgb'\] are also inputs"),
        ([], [], "needs data.targets"),
        (["train.batch_size=7"], ["rgb"], "exceeds the 6 samples"),
        (["data.crop_size=[16,16]"], ["rgb"], "too small for the PatchGAN"),
    ],
)
def test_bad_data_is_one_line_error(data, overrides, targets, message):
    cfg = config(data, *overrides, targets=targets)
    with pytest.raises(FusescopeError, match=message) as err:
        TranslationTask().check_data(cfg, load_meta(data), 1)
    assert "\n" not in str(err.value)


def test_target_of_another_size_is_named(tmp_path):
    import numpy as np

    root = write_translation_dataset(tmp_path / "d", n=4, size=(16, 16))
    write_png(root / "rgb" / "0000.png", np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(
        FusescopeError,
        match=r"0000.png: target 'rgb' is 8x16, input 'shade' "
        r"is 16x16",
    ):
        TranslationTask().check_data(config(root, "train.batch_size=1"), load_meta(root), 1)


def test_depth_and_normal_targets_as_mango_scores_them(data):
    """Several targets, one of them depth (metres mapped to [-1, 1] by the train range): the
    generator outputs their channels side by side; an oracle scores zero error and MAE / MSE
    are reported for normal and depth, as MANGO's Table 2."""
    task = TranslationTask()
    cfg = config(data, targets=("normal", "depth"))
    meta = load_meta(data)
    stats = task.normalisation_stats(cfg)
    model = task.build_model(cfg, meta)
    batch = batch_of(task, cfg)
    y = batch["target:depth"]
    assert y.min() >= -1 and y.max() <= 1 and y.std() > 0.05  # the range is used
    out = model(batch)
    assert out["image"].shape[1] == 4  # 3 normal channels + 1 depth channel
    loss, _ = task.loss(out, batch, meta, cfg.train, torch.tensor(4.0))
    assert torch.isfinite(loss)

    class Oracle(torch.nn.Module):
        def forward(self, batch):
            # reads the targets only to build the known answer of this test
            image = torch.cat([batch["target:normal"], batch["target:depth"]], 1)
            return {"image": image, "per_modality": {}, "aux_losses": {}}

    ds = task.eval_dataset(cfg, "val", stats)
    result = task.evaluate(Oracle(), ds, cfg, meta)
    for t in ("normal", "depth"):
        assert result["per_target"][t]["l1"] == pytest.approx(0, abs=1e-6)
        assert result["per_target"][t]["mae"] == pytest.approx(0, abs=1e-6)
    assert "normal:" in task.format_result(result) and "depth:" in task.format_result(result)
