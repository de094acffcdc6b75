"""MM-IMDB (Arevalo et al., 2017: movie posters, plots and genres) to the classification folder
format.

The release layout read here:

    ROOT/split.json              {"train": [ids], "dev": [ids], "test": [ids]}
    ROOT/dataset/<id>.jpeg       the poster (.jpg / .png are read too)
    ROOT/dataset/<id>.json       {"genres": [names], "plot": [paragraphs] (or one string), ...}
    ROOT/genres.json             optional, fusescope's: {"genres": [{name, cue}], "generator"}
                                 replaces the 23 MM-IMDB genres (the poster generator writes it)

written as (docs/architecture.md): `poster/<id>.png` (colour), `plot/<id>.txt` (the paragraphs
joined by a blank line), `labels.json` ({id: [genres]}), `splits/{train,val,test}.txt` (val =
dev) and `meta.json` (`task: classification`, `multi_label: true`, the genres as classes in the
order of `MMIMDB_GENRES`). Posters are decoded (grey ones become RGB) and, with `size`, resized.

A handful of release files also name genres that are not among the 23 (`Adult`, `News`,
`Reality-TV`, `Talk-Show`); MM-IMDB's 23-genre label matrix leaves them out, and so does this
converter (counted in `meta.json` under `left_out_genres`). Any other name is an error.

The release's splits hold 15,552 / 2,608 / 7,799 movies (train / dev / test; MANGO section 4.1
and every MM-IMDB paper use them): other sizes are converted, with a warning that the results
will not compare with published ones (a generated poster set, which has `genres.json`, is not
checked).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fusescope.console import progress_bar, warn
from fusescope.data.folder import check_inside
from fusescope.data.meta import (
    CUES,
    LABELS_FILE,
    ClassInfo,
    DatasetMeta,
    ModalitySpec,
    meta_from_dict,
    write_split,
)
from fusescope.data.prepare import FOLLOW_HINT, check_output_folder, palette, staged_output
from fusescope.engine.memory import check_fits
from fusescope.errors import FusescopeError
from fusescope.io import (
    MAX_NAME_BYTES,
    decompression_bomb_message,
    is_plain_name,
    read_json,
    write_json,
    write_png,
)

# the 23 genres of MM-IMDB, most frequent first, as the release names them
MMIMDB_GENRES = (
    "Drama",
    "Comedy",
    "Romance",
    "Thriller",
    "Crime",
    "Action",
    "Adventure",
    "Horror",
    "Documentary",
    "Mystery",
    "Sci-Fi",
    "Fantasy",
    "Family",
    "Biography",
    "War",
    "History",
    "Music",
    "Animation",
    "Musical",
    "Western",
    "Sport",
    "Short",
    "Film-Noir",
)
LEFT_OUT_GENRES = ("Adult", "News", "Reality-TV", "Talk-Show")
SPLITS = {"train": "train", "dev": "val", "test": "test"}  # release name -> fusescope name
# movies per split of the MM-IMDB release (Arevalo et al. 2017)
RELEASE_SPLIT_SIZES = {"train": 15552, "dev": 2608, "test": 7799}
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
POSTER, PLOT = "poster", "plot"


def _read_splits(root: Path) -> dict[str, list[str]]:
    path = root / "split.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise FusescopeError(f"{path}: expected an object with train, dev and test id lists")
    seen: dict[str, str] = {}
    out = {}
    for name in SPLITS:
        ids = data.get(name)
        if not isinstance(ids, list) or not ids:
            raise FusescopeError(f"{path}: {name!r} must be a non-empty list of ids")
        for sample_id in ids:
            if not is_plain_name(sample_id):
                raise FusescopeError(
                    f"{path}: {name}: {str(sample_id)[:80]!r} is not a sample id (a file name "
                    f"without / or \\, valid UTF-8, at most {MAX_NAME_BYTES} bytes)"
                )
            if sample_id in seen:
                raise FusescopeError(
                    f"{path}: id {sample_id} is in both {seen[sample_id]} and {name}"
                )
            seen[sample_id] = name
        out[name] = list(ids)
    return out


def check_split_sizes(splits: dict[str, list[str]], where: Path) -> bool:
    """Whether the splits have the release's sizes; warns (naming them) when they do not."""
    sizes = {name: len(ids) for name, ids in splits.items()}
    if sizes == RELEASE_SPLIT_SIZES:
        return True
    ours = " / ".join(f"{sizes[n]:,}" for n in RELEASE_SPLIT_SIZES)
    release = " / ".join(f"{n:,}" for n in RELEASE_SPLIT_SIZES.values())
    warn(
        f"{where}: splits of {ours} movies (train / dev / test); the MM-IMDB release has "
        f"{release}: F1 on these splits does not compare with published MM-IMDB results"
    )
    return False


