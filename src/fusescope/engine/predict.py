"""Prediction on the user's own frames: `fusescope predict RUN --rgb A --depth B --out MASK`.

Each input file is decoded exactly as the training data was (units from the run's data meta,
normalisation from the run's train statistics). The mask is a palette PNG (pixel = class id,
shown in the class colours) and an overlay PNG is written beside it. Folders of files are matched
by file stem across modalities.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fusescope.data.folder import EXTENSIONS, load_modality
from fusescope.data.kinds import kind_of
from fusescope.data.transforms import Normalize
from fusescope.engine.checkpoint import Run
from fusescope.engine.evaluate import predict_probs
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, write_label_png


def overlay_image(
    run: Run, raw: dict[str, np.ndarray], label: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Class colours blended over the colour modality (or the first modality in grey)."""
    colors = np.asarray([c.color for c in run.meta.classes] + [(0, 0, 0)] * 256, dtype=np.float32)
    colour_mods = [m for m in run.model.modalities if kind_of(run.meta.modalities[m]).colour]
    if colour_mods:
        base = raw[colour_mods[0]].transpose(1, 2, 0) * 255
    else:
        x = raw[run.model.modalities[0]][0]
        base = np.repeat(((x - x.min()) / max(float(np.ptp(x)), 1e-6) * 255)[..., None], 3, -1)
    mixed = (1 - alpha) * base + alpha * colors[label]
    return mixed.clip(0, 255).astype(np.uint8)


def load_frame(run: Run, paths: dict[str, Path]) -> tuple[dict, dict[str, np.ndarray]]:
    """One frame (one file per modality of the run): the normalised sample and the raw arrays."""
    raw = {}
    for name in run.model.modalities:
        raw[name] = load_modality(paths[name], name, run.meta.modalities[name])
    sizes = {name: x.shape[-2:] for name, x in raw.items()}
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{paths[n]} {s[0]}x{s[1]}" for n, s in sizes.items())
        raise FusescopeError(f"modalities differ in size: {detail}")
    normalize = Normalize({m: run.meta.modalities[m] for m in run.model.modalities}, run.stats)
    return normalize({k: torch.from_numpy(v) for k, v in raw.items()}), raw


def predict_samples(
    run: Run, samples: list[dict], tta: str = "none", device: str = "cpu"
) -> list[np.ndarray]:
    """Class ids (H, W) for normalised samples of one size, run as one batch."""
    batch = {m: torch.stack([s[m] for s in samples]).to(device) for m in run.model.modalities}
    kinds = {m: run.meta.modalities[m].kind for m in run.model.modalities}
    specs = {m: run.meta.modalities[m] for m in run.model.modalities}
    mirror = Normalize(specs, run.stats).to(device).mirror  # flip TTA, in normalised units
    probs = predict_probs(
        run.model,
        batch,
        kinds,
        run.meta.num_classes,
        tta,
        run.cfg.eval.scales,
        run.cfg.eval.window,
        run.cfg.eval.stride,
        mirror=mirror,
    )
    return list(probs.argmax(1).cpu().numpy().astype(np.uint8))


