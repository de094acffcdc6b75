"""Classification data over the folder layout: a set of classes per sample, from `labels.json`
or from the label maps of a segmentation data set (which classes a frame shows).

Two sources of targets, chosen by the data folder's `meta.json`:

- `task: classification`: `ROOT/labels.json` maps every sample id to a list of class names
  (`{"0000008": ["Drama", "Comedy"]}`); `multi_label: false` asks for exactly one name per sample.
  Image posters and plot texts (MM-IMDB, `fusescope data synth-posters`) are such folders.
- a segmentation folder (no `task`, or `task: segmentation`): the targets are multi-label, "which
  classes are present in this frame": class c is present if at least `min_pixels` pixels of the
  frame's label map are c (the ignore index never counts). The known-answer RGB-D set serves frame
  classification as it is, and each class keeps its cue group.

A sample is `{<image modality>: float32 (C,H,W), <text modality>: int64 (L,) token ids,
<text modality>_mask: bool (L,) (all true; `collate` pads), "target": float32 (K,) multi-hot, or
int64 () class id when single-label, "id": str}`. Text is tokenised here, in the data set (its
loader workers), by each text modality's tokenizer, cut to `max_tokens`: the word vocabulary in
the run's statistics (`fusescope.data.text`) for encoders that learn their embeddings, or a
pretrained encoder's own tokenizer (`models/classification/pretrained_text.py`), whose ids the
encoder's embedding table was trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset
from tqdm import tqdm

from fusescope.data.folder import check_folder, check_label_array, load_modality
from fusescope.data.kinds import MASK_SUFFIX, kind_of
from fusescope.data.meta import LABEL_DIR, LABELS_FILE, DatasetMeta, load_meta, read_split
from fusescope.data.stats import Moments, add_moments, moments_to_stats
from fusescope.data.text import TextTokenizer, Vocabulary, build_vocabulary, read_text, tokenize
from fusescope.data.transforms import Normalize, TrainTransform
from fusescope.errors import FusescopeError
from fusescope.io import read_image, read_json

DEFAULT_MIN_PIXELS = 20


def is_multi_label(meta: DatasetMeta) -> bool:
    """Whether samples of this folder have any number of classes (frame classification: yes)."""
    return meta.multi_label if meta.task == "classification" else True


def read_labels(root: str | os.PathLike, meta: DatasetMeta, ids: list[str]) -> np.ndarray:
    """The class ids of `ids` from `ROOT/labels.json`, as a (N, K) bool matrix.

    Raises:
        FusescopeError: naming the file and the id: the file is missing or not an object of
            lists of names, an id has no entry, a name is not a class, or a single-label data set
            gives other than one class.
    """
    path = Path(root) / LABELS_FILE
    labels = read_json(path)
    if not isinstance(labels, dict):
        raise FusescopeError(f"{path}: expected an object {{sample id: [class names]}}")
    index = {name: c for c, name in enumerate(meta.class_names)}
    out = np.zeros((len(ids), meta.num_classes), dtype=bool)
    for row, sample_id in enumerate(ids):
        if sample_id not in labels:
            raise FusescopeError(f"{path}: no labels for sample {sample_id}")
        names = labels[sample_id]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FusescopeError(
                f"{path}: sample {sample_id}: expected a list of class names, got {names!r}"
            )
        for name in names:
            if name not in index:
                raise FusescopeError(
                    f"{path}: sample {sample_id}: class {name!r} is not in meta.json's classes"
                )
            out[row, index[name]] = True
        if not meta.multi_label and out[row].sum() != 1:
            raise FusescopeError(
                f"{path}: sample {sample_id}: {len(names)} classes; a "
                f"single-label data set (multi_label: false) needs exactly one"
            )
    return out


def frame_classes(label: np.ndarray, num_classes: int, min_pixels: int) -> np.ndarray:
    """(K,) bool: the classes covering at least `min_pixels` pixels of a label map (ids >= K,
    e.g. the ignore index, never count)."""
    return np.bincount(label.ravel(), minlength=num_classes)[:num_classes] >= min_pixels


class ClassificationFolderDataset(Dataset):
    """Samples of one split for classification (module docstring for the keys).

    Indexing with an int gives the evaluation view (no augmentation); indexing with
    (epoch, index) seeds augmentation from (seed, epoch, index), as `FolderDataset` does.

    Args:
        root: data folder.
        split: split name (a file `splits/<split>.txt`).
        modalities: modality names to load, in model order (images and texts).
        tokenizers: the tokenizer of each text modality (the run's vocabulary, or a
            pretrained encoder's tokenizer); needed to index samples with text, not to read
            them raw (`load_raw`).
        max_tokens: token ids kept per text.
        min_pixels: frame classification: pixels a class needs to be present.
        transform: joint augmentation `(sample, rng) -> sample` (images only) before
            normalisation.
        normalize: `(sample) -> sample` with train statistics; None keeps natural units.
        seed: run seed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        modalities: list[str],
        tokenizers: dict[str, TextTokenizer] | None = None,
        max_tokens: int = 256,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        transform: Callable | None = None,
        normalize: Callable | None = None,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.meta = load_meta(self.root)
        self.split = split
        self.modalities = list(modalities)
        self.ids = read_split(self.root, split)
        self.from_label_maps = self.meta.task != "classification"
        self.multi_label = is_multi_label(self.meta)
        self.files = check_folder(
            self.root, self.meta, self.modalities, self.ids, with_labels=self.from_label_maps
        )
        self.labels = None if self.from_label_maps else read_labels(self.root, self.meta, self.ids)
        self.texts = [m for m in self.modalities if kind_of(self.meta.modalities[m]).tokens]
        self.images = [m for m in self.modalities if m not in self.texts]
        self.tokenizers = dict(tokenizers or {})
        self.max_tokens = max_tokens
        self.min_pixels = min_pixels
        self.transform = transform
        self.normalize = normalize
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ids)

    def load_raw(self, index: int) -> dict:
        """The sample in natural units: images float32 in [0, 1] (depth in metres, ...), texts as
        strings, "target" as a (K,) bool array (frame classification: also the "label" map it
        comes from); every file checked."""
        sample_id = self.ids[index]
        raw: dict = {"id": sample_id}
        size = None
        if self.from_label_maps:
            path = self.files[LABEL_DIR][sample_id]
            label = read_image(path)
            check_label_array(label, path, self.meta)
            raw["target"] = frame_classes(label, self.meta.num_classes, self.min_pixels)
            raw["label"] = label
            size, first = label.shape, path
        else:
            raw["target"] = self.labels[index].copy()
        for name in self.images:
            path = self.files[name][sample_id]
            x = load_modality(path, name, self.meta.modalities[name])
            if size is None:
                size, first = x.shape[-2:], path
            elif x.shape[-2:] != size:
                raise FusescopeError(
                    f"{path}: size {x.shape[-2]}x{x.shape[-1]} differs from "
                    f"{first}'s {size[0]}x{size[1]}"
                )
            raw[name] = x
        for name in self.texts:
            raw[name] = read_text(self.files[name][sample_id])
        return raw

    def encode(self, name: str, text: str) -> torch.Tensor:
        if name not in self.tokenizers:
            raise FusescopeError(
                f"text modality {name!r}: no tokenizer (the run's statistics hold its vocabulary)"
            )
        return torch.from_numpy(self.tokenizers[name].encode(text, self.max_tokens))

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        raw = self.load_raw(index)
        target = raw.pop("target")
        sample: dict = {"id": raw.pop("id")}
        for name in self.images:
            sample[name] = torch.from_numpy(raw[name])
        for name in self.texts:
            ids = self.encode(name, raw[name])
            sample[name] = ids
            sample[f"{name}{MASK_SUFFIX}"] = torch.ones(ids.shape, dtype=torch.bool)
        if self.multi_label:
            sample["target"] = torch.from_numpy(target.astype(np.float32))
        else:
            sample["target"] = torch.tensor(int(target.argmax()), dtype=torch.int64)
        if self.transform is not None and epoch is not None:
            if self.from_label_maps:  # the target of the view the model sees, not the frame's
                sample["label"] = torch.from_numpy(raw["label"].astype(np.int64))
            sample = self.transform(sample, np.random.default_rng([self.seed, 0, epoch, index]))
            if self.from_label_maps:
                present = frame_classes(
                    sample.pop("label").numpy(), self.meta.num_classes, self.min_pixels
                )
                sample["target"] = torch.from_numpy(present.astype(np.float32))
        if self.normalize is not None:
            sample = self.normalize(sample)
        return sample

    def targets(self) -> np.ndarray:
        """(N, K) bool: every sample's classes (reads label maps for frame classification)."""
        if self.labels is not None:
            return self.labels.copy()
        out = np.zeros((len(self), self.meta.num_classes), dtype=bool)
        for i, sample_id in enumerate(self.ids):
            label = read_image(self.files[LABEL_DIR][sample_id])
            check_label_array(label, self.files[LABEL_DIR][sample_id], self.meta)
            out[i] = frame_classes(label, self.meta.num_classes, self.min_pixels)
        return out