def _read_genres(root: Path) -> tuple[list[ClassInfo], tuple[str, ...], dict | None]:
    """The classes, the genres left out, and the generator block of a generated set."""
    path = root / "genres.json"
    if not path.is_file():
        colors = palette(len(MMIMDB_GENRES))
        return (
            [ClassInfo(g, i, colors[i]) for i, g in enumerate(MMIMDB_GENRES)],
            LEFT_OUT_GENRES,
            None,
        )
    data = read_json(path)
    table = data.get("genres") if isinstance(data, dict) else None
    if not isinstance(table, list) or not table:
        raise FusescopeError(f'{path}: expected {{"genres": [{{name, cue}}, ...]}}')
    colors = palette(len(table))
    classes = []
    for i, g in enumerate(table):
        if not (isinstance(g, dict) and isinstance(g.get("name"), str) and g["name"]):
            raise FusescopeError(f"{path}: genres[{i}] needs a name")
        if any(c.name == g["name"] for c in classes):
            raise FusescopeError(f"{path}: genre {g['name']!r} is listed twice")
        cue = g.get("cue")
        if cue is not None and cue not in CUES:
            raise FusescopeError(
                f"{path}: genres[{i}] ({g['name']}): cue {cue!r} is not one of {', '.join(CUES)}"
            )
        classes.append(ClassInfo(g["name"], i, colors[i], cue))
    generator = data.get("generator")
    return classes, (), generator if isinstance(generator, dict) else None


