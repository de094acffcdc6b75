"""One loss aggregator for every task (`fusescope.tasks.base.aggregate_loss`): each task's loss
is its supervised parts then the model's aux losses x `aux_scale`, summed; checked on a real
CEN model of each task (whose aux loss is its l1 on the exchangeable gammas)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import write_folder_dataset
from fusescope.config import load_config
from fusescope.data.batching import collate
from fusescope.data.meta import load_meta
from fusescope.tasks import task_of
from fusescope.tasks.base import aggregate_loss
from fusescope.tasks.segmentation.loss import total_loss
from translation_helpers import write_translation_dataset


def test_the_aggregator_adds_the_scaled_aux_losses_after_the_supervised_parts():
    supervised = {"ce": torch.tensor(1.5), "ce_rgb": torch.tensor(0.25, dtype=torch.bfloat16)}
    output = {"aux_losses": {"l1_gamma": torch.tensor(0.5), "flow_nll": torch.tensor(-2.0)}}
    total, parts = aggregate_loss(supervised, output, aux_scale=0.25)
    assert list(parts) == ["ce", "ce_rgb", "l1_gamma", "flow_nll"]  # the order they are logged
    assert total.dtype == torch.float32  # a bf16 part is summed in float32
    assert float(total) == 1.5 + 0.25 + 0.25 * 0.5 + 0.25 * -2.0
    assert float(parts["flow_nll"]) == -0.5
    assert list(supervised) == ["ce", "ce_rgb"]  # the caller's dict is left as it was
    weight = torch.tensor(2.0, requires_grad=True)
    total, parts = aggregate_loss({"ce": weight * 3}, {})  # no aux losses: the parts alone
    assert list(parts) == ["ce"] and float(total.detach()) == 6.0
    assert total.requires_grad and not parts["ce"].requires_grad  # parts are for logging


def test_segmentation_loss_is_the_reference_cross_entropy_plus_aux():
    """`total_loss` against cross-entropy written out here: main, per stream x weight, aux
    heads x their weight, aux losses x aux_scale."""
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (2, 5, 6), generator=g)
    label[0, 0] = 255
    logits = {k: torch.randn(2, 3, 5, 6, generator=g) for k in ("main", "rgb", "depth", "aux")}
    out = {
        "logits": logits["main"],
        "per_modality": {"rgb": logits["rgb"], "depth": logits["depth"]},
        "aux_logits": {"aux_ce": (logits["aux"], 0.4)},
        "aux_losses": {"l1_gamma": torch.tensor(0.3)},
    }
    total, parts = total_loss(out, label, 255, per_modality_weight=0.5, aux_scale=0.5)

    def ce(x):
        return F.cross_entropy(x, label, ignore_index=255)

    expected = {
        "ce": ce(logits["main"]),
        "ce_rgb": 0.5 * ce(logits["rgb"]),
        "ce_depth": 0.5 * ce(logits["depth"]),
        "aux_ce": 0.4 * ce(logits["aux"]),
        "l1_gamma": torch.tensor(0.15),
    }
    assert list(parts) == list(expected)
    for name, value in expected.items():
        torch.testing.assert_close(parts[name], value)
    torch.testing.assert_close(total, sum(expected.values()))


def _folder_cfg(root, task: str):
    return load_config(
        None,
        [
            f"task={task}",
            f"data.root={root}",
            "data.synth=null",
            "data.modalities=[rgb,depth]",
            "model.name=cen",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "model.l1_weight=0.001",
            "train.batch_size=2",
            "train.per_modality_weight=0.5",
        ],
    )


def _translation_cfg(root):
    return load_config(
        None,
        [
            "task=translation",
            f"data.root={root}",
            "data.modalities=[shade,texture]",
            "data.targets=[rgb]",
            "model.name=cen",
            "model.depth=3",
            "model.width=4",
            "model.dropout=0",
            "model.gan=true",
            "model.disc_width=4",
            "model.l1_weight=0.001",
            "train.batch_size=2",
            "train.per_modality_weight=0.5",
        ],
    )


SUPERVISED = {
    "segmentation": ["ce", "ce_rgb", "ce_depth"],
    "classification": ["bce", "bce_rgb", "bce_depth"],
    "translation": ["l1", "l1_shade", "l1_texture", "gan_g", "gan_d"],
}


@pytest.mark.parametrize("task_name", ["segmentation", "classification", "translation"])
def test_every_task_loss_is_the_sum_of_its_parts(task_name, tmp_path):
    torch.manual_seed(0)
    if task_name == "translation":
        root = write_translation_dataset(tmp_path / "data", n=4, size=(32, 32))
        cfg = _translation_cfg(root)
    else:
        root = write_folder_dataset(tmp_path / "data", n=6, size=(32, 40))
        cfg = _folder_cfg(root, task_name)
    task = task_of(cfg)
    meta = load_meta(root)
    stats = task.normalisation_stats(cfg)
    dataset = task.train_dataset(cfg, stats, seed=0)
    batch = collate([dataset[(0, i)] for i in range(2)])
    batch = {k: v for k, v in batch.items() if k != "id"}
    model = task.build_model(cfg, meta, pretrained=False, stats=stats)
    model.train()
    output = model(batch)
    aux = output["aux_losses"]
    assert list(aux) == ["l1_gamma"] and float(aux["l1_gamma"]) > 0  # CEN's l1 reaches the loss
    denominator = task.loss_denominator(batch, meta, cfg.train)
    total, parts = task.loss(output, batch, meta, cfg.train, denominator, aux_scale=0.5)
    assert list(parts) == [*SUPERVISED[task_name], "l1_gamma"]
    assert torch.equal(parts["l1_gamma"], 0.5 * aux["l1_gamma"].detach())
    assert torch.equal(total.detach(), torch.stack(list(parts.values())).sum())
    assert all(not v.requires_grad for v in parts.values()) and total.requires_grad
