"""The read side of folder prediction: frames decoded and normalised by DataLoader workers,
handed over in order, `batch_size` at a time, while the model runs on the previous batch.

A worker's error (a bad file) comes back as the FusescopeError it raised, one line naming the
file, not as a worker traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from fusescope.errors import FusescopeError


class FrameFiles(Dataset):
    """One item per frame: (stem, normalised sample, raw arrays), or the error it raised."""

    def __init__(self, run, frames: list[dict[str, Path]], stems: list[str]):
        self.run, self.frames, self.stems = run, frames, stems

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        from fusescope.tasks.segmentation.predict import load_frame

        try:
            sample, raw = load_frame(self.run, self.frames[i])
        except FusescopeError as err:  # re-raised in the main process, message intact
            return self.stems[i], err, None
        return self.stems[i], sample, raw


def _as_list(items: list) -> list:
    return items


def read_frames(
    run, frames: list[dict[str, Path]], stems: list[str], batch_size: int, workers: int = 0
) -> Iterator[tuple[list[str], list[tuple[dict, dict]]]]:
    """Yield (stems, [(sample, raw), ...]) in input order, `batch_size` frames at a time.

    Args:
        run: the loaded run (its data meta and normalisation decode the files).
        frames: one {modality: file} per frame.
        stems: the frame names, parallel to `frames`.
        batch_size: frames per yielded chunk.
        workers: DataLoader worker processes (0: read in this process).
    """
    loader = DataLoader(
        FrameFiles(run, frames, stems),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=2 if workers else None,
    )
    for items in loader:
        for _, sample, _ in items:
            if isinstance(sample, FusescopeError):
                raise sample
        yield [s for s, _, _ in items], [(sample, raw) for _, sample, raw in items]
