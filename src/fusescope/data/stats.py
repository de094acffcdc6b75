"""Data set statistics: the normaliser's per-modality mean / std (`compute_stats`), class pixel
frequencies, median-frequency weights, and the `inspect` sheet.

Everything streams over the files one at a time (NYUDv2 is 1449 frames, Cityscapes 2975 at 2
megapixels), accumulating counts and sums in float64 so the result does not depend on order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fusescope.data.folder import (
    FolderDataset,
    check_folder,
    check_modality_array,
    image_range,
)
from fusescope.data.meta import LABEL_DIR, DatasetMeta, load_meta, read_split
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, read_image


@dataclass
class ClassFrequencies:
    """Pixel counts per class over a split.

    Attributes:
        pixels: labelled pixels of each class, (K,).
        images: images in which each class appears, (K,).
        image_pixels: pixels of the images in which each class appears, (K,) (the denominator
            of the median-frequency rule of Eigen & Fergus).
        ignored: pixels with the ignore label.
    """

    pixels: np.ndarray
    images: np.ndarray
    image_pixels: np.ndarray
    ignored: int

    @property
    def frequency(self) -> np.ndarray:
        """Fraction of labelled pixels per class."""
        total = self.pixels.sum()
        return self.pixels / total if total else np.zeros_like(self.pixels, dtype=np.float64)


def class_frequencies(
    root: str | os.PathLike, split: str = "train", meta: DatasetMeta | None = None
) -> ClassFrequencies:
    """Count label pixels per class over `split`.

    Raises:
        FusescopeError: a missing label file or a label value that is neither a class nor ignore.
    """
    root = Path(root)
    meta = meta or load_meta(root)
    K = meta.num_classes
    pixels = np.zeros(K, dtype=np.int64)
    images = np.zeros(K, dtype=np.int64)
    image_pixels = np.zeros(K, dtype=np.int64)
    ignored = 0
    ids = read_split(root, split)
    files = check_folder(root, meta, [], ids)[LABEL_DIR]
    for sid in ids:
        path = files[sid]
        lab = read_image(path)
        if lab.ndim != 2 or lab.dtype != np.uint8:
            raise FusescopeError(f"{path}: a label must be a single-channel 8-bit image")
        counts = np.bincount(lab.ravel(), minlength=256)
        bad = np.flatnonzero(counts[K:])
        bad = [int(b) + K for b in bad if b + K != meta.ignore_index]
        if bad:
            raise FusescopeError(
                f"{path}: label values {bad[:5]} are neither a class "
                f"(0..{K - 1}) nor ignore ({meta.ignore_index})"
            )
        c = counts[:K]
        pixels += c
        images += c > 0
        image_pixels += np.where(c > 0, lab.size, 0)
        ignored += int(counts[meta.ignore_index]) if meta.ignore_index < 256 else 0
    return ClassFrequencies(pixels, images, image_pixels, ignored)


def median_frequency_weights(freq: ClassFrequencies) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015): w_c = median(f) / f_c.

    f_c = pixels of class c / pixels of the images where c appears. Classes absent from the
    split get weight 0 (they cannot be learned from it, and a finite weight keeps the loss
    free of NaN / inf); the median is taken over the present classes only.
    """
    present = freq.pixels > 0
    w = np.zeros(len(freq.pixels), dtype=np.float64)
    if not present.any():
        return w
    f = freq.pixels[present] / freq.image_pixels[present]
    w[present] = np.median(f) / f
    return w