def compute_stats(
    dataset: ClassificationFolderDataset,
    vocab_size: int = 20000,
    vocab_min_count: int = 2,
    progress: bool = False,
) -> dict[str, dict]:
    """The normaliser's statistics of a classification data set: images' per-channel mean / std
    (as `fusescope.data.stats.compute_stats`), texts' vocabulary (`{"vocab": [tokens]}`), both
    over `dataset` (the training split)."""
    moments: dict[str, Moments] = {}
    texts: dict[str, list[str]] = {name: [] for name in dataset.texts}
    for i in tqdm(range(len(dataset)), desc="statistics", disable=not progress, leave=False):
        raw = dataset.load_raw(i)
        for name in dataset.images:
            add_moments(moments, name, raw[name], dataset.meta.modalities[name])
        for name in dataset.texts:
            texts[name].append(raw[name])
    stats = moments_to_stats(moments)
    for name, items in texts.items():
        stats[name] = build_vocabulary(items, vocab_min_count, vocab_size).to_stats()
    return {name: stats[name] for name in dataset.modalities}


def vocabularies(stats: dict, modalities: list[str], meta: DatasetMeta) -> dict[str, Vocabulary]:
    """The vocabulary of every text modality among `modalities`, from a run's statistics."""
    return {
        m: Vocabulary.from_stats(stats.get(m), f"statistics of {m!r}")
        for m in modalities
        if kind_of(meta.modalities[m]).tokens
    }


