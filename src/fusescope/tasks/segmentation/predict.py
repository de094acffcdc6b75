"""Prediction on the user's own frames: `fusescope predict RUN --rgb A --depth B --out MASK`.

Each input file is decoded exactly as the training data was (units from the run's data meta,
normalisation from the run's train statistics). The mask is a palette PNG (pixel = class id,
shown in the class colours) and an overlay PNG is written beside it. Folders of files are matched
by file stem across modalities.

Nothing an input is read from is written to (every output file is compared with every input
file, both resolved, links included), and a folder's masks appear all together or not at all:
they are written to a temporary folder and moved into `--out` once every frame has been read
and predicted, so a bad frame in the middle leaves no partial output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fusescope.data.folder import EXTENSIONS, files_by_stem, load_modality
from fusescope.data.kinds import kind_of
from fusescope.data.transforms import Normalize
from fusescope.engine.checkpoint import Run
from fusescope.engine.memory import is_out_of_memory, out_of_memory_error
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, remove_stale_temps, temp_folder, write_label_png
from fusescope.tasks.segmentation.evaluation import predict_probs


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
    """Class ids (H, W) for normalised samples of one size, run as one batch.

    Raises:
        FusescopeError: the batch does not fit in memory, naming its size and the options.
    """
    batch = {m: torch.stack([s[m] for s in samples]).to(device) for m in run.model.modalities}
    kinds = {m: run.meta.modalities[m].kind for m in run.model.modalities}
    specs = {m: run.meta.modalities[m] for m in run.model.modalities}
    mirror = Normalize(specs, run.stats).to(device).mirror  # flip TTA, in normalised units
    try:
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
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        h, w = next(iter(batch.values())).shape[-2:]
        raise out_of_memory_error(
            err,
            f"predicting {len(samples)} frame(s) of {h}x{w}",
            "--batch-size or --tta, or resize the frames",
        ) from None
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


def check_output(
    inputs: dict[str, Path],
    out: Path,
    folders: bool,
    overwrite: bool,
    frames: list[dict[str, Path]] = (),
    stems: list[str] = (),
) -> None:
    """Refuse an output that would overwrite an input: a mask or overlay file that is an input
    file, an output folder that is, or is inside, an input folder, or (folders) any mask or
    overlay that is one of the `frames`' files, every path resolved (so `a/../a/rgb.png` and
    symbolic links count, also links that lead from an input folder into the output), unless
    `overwrite`. Also refuse an output of the wrong type (a file where a folder is needed, the
    reverse, a mask not named .png).

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
        if out.suffix.lower() != ".png":
            raise FusescopeError(
                f"--out {out}: masks are written as PNG (exact class ids, lossless); give a "
                f"file name ending in .png"
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
    if not folders:
        return
    read = {f.resolve(): (name, f) for frame in frames for name, f in frame.items()}
    for stem in stems:
        for written in (out / f"{stem}.png", overlay_path(out / f"{stem}.png")):
            hit = read.get(written.resolve())
            if hit is not None:
                name, f = hit
                raise FusescopeError(
                    f"--out {out}: {written.name} would overwrite the {name} input {f} "
                    f"(which is {written.resolve()}); choose another --out (or pass --overwrite)"
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
    runs and a thread writes the masks into a temporary folder, moved into `out` at the end.
    Returns the mask paths written.

    An output that would overwrite an input is refused unless `overwrite` (`check_output`)."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise FusescopeError(f"--batch-size must be at least 1, got {batch_size!r}")
    if not (isinstance(workers, int) and workers >= 0):
        raise FusescopeError(f"--workers must be 0 or more, got {workers!r}")
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
        remove_stale_temps(out.parent, [out.name, overlay_path(out).name])
        write_prediction(run, label, raw, out)
        return [out]
    if not all(p.is_dir() for p in paths.values()):
        raise FusescopeError("give either one file per modality or one folder per modality")
    stems = {m: files_by_stem(p, EXTENSIONS) for m, p in paths.items()}
    common = sorted(set.intersection(*(set(s) for s in stems.values())))
    unmatched = sorted(set.union(*(set(s) for s in stems.values())) - set(common))
    if unmatched:
        raise FusescopeError(
            f"no match in every modality folder for {unmatched[0]} "
            f"({len(unmatched)} unmatched files)"
        )
    if not common:
        raise FusescopeError(f"no image files in {', '.join(map(str, paths.values()))}")
    files = [{m: stems[m][stem] for m in paths} for stem in common]
    check_output(paths, out, folders=True, overwrite=overwrite, frames=files, stems=common)
    # staged beside the real output folder, so moving the masks in is a rename
    place = out.resolve()
    remove_stale_temps(place.parent, [place.name])
    with temp_folder(place.parent, f".{place.name}.tmp-") as stage:
        staged = _predict_folder(
            run, files, common, stage, tta, device, progress, batch_size, workers
        )
        if place.is_dir():
            for mask in staged:
                for f in (mask, overlay_path(mask)):
                    os.replace(f, place / f.name)
        else:
            os.replace(stage, place)
    return [out / mask.name for mask in staged]


def _predict_folder(
    run: Run,
    files: list[dict[str, Path]],
    stems: list[str],
    stage: Path,
    tta: str,
    device: str,
    progress: bool,
    batch_size: int,
    workers: int,
) -> list[Path]:
    """Predict every frame of `files` and write its mask and overlay into `stage`."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from fusescope.tasks.segmentation.frames import read_frames

    written = []
    writes = []
    writer = ThreadPoolExecutor(max_workers=1)  # PNG encoding overlaps the next forward pass
    bar = tqdm(total=len(stems), desc="predict", unit="frame", disable=not progress)
    try:
        for chunk, frames in read_frames(run, files, stems, batch_size, workers):
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
                target = stage / f"{stem}.png"
                writes.append(writer.submit(write_prediction, run, label, raw, target))
                written.append(target)
            bar.update(len(chunk))
    except BaseException:
        bar.leave = False  # erased: the error's message stands alone
        raise
    finally:
        writer.shutdown(wait=True)
        bar.close()
    for done in writes:
        done.result()  # a write error surfaces here
    return written