class Moments:
    """Streaming per-channel mean and (population) standard deviation over masked values.

    Sums are shifted by the first values' mean so the sum of squares does not cancel when the
    mean is large against the spread (depth in millimetres, say).
    """

    def __init__(self, channels: int):
        self.count = np.zeros(channels)
        self.sum = np.zeros(channels)
        self.sum_sq = np.zeros(channels)
        self.shift: np.ndarray | None = None

    def add(self, x: np.ndarray, valid: np.ndarray) -> None:
        """Add the `valid` entries of `x`, both (C, N)."""
        n = valid.sum(1)
        if self.shift is None:
            self.shift = np.where(n > 0, np.where(valid, x, 0).sum(1) / np.maximum(n, 1), 0.0)
        d = np.where(valid, x - self.shift[:, None], 0.0)
        self.count += n
        self.sum += d.sum(1)
        self.sum_sq += (d * d).sum(1)

    def mean(self) -> np.ndarray:
        shift = self.shift if self.shift is not None else 0.0
        return shift + self.sum / np.maximum(self.count, 1)

    def std(self) -> np.ndarray:
        n = np.maximum(self.count, 1)
        return np.sqrt(np.maximum(self.sum_sq / n - (self.sum / n) ** 2, 0.0))


@dataclass
class ModalityStats:
    """Mean and standard deviation per channel over valid pixels (depth: in metres, holes out)."""

    mean: list[float]
    std: list[float]
    valid_fraction: float


def modality_stats(
    root: str | os.PathLike, modality: str, split: str = "train", meta: DatasetMeta | None = None
) -> ModalityStats:
    """Streaming per-channel mean / std of one modality over a split.

    Depth is converted to metres with the modality's scale and its zeros (holes) are left out;
    8- and 16-bit images are scaled to [0, 1].
    """
    root = Path(root)
    meta = meta or load_meta(root)
    if modality not in meta.modalities:
        raise FusescopeError(
            f"{root}: no modality {modality!r} (have: {', '.join(meta.modalities)})"
        )
    spec = meta.modalities[modality]
    moments = Moments(spec.channels)
    total = 0
    ids = read_split(root, split)
    files = check_folder(root, meta, [modality], ids, with_labels=False)[modality]
    for sid in ids:
        path = files[sid]
        a = read_image(path)
        check_modality_array(a, path, modality, spec)  # what training checks, e.g. 16-bit depth
        white = image_range(a)
        a = a.astype(np.float64)
        a = a.reshape(a.shape[0], a.shape[1], -1)  # (H, W, C)
        total += a.shape[0] * a.shape[1]
        if spec.kind == "depth":
            valid = a[..., 0] > 0
            a = a * spec.scale
        else:
            valid = np.ones(a.shape[:2], dtype=bool)
            a = a / white
        v = a[valid].T  # (C, P)
        moments.add(v, np.ones_like(v, dtype=bool))
    n = int(moments.count.min())
    if not n:
        raise FusescopeError(f"{root / modality}: no valid pixels in split {split!r}")
    return ModalityStats(moments.mean().tolist(), moments.std().tolist(), n / total)


def compute_stats(dataset: FolderDataset, progress: bool = False) -> dict[str, dict]:
    """The normaliser's statistics: {modality: {"mean": [C floats], "std": [C floats]}} over
    `dataset` in natural units (images in [0, 1], depth in metres), depth holes left out.

    Computed once per run (streaming, one image in memory at a time) and saved in the run
    folder, so evaluation and prediction normalise exactly as training did.
    """
    moments: dict[str, Moments] = {}
    for i in tqdm(range(len(dataset)), desc="statistics", disable=not progress, leave=False):
        raw = dataset.load_raw(i)
        for name in dataset.modalities:
            x = raw[name].astype(np.float64)
            x = x.reshape(x.shape[0], -1)  # (C, H*W)
            depth = dataset.meta.modalities[name].kind == "depth"
            valid = x > 0 if depth else np.ones_like(x, dtype=bool)
            moments.setdefault(name, Moments(x.shape[0])).add(x, valid)
    return {
        name: {"mean": m.mean().tolist(), "std": np.maximum(m.std(), 1e-6).tolist()}
        for name, m in moments.items()
    }