# From the `data` config section to data sets (as `fusescope.data.build` does for segmentation)


def normalisation_stats(data_cfg: DictConfig, progress: bool = False) -> dict:
    ds = ClassificationFolderDataset(
        data_cfg.root,
        data_cfg.train_split,
        list(data_cfg.modalities),
        min_pixels=data_cfg.min_pixels,
    )
    return compute_stats(
        ds,
        vocab_size=data_cfg.vocab_size,
        vocab_min_count=data_cfg.vocab_min_count,
        progress=progress,
    )


def _dataset(
    data_cfg: DictConfig,
    split: str,
    stats: dict,
    seed: int,
    text_tokenizer: TextTokenizer | None = None,
) -> ClassificationFolderDataset:
    ds = ClassificationFolderDataset(
        data_cfg.root,
        split,
        list(data_cfg.modalities),
        max_tokens=data_cfg.max_tokens,
        min_pixels=data_cfg.min_pixels,
        seed=seed,
    )
    # a pretrained text encoder brings its own tokenizer; otherwise the run's vocabulary
    if text_tokenizer is not None:
        ds.tokenizers = {m: text_tokenizer for m in ds.texts}
    else:
        ds.tokenizers = dict(vocabularies(stats, ds.modalities, ds.meta))
    ds.normalize = Normalize({m: ds.meta.modalities[m] for m in ds.modalities}, stats)
    return ds


def train_dataset(
    data_cfg: DictConfig,
    stats: dict,
    seed: int,
    text_tokenizer: TextTokenizer | None = None,
) -> ClassificationFolderDataset:
    """The training split with augmentation (scale, crop, flip, colour jitter on the images).

    Frame classification derives each training view's target from its transformed label map
    (padding is the ignore index; `min_pixels` counts pixels of the view), so scale and crop
    keep targets exact. `labels.json` targets describe the whole image, which a crop can cut a
    poster motif out of: poster configs keep `data.scale_range: [1, 1]` and no `crop_size`
    (flips and colour jitter are safe)."""
    ds = _dataset(data_cfg, data_cfg.train_split, stats, seed, text_tokenizer)
    ds.transform = TrainTransform(
        {m: ds.meta.modalities[m] for m in ds.modalities},
        crop_size=tuple(data_cfg.crop_size) if data_cfg.crop_size else None,
        scale_range=tuple(data_cfg.scale_range),
        hflip=data_cfg.hflip,
        color_jitter=data_cfg.color_jitter,
        ignore_index=ds.meta.ignore_index,
    )
    return ds


