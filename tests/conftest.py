"""Shared test setup: one thread per test process (the suite runs in parallel on 2 cores),
fixed seeds so every test is repeatable, and no downloads."""

import os
import random
import tempfile

# Tests never download weights: the Hugging Face hub is offline and its cache (and torch hub's)
# an empty folder of this process, so a developer's own cached weights cannot change what
# `pretrained=True` loads. Set before anything imports huggingface_hub, which reads these once;
# subprocesses of tests inherit them.
_EMPTY_CACHE = tempfile.TemporaryDirectory(prefix="fusescope-test-cache-")
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_HOME=_EMPTY_CACHE.name,
    HF_HUB_CACHE=os.path.join(_EMPTY_CACHE.name, "hub"),
    TORCH_HOME=os.path.join(_EMPTY_CACHE.name, "torch"),
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import constants as _hub_constants  # noqa: E402

# in case a plugin imported huggingface_hub before this file
_hub_constants.HF_HUB_OFFLINE = True
_hub_constants.HF_HUB_CACHE = os.environ["HF_HUB_CACHE"]

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds code that still uses the legacy global RNG
    torch.manual_seed(0)
    yield


def write_folder_dataset(
    root, n=12, size=(32, 40), num_classes=3, seed=0, modalities=("rgb", "depth"), splits=None
):
    """A tiny data set in the folder layout whose labels are learnable from the inputs:
    class 1 regions are red in RGB, class 2 regions are closer in depth, the rest is class 0."""
    from pathlib import Path

    from fusescope.data.meta import ClassInfo, DatasetMeta, ModalitySpec, write_split
    from fusescope.io import write_png

    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    specs = {
        "rgb": ModalitySpec("color", 3),
        "depth": ModalitySpec("depth", 1, 0.001, "mm"),
        "hha": ModalitySpec("image", 3),
    }
    meta = DatasetMeta(
        "tiny",
        [ClassInfo(f"c{i}", i, (40 * i, 255 - 60 * i, 90)) for i in range(num_classes)],
        {m: specs[m] for m in modalities},
        intrinsics={"fx": 50.0, "fy": 50.0, "cx": w / 2, "cy": h / 2},
    )
    ids = [f"{i:04d}" for i in range(n)]
    for i in ids:
        label = np.zeros((h, w), np.uint8)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[y0 : y0 + h // 3, x0 : x0 + w // 3] = 1
        y1, x1 = rng.integers(0, h // 2), rng.integers(w // 2, w - 4)
        label[y1 : y1 + h // 3, x1 : x1 + w // 4] = 2 % num_classes
        rgb = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
        rgb[label == 1] = (220, 30, 30)
        depth = np.full((h, w), 3000, np.uint16) + rng.integers(0, 50, (h, w)).astype(np.uint16)
        depth[label == 2] = 1500
        arrays = {"rgb": rgb, "depth": depth, "hha": rgb[..., ::-1].copy()}
        for m in modalities:
            write_png(root / m / f"{i}.png", arrays[m])
        write_png(root / "label" / f"{i}.png", label)
    splits = splits or {
        "train": ids[: n * 2 // 3],
        "val": ids[n * 2 // 3 :],
        "test": ids[n * 2 // 3 :],
    }
    for name, members in splits.items():
        write_split(root, name, members)
    meta.save(root)
    return root


@pytest.fixture
def tiny_data(tmp_path):
    return write_folder_dataset(tmp_path / "data")


TINY_MODEL = [
    "model.backbone=resnet18",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.log_every=2",
    "train.ckpt_every=3",
    "train.progress=false",
    "train.warmup_steps=2",
    "data.crop_size=[32,40]",
]


# a tiny MiT (SegFormer's encoder) for the methods defined on transformer blocks only
TINY_MIT = {
    "name": "mit_b0",
    "depths": [1, 1, 1, 1],
    "embed_dims": [8, 16, 32, 64],
    "num_heads": [1, 1, 2, 2],
}


def transformer_only(method: str) -> bool:
    """Whether a segmentation method is a fusion op defined on transformer blocks alone
    (TokenFusion, GeminiFusion): tests of every method build those on `TINY_MIT`."""
    from fusescope.models.registry import FUSION_OPS

    return method in FUSION_OPS and FUSION_OPS.get(method).block_families == ("transformer",)


def tiny_backbone(method: str):
    """The backbone a test of every method builds `method` on: resnet18, or TINY_MIT."""
    return TINY_MIT if transformer_only(method) else "resnet18"


def backbone_override(method: str) -> str:
    """`tiny_backbone(method)` as a command-line override."""
    b = tiny_backbone(method)
    if isinstance(b, str):
        return f"model.backbone={b}"
    return "model.backbone={" + ", ".join(f"{k}: {v}" for k, v in b.items()) + "}"


def cli_train(run, data_root, *extra, config=None) -> int:
    """`fusescope train` of a tiny model (TINY_MODEL) on `data_root` as the CLI runs it; returns
    the exit code. `config` defaults to the synthetic early_concat config."""
    from pathlib import Path

    from fusescope.cli import main

    config = config or Path(__file__).resolve().parents[1] / "configs/synthetic/early_concat.yaml"
    return main(
        [
            "train",
            str(config),
            "--out",
            str(run),
            f"data.root={data_root}",
            "data.synth=null",
            *TINY_MODEL,
            *extra,
        ]
    )