def render_samples(
    root: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "train",
    num: int = 4,
    meta: DatasetMeta | None = None,
) -> Path:
    """Save a grid of `num` samples (one row each: every modality, then the coloured label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root, out = Path(root), Path(out)
    meta = meta or load_meta(root)
    ids = read_split(root, split)
    ids = [ids[i] for i in np.linspace(0, len(ids) - 1, min(num, len(ids))).astype(int)]
    cols = list(meta.modalities) + [LABEL_DIR]
    files = check_folder(root, meta, list(meta.modalities), ids)
    colors = np.zeros((256, 3), dtype=np.uint8)
    for c in meta.classes:
        colors[c.id] = c.color
    fig, axes = plt.subplots(
        len(ids), len(cols), figsize=(3 * len(cols), 2.4 * len(ids)), squeeze=False
    )
    for r, sid in enumerate(ids):
        for c, name in enumerate(cols):
            a = read_image(files[name][sid])
            ax = axes[r, c]
            if name == LABEL_DIR:
                ax.imshow(colors[a])
            elif meta.modalities[name].kind == "depth":
                ax.imshow(np.where(a > 0, a * meta.modalities[name].scale, np.nan), cmap="viridis")
            else:
                ax.imshow(a, cmap="gray" if a.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
        axes[r, 0].set_ylabel(sid)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out


def inspect(
    root: str | os.PathLike,
    split: str = "train",
    samples: str | os.PathLike | None = None,
    num_samples: int = 4,
    print_fn=print,
) -> dict:
    """Print a data folder's statistics and render a few samples.

    Args:
        root: data folder.
        split: split to measure (the normalisation statistics come from train).
        samples: PNG to render samples to; default `root/inspect_samples_<split>.png` (next to
            meta.json, outside every modality folder and split list, so the data set and its
            fingerprint do not change).
        num_samples: rows in the sample grid.
        print_fn: where lines go.

    Returns:
        The numbers printed, as a dict.
    """
    root = Path(root)
    meta = load_meta(root)
    if meta.task == "classification":
        from fusescope.data.classification import inspect as inspect_classification

        return inspect_classification(root, split, samples, num_samples, print_fn)
    splits = sorted(p.stem for p in (root / "splits").glob("*.txt"))
    sizes = {s: len(read_split(root, s)) for s in splits}
    # the same file checks as training: every modality and the label present and paired
    check_folder(root, meta, list(meta.modalities), read_split(root, split))
    freq = class_frequencies(root, split, meta)
    weights = median_frequency_weights(freq)
    print_fn(
        f"{meta.name}: {meta.num_classes} classes, modalities "
        f"{', '.join(f'{k} ({v.kind})' for k, v in meta.modalities.items())}"
    )
    print_fn("splits: " + ", ".join(f"{s} {n}" for s, n in sizes.items()))
    total = freq.pixels.sum() + freq.ignored
    print_fn(f"{split}: {total} label pixels, {freq.ignored / max(total, 1):.2%} ignored")
    print_fn(f"{'id':>3} {'class':<20} {'freq':>8} {'images':>7} {'mfb weight':>10}")
    for c in meta.classes:
        print_fn(
            f"{c.id:>3} {c.name:<20} {freq.frequency[c.id]:>8.4f} "
            f"{freq.images[c.id]:>7d} {weights[c.id]:>10.4f}"
        )
    mod_stats = {}
    for name, spec in meta.modalities.items():
        st = modality_stats(root, name, split, meta)
        mod_stats[name] = st
        unit = " m" if spec.kind == "depth" else ""
        extra = f", valid {st.valid_fraction:.2%}" if spec.kind == "depth" else ""
        print_fn(
            f"{name}: mean {[round(m, 4) for m in st.mean]}{unit}, "
            f"std {[round(s, 4) for s in st.std]}{unit}{extra}"
        )
    samples = Path(samples) if samples is not None else root / f"inspect_samples_{split}.png"
    try:
        render_samples(root, samples, split, num_samples, meta)
    except PermissionError as err:
        raise FusescopeError(
            f"{samples}: cannot write the sample sheet ({err.strerror}); give --samples PATH"
        ) from None
    print_fn(f"samples: {samples}")
    return {
        "splits": sizes,
        "frequency": freq.frequency.tolist(),
        "weights": weights.tolist(),
        "modalities": {
            k: {"mean": v.mean, "std": v.std, "valid_fraction": v.valid_fraction}
            for k, v in mod_stats.items()
        },
        "samples": str(samples),
    }