def eval_dataset(
    data_cfg: DictConfig,
    split: str,
    stats: dict,
    text_tokenizer: TextTokenizer | None = None,
) -> ClassificationFolderDataset:
    """A split's evaluation view; `text_tokenizer`: a pretrained text encoder's tokenizer
    for every text modality (None: the run's vocabularies)."""
    return _dataset(data_cfg, split, stats, 0, text_tokenizer)


def inspect(
    root: str | os.PathLike,
    split: str = "train",
    samples: str | os.PathLike | None = None,
    num_samples: int = 4,
    print_fn=print,
) -> dict:
    """`fusescope data inspect` of a classification folder: samples per class, classes per
    sample, image statistics, text lengths and vocabulary size, and a sheet of a few samples.

    Returns:
        The numbers printed, as a dict.
    """
    from fusescope.data.stats import modality_stats

    root = Path(root)
    ds = ClassificationFolderDataset(root, split, list(load_meta(root).modalities))
    meta = ds.meta
    splits = sorted(p.stem for p in (root / "splits").glob("*.txt"))
    sizes = {s: len(read_split(root, s)) for s in splits}
    targets = ds.targets()
    print_fn(
        f"{meta.name}: {meta.num_classes} classes "
        f"({'multi-label' if ds.multi_label else 'single-label'}), modalities "
        f"{', '.join(f'{k} ({v.kind})' for k, v in meta.modalities.items())}"
    )
    print_fn("splits: " + ", ".join(f"{s} {n}" for s, n in sizes.items()))
    print_fn(f"{split}: {targets.sum(1).mean():.2f} classes per sample")
    print_fn(f"{'id':>3} {'class':<20} {'samples':>7} {'share':>7} cue")
    for c in meta.classes:
        n = int(targets[:, c.id].sum())
        print_fn(f"{c.id:>3} {c.name:<20} {n:>7d} {n / len(ds):>7.2%} {c.cue or ''}")
    result: dict = {
        "splits": sizes,
        "samples_per_class": targets.sum(0).tolist(),
        "modalities": {},
    }
    for name in ds.images:
        st = modality_stats(root, name, split, meta)
        result["modalities"][name] = {"mean": st.mean, "std": st.std}
        print_fn(
            f"{name}: mean {[round(m, 4) for m in st.mean]}, std {[round(s, 4) for s in st.std]}"
        )
    for name in ds.texts:
        texts = [read_text(ds.files[name][i]) for i in ds.ids]
        lengths = np.array([len(tokenize(t)) for t in texts])
        vocab = build_vocabulary(texts, min_count=2)
        result["modalities"][name] = {
            "tokens_mean": float(lengths.mean()),
            "tokens_max": int(lengths.max()),
            "vocabulary_min_count_2": len(vocab),
        }
        print_fn(
            f"{name}: {lengths.mean():.1f} tokens per sample (max {lengths.max()}), "
            f"{len(vocab)} vocabulary entries seen twice or more"
        )
    samples = Path(samples) if samples is not None else root / f"inspect_samples_{split}.png"
    _render_samples(ds, samples, num_samples)
    print_fn(f"samples: {samples}")
    result["samples"] = str(samples)
    return result


def _render_samples(ds: ClassificationFolderDataset, out: Path, num: int) -> None:
    """A grid: one row per sample, its images, its classes and the start of its texts."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fusescope.io import atomic_path

    rows = np.linspace(0, len(ds) - 1, min(num, len(ds))).astype(int)
    cols = max(len(ds.images), 1) + bool(ds.texts)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 2.6 * len(rows)), squeeze=False)
    for r, index in enumerate(rows):
        raw = ds.load_raw(int(index))
        names = [ds.meta.class_names[c] for c in np.flatnonzero(raw["target"])]
        for c, name in enumerate(ds.images):
            x = raw[name].transpose(1, 2, 0)
            axes[r, c].imshow(x[..., 0] if x.shape[-1] == 1 else np.clip(x, 0, 1))
        if ds.texts:
            text = " | ".join(raw[m][:160] for m in ds.texts)
            axes[r, -1].text(0, 1, textwrap.fill(text, 40), va="top", fontsize=6, wrap=True)
        axes[r, 0].set_ylabel(f"{raw['id']}\n{', '.join(names)}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