def _find_image(folder: Path, sample_id: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        path = folder / f"{sample_id}{ext}"
        if path.is_file():
            return path
    raise FusescopeError(
        f"{folder / sample_id}.jpeg: poster of id {sample_id} (in split.json) not found"
    )


def _read_movie(
    path: Path, sample_id: str, known: set[str], left_out: tuple[str, ...]
) -> tuple[list[str], str, list[str]]:
    """(genres kept, plot text, genres left out) of one release json."""
    if not path.is_file():
        raise FusescopeError(f"{path}: metadata of id {sample_id} (in split.json) not found")
    data = read_json(path)
    if not isinstance(data, dict):
        raise FusescopeError(f"{path}: expected a JSON object with genres and plot")
    genres = data.get("genres")
    if not (isinstance(genres, list) and all(isinstance(g, str) for g in genres)):
        raise FusescopeError(f"{path}: 'genres' must be a list of names, got {genres!r}")
    if not genres:
        raise FusescopeError(f"{path}: no genres")
    for g in genres:
        if g not in known and g not in left_out:
            raise FusescopeError(f"{path}: genre {g!r} is not one of the {len(known)} genres")
    plot = data.get("plot")
    if isinstance(plot, str):
        plot = [plot]
    if not (isinstance(plot, list) and all(isinstance(p, str) for p in plot)):
        raise FusescopeError(f"{path}: 'plot' must be a list of paragraphs, got {plot!r}")
    text = "\n\n".join(p.strip() for p in plot if p.strip())
    if not any(c.isalnum() for c in text):
        raise FusescopeError(f"{path}: empty plot")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate (a "\\ud800" escape in the JSON)
        raise FusescopeError(
            f"{path}: the plot has a character that is not valid Unicode ({err.reason} at "
            f"character {err.start})"
        ) from None
    kept = sorted(set(g for g in genres if g in known), key=genres.index)
    return kept, text + "\n", [g for g in genres if g not in known]


def _poster(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """A poster as uint8 RGB (H, W, 3): grey, palette and CMYK JPEGs (all in the release)
    converted by Pillow, resized to `size` if given."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise FusescopeError(f"{path}: {decompression_bomb_message(err)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise FusescopeError(f"{path}: cannot read image ({err})") from None
    if size is not None and (rgb.height, rgb.width) != tuple(size):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(rgb)


def prepare_mmimdb(
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    follow_links: bool = False,
) -> DatasetMeta:
    """Convert the MM-IMDB release layout at `root` into a classification data folder `out`.

    Args:
        root: the folder holding `split.json` and `dataset/`.
        out: the data folder to write (all or nothing).
        size: resize every poster to (height, width); None keeps each poster's own size.
        overwrite: replace an existing `out`.
        progress: show a progress bar.
        follow_links: read files that symbolic links lead to outside `root` (refused otherwise:
            their content would be copied into `out`).

    Returns:
        The metadata written to `out/meta.json`.

    Raises:
        FusescopeError: naming the file or id: a missing split file, json or poster, an id in
            two splits, a genre outside the list, an empty plot, an unreadable poster, a link
            leading outside `root`; genres.json naming a genre twice or an unknown cue.
    """
    root, out = Path(root), Path(out)
    check_output_folder(out, overwrite, [root])
    if not root.is_dir():
        raise FusescopeError(f"{root}: folder not found")
    if size is not None:
        if len(size) != 2 or min(size) < 1:
            raise FusescopeError(f"--size must be two positive integers H W, got {size}")
        check_fits(8 * size[0] * size[1] * 3, f"--size {size[0]} {size[1]} (one poster)")
    for name in ("split.json", "genres.json", "dataset"):
        if (root / name).exists() and not follow_links:
            check_inside(root / name, root, FOLLOW_HINT)
    splits = _read_splits(root)
    classes, left_out, generator = _read_genres(root)
    if generator is None:  # a generated poster set has its own sizes
        check_split_sizes(splits, root / "split.json")
    known = {c.name for c in classes}
    dataset = root / "dataset"
    if not dataset.is_dir():
        raise FusescopeError(f"{dataset}: folder not found (the release's per-movie files)")
    labels: dict[str, list[str]] = {}
    dropped: dict[str, int] = {}
    ids = [i for name in SPLITS for i in splits[name]]
    extra: dict = {
        "task": "classification",
        "multi_label": True,
        "source": "MM-IMDB release layout (split.json, dataset/)",
    }
    # what the loader will check, checked before anything is converted
    modalities = {POSTER: ModalitySpec("color", 3), PLOT: ModalitySpec("text", 0)}
    meta_from_dict(
        DatasetMeta("mmimdb", classes, modalities, extra=extra).to_dict(),
        where=str(root / "genres.json"),
    )

    if not follow_links:  # every file, before anything is converted
        for sample_id in ids:
            check_inside(dataset / f"{sample_id}.json", root, FOLLOW_HINT)
            for ext in IMAGE_EXTENSIONS:
                check_inside(dataset / f"{sample_id}{ext}", root, FOLLOW_HINT)
    with staged_output(out, overwrite=overwrite, inputs=[root]) as tmp:
        for sample_id in progress_bar(ids, desc=f"mmimdb -> {out.name}", disable=not progress):
            genres, text, other = _read_movie(
                dataset / f"{sample_id}.json", sample_id, known, left_out
            )
            image = _poster(_find_image(dataset, sample_id), size)
            for g in other:
                dropped[g] = dropped.get(g, 0) + 1
            labels[sample_id] = genres
            write_png(tmp / POSTER / f"{sample_id}.png", image, compress_level=1)
            (tmp / PLOT).mkdir(exist_ok=True)
            (tmp / PLOT / f"{sample_id}.txt").write_text(text, encoding="utf-8")
        write_json(tmp / LABELS_FILE, labels)
        for name, fs_name in SPLITS.items():
            write_split(tmp, fs_name, splits[name])
        if size is not None:
            extra["size"] = list(size)
        if dropped:
            extra["left_out_genres"] = dict(sorted(dropped.items()))
        if generator is not None:
            extra["generator"] = generator
        meta = DatasetMeta(
            name="posters" if generator is not None else "mmimdb",
            classes=classes,
            modalities=modalities,
            extra=extra,
        )
        meta.save(tmp)
    return meta