def predict_frame(
    run: Run, paths: dict[str, Path], tta: str = "none", device: str = "cpu"
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class ids (H, W) for one frame given one file per modality of the run."""
    sample, raw = load_frame(run, paths)
    return predict_samples(run, [sample], tta, device)[0], raw


def write_prediction(run: Run, label: np.ndarray, raw: dict, out: Path) -> Path:
    write_label_png(out, label, [c.color for c in run.meta.classes])
    overlay = overlay_path(out)
    from PIL import Image

    with atomic_path(overlay, suffix=".png") as tmp:
        Image.fromarray(overlay_image(run, raw, label)).save(tmp, format="PNG")
    return overlay


def overlay_path(mask: Path) -> Path:
    return mask.with_name(mask.stem + "_overlay.png")


def check_output(inputs: dict[str, Path], out: Path, folders: bool, overwrite: bool) -> None:
    """Refuse an output that would overwrite an input: a mask or overlay file that is an input
    file, or an output folder that is, or is inside, an input folder (paths resolved, so
    `a/../a/rgb.png` and symbolic links count), unless `overwrite`. Also refuse an output of
    the wrong type (a file where a folder is needed, and the reverse).

    Raises:
        FusescopeError: naming the output and the input it would overwrite.
    """
    if folders:
        if out.exists() and not out.is_dir():
            raise FusescopeError(
                f"--out {out} is a file; with folder inputs --out is the folder "
                f"the masks are written to"
            )
        targets = [out.resolve()]
    else:
        if out.is_dir():
            raise FusescopeError(
                f"--out {out} is a folder; for one frame give the mask's "
                f"file name, e.g. {out / 'mask.png'}"
            )
        targets = [out.resolve(), overlay_path(out).resolve()]
    if overwrite:
        return
    for name, path in inputs.items():
        source = path.resolve()
        for target in targets:
            if target == source or (folders and source in target.parents):
                raise FusescopeError(
                    f"--out {out}: {'is, or is inside,' if folders else 'would overwrite'} the "
                    f"{name} input {path}; choose another --out (or pass --overwrite)"
                )


def predict(
    run: Run,
    inputs: dict[str, str | os.PathLike],
    out: str | os.PathLike,
    tta: str = "none",
    device: str = "cpu",
    progress: bool = True,
    batch_size: int = 1,
    overwrite: bool = False,
    workers: int = 0,
) -> list[Path]:
    """Predict one frame (inputs are files, `out` a .png) or folders (inputs are folders whose
    files are matched by stem, `out` a folder; up to `batch_size` frames of one size go through
    the model together). For folders, `workers` processes read the next frames while the model
    runs and a thread writes the masks. Returns the mask paths written.

    An output that would overwrite an input is refused unless `overwrite` (`check_output`)."""
    missing = [m for m in run.model.modalities if m not in inputs]
    if missing:
        raise FusescopeError(
            f"this model reads {run.model.modalities}; give "
            f"{' '.join(f'--{m} FILE' for m in missing)}"
        )
    paths = {m: Path(inputs[m]) for m in run.model.modalities}
    for p in paths.values():
        if not p.exists():
            raise FusescopeError(f"{p}: not found")
    out = Path(out)
    if all(p.is_file() for p in paths.values()):
        check_output(paths, out, folders=False, overwrite=overwrite)
        label, raw = predict_frame(run, paths, tta, device)
        write_prediction(run, label, raw, out)
        return [out]
    if not all(p.is_dir() for p in paths.values()):
        raise FusescopeError("give either one file per modality or one folder per modality")
    check_output(paths, out, folders=True, overwrite=overwrite)
    stems = {
        m: {f.stem: f for f in p.iterdir() if f.suffix.lower() in EXTENSIONS}
        for m, p in paths.items()
    }
    common = sorted(set.intersection(*(set(s) for s in stems.values())))
    unmatched = sorted(set.union(*(set(s) for s in stems.values())) - set(common))
    if unmatched:
        raise FusescopeError(
            f"no match in every modality folder for {unmatched[0]} "
            f"({len(unmatched)} unmatched files)"
        )
    if not common:
        raise FusescopeError(f"no image files in {', '.join(map(str, paths.values()))}")
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from fusescope.engine.frames import read_frames

    written = []
    writes = []
    writer = ThreadPoolExecutor(max_workers=1)  # PNG encoding overlaps the next forward pass
    bar = tqdm(total=len(common), desc="predict", unit="frame", disable=not progress)
    files = [{m: stems[m][stem] for m in paths} for stem in common]
    try:
        for chunk, frames in read_frames(run, files, common, batch_size, workers):
            by_size: dict[tuple[int, int], list[int]] = {}  # a batch needs frames of one size
            for i, (sample, _) in enumerate(frames):
                by_size.setdefault(tuple(next(iter(sample.values())).shape[-2:]), []).append(i)
            labels: list[np.ndarray | None] = [None] * len(chunk)
            for members in by_size.values():
                for i, label in zip(
                    members,
                    predict_samples(run, [frames[i][0] for i in members], tta, device),
                    strict=True,
                ):
                    labels[i] = label
            for stem, (_, raw), label in zip(chunk, frames, labels, strict=True):
                target = out / f"{stem}.png"
                writes.append(writer.submit(write_prediction, run, label, raw, target))
                written.append(target)
            bar.update(len(chunk))
    finally:
        writer.shutdown(wait=True)
        bar.close()
    for done in writes:
        done.result()  # a write error surfaces here
    return written
