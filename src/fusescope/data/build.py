"""From the `data` config section to data sets: generate the known-answer set if asked and
missing, compute the normaliser, and build train / evaluation views."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fusescope.data.folder import FolderDataset
from fusescope.data.normalize import compute_stats
from fusescope.data.transforms import Normalize, TrainTransform
from fusescope.errors import FusescopeError


def ensure_data(data_cfg: DictConfig, progress: bool = True) -> Path:
    """The data root, generating the known-answer benchmark there first if `data.synth` is set
    and the folder does not exist yet."""
    root = Path(data_cfg.root)
    if not (root / "meta.json").is_file():
        if data_cfg.synth is None:
            raise FusescopeError(f"{root}: no data set here (no meta.json); prepare one with "
                                 f"'fusescope data synth' or 'fusescope data prepare'")
        if root.exists() and any(root.iterdir()):
            raise FusescopeError(f"{root}: folder exists without meta.json; not overwriting it")
        from fusescope.data.synthetic import generate

        s = data_cfg.synth
        generate(root, num=s.num, seed=s.seed, size=tuple(s.size), progress=progress,
                 workers=2)
    return root


def train_dataset(data_cfg: DictConfig, stats: dict, seed: int) -> FolderDataset:
    ds = FolderDataset(data_cfg.root, data_cfg.train_split, list(data_cfg.modalities), seed=seed)
    specs = {m: ds.meta.modalities[m] for m in ds.modalities}
    ds.transform = TrainTransform(
        specs, crop_size=tuple(data_cfg.crop_size) if data_cfg.crop_size else None,
        scale_range=tuple(data_cfg.scale_range), hflip=data_cfg.hflip,
        color_jitter=data_cfg.color_jitter, ignore_index=ds.meta.ignore_index)
    ds.normalize = Normalize(specs, stats)
    return ds


def eval_dataset(data_cfg: DictConfig, split: str, stats: dict, corruption=None,
                 seed: int = 0) -> FolderDataset:
    ds = FolderDataset(data_cfg.root, split, list(data_cfg.modalities), corruption=corruption,
                       seed=seed)
    ds.normalize = Normalize({m: ds.meta.modalities[m] for m in ds.modalities}, stats)
    return ds


def normalisation_stats(data_cfg: DictConfig, progress: bool = False) -> dict:
    ds = FolderDataset(data_cfg.root, data_cfg.train_split, list(data_cfg.modalities))
    return compute_stats(ds, progress=progress)
