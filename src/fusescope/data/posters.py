"""Known-answer image + text data: procedural movie posters and generated plots, multi-label.

Each sample is a "movie" with one or more genres. Every genre declares where its cue lives
(`cue`):

- `appearance`: a shape motif on the poster (a disc, a ring, a cross...); the plot never
  mentions the genre, so only the image identifies it.
- `text`: sentences built from the genre's word list in the plot; nothing on the poster.
- `both`: the motif on the poster and the sentences in the plot.

Genres are drawn so that neither modality can infer the genres it does not show: each
`appearance` and each `text` genre is present independently with probability `P_SINGLE`, and the
`both` genres are drawn on their own (each with probability `P_BOTH`; one of them uniformly if
that gave none, so every movie has a genre). The three groups are independent, so the poster
(a function of the appearance and both genres) carries no information about the text-only
genres, not even through the number of motifs, and the plot none about the appearance-only
ones: a single-modality model can do no better on the other modality's genres than a constant
guess. Base rates: 0.25 per single-cue genre, 0.28 per both-cue genre; 2.6 genres per movie.

How cue isolation is made exact. The poster is drawn from the genres with an image cue only and
the plot from the genres with a text cue only, and every random choice comes from its own
stream, seeded by `(seed, index, purpose[, genre])`: the background, the noise, the cell order
and the filler text are drawn whatever the genres are, and each genre's motif or sentences from
the genre's own stream. So `render_poster(sample, drop=("text",))` (text-only genres removed)
gives the same poster bytes and `drop=("appearance",)` the same plot text; the tests check both
byte for byte. A motif sits in a cell of its own (2 x 4 grid above a title strip), so motifs never
hide each other; neutral elements (title strip, a plain rectangle, filler sentences) carry no
genre.

`generate_posters` writes the MM-IMDB release layout (`OUT/dataset/<id>.jpeg` + `<id>.json` with
`genres` and `plot`, a list of paragraphs; `OUT/split.json` with `train` / `dev` / `test`), plus
`OUT/genres.json` (the genre list with each genre's cue, which `fusescope data prepare mmimdb`
reads instead of the 23 MM-IMDB genres). Sample `i` is a function of `(seed, i, size)` alone.
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fusescope.data.generators import Generator, register_generator
from fusescope.data.prepare import staged_output
from fusescope.engine.memory import check_fits
from fusescope.errors import FusescopeError
from fusescope.io import atomic_path, check_disk_space, remove_stale_temps, temp_folder, write_json

GENERATOR_VERSION = 2  # 2: genres drawn per cue group independently
GROUPS = ("appearance", "text")  # the droppable cue groups; "both" genres are in each modality
IMAGE_FORMATS = ("jpeg", "png")
CELL_ROWS, CELL_COLS = 4, 2  # 8 cells: up to 7 motifs and the neutral rectangle
P_SINGLE = 0.25  # probability of each appearance-only and each text-only genre
P_BOTH = 0.15  # probability of each both-cue genre (one is forced if none is drawn)
TITLE_FRACTION = 0.16  # the bottom strip holding the title blocks


@dataclass(frozen=True)
class Genre:
    name: str
    cue: str  # appearance | text | both
    motif: str | None  # the poster shape (appearance, both)
    words: tuple[str, ...] = ()  # the plot's cue words (text, both)


GENRES: tuple[Genre, ...] = (
    Genre("noir", "appearance", "stripes"),
    Genre("space", "appearance", "ring"),
    Genre("western", "appearance", "triangle"),
    Genre(
        "romance",
        "text",
        None,
        ("love", "kiss", "wedding", "heart", "sweetheart", "passion", "darling", "romance"),
    ),
    Genre(
        "mystery",
        "text",
        None,
        ("detective", "clue", "murder", "suspect", "secret", "riddle", "alibi", "investigation"),
    ),
    Genre(
        "comedy",
        "text",
        None,
        ("joke", "prank", "clown", "laugh", "blunder", "comedian", "gag", "hilarity"),
    ),
    Genre(
        "horror",
        "both",
        "cross",
        ("ghost", "haunting", "blood", "scream", "curse", "demon", "graveyard", "nightmare"),
    ),
    Genre(
        "action",
        "both",
        "disc",
        ("explosion", "chase", "gunfight", "mercenary", "hostage", "bomb", "ambush", "shootout"),
    ),
    Genre(
        "fantasy",
        "both",
        "diamond",
        ("dragon", "wizard", "kingdom", "sword", "spell", "elf", "quest", "sorcerer"),
    ),
    Genre(
        "war",
        "both",
        "checker",
        ("soldier", "battlefield", "army", "trench", "general", "invasion", "platoon", "frontline"),
    ),
)
GENRE_ID = {g.name: i for i, g in enumerate(GENRES)}
SINGLE_IDS = tuple(i for i, g in enumerate(GENRES) if g.cue != "both")
BOTH_IDS = tuple(i for i, g in enumerate(GENRES) if g.cue == "both")

_NAMES = (
    "alice",
    "bruno",
    "carla",
    "dmitri",
    "elena",
    "farid",
    "greta",
    "hugo",
    "ines",
    "jonas",
    "kira",
    "leon",
    "maya",
    "nils",
    "olga",
    "pavel",
)
_PLACES = (
    "town",
    "city",
    "village",
    "harbour",
    "valley",
    "apartment",
    "island",
    "factory",
    "school",
    "farm",
    "hotel",
    "station",
)
_RELATIVES = ("brother", "sister", "uncle", "aunt", "cousin", "neighbour", "father", "mother")
_TIMES = ("summer", "winter", "morning", "week", "night", "spring", "year", "weekend")
_FILLER = (
    "{name} lives in a small {place} with a {relative} .",
    "one {time} , {name} meets {name2} at the {place} .",
    "the story follows {name} over one {time} .",
    "{name} and {name2} travel to the {place} to visit a {relative} .",
    "after a long {time} , {name} returns to the old {place} .",
    "{name} works at the {place} and rarely talks to the {relative} .",
)
_GENRE_SENTENCES = (
    "soon the {w1} and the {w2} change everything for {name} .",
    "nobody in the {place} expected a {w1} , let alone a {w2} .",
    "{name} cannot forget the {w1} and the {w2} .",
    "then a {w1} leads {name} to a {w2} .",
    "the {w1} follows {name} through the {place} .",
)


@dataclass(frozen=True)
class PosterSample:
    """One generated movie: the seed and index it comes from and its genre ids."""

    seed: int
    index: int
    size: tuple[int, int]
    genres: tuple[int, ...]


def _rng(seed: int, index: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, *purpose]))


# purposes of the random streams (never reorder: the bytes of every data set depend on them)
_S_GENRES, _S_BACKGROUND, _S_CELLS, _S_MOTIF, _S_FILLER, _S_SENTENCES, _S_ORDER = range(7)


def sample_id(index: int) -> str:
    return f"{index:07d}"  # MM-IMDB ids are 7-digit IMDb numbers


def sample_poster(seed: int, index: int, size: tuple[int, int] = (96, 64)) -> PosterSample:
    """Movie `index` of a data set generated with `seed` (genres drawn as the module says)."""
    rng = _rng(seed, index, _S_GENRES)
    u = rng.uniform(size=len(GENRES))  # one number per genre, whatever the outcome
    fallback = int(rng.integers(len(BOTH_IDS)))
    single = [g for g in SINGLE_IDS if u[g] < P_SINGLE]
    both = [g for g in BOTH_IDS if u[g] < P_BOTH] or [BOTH_IDS[fallback]]
    genres = tuple(sorted(single + both))
    return PosterSample(seed, index, (int(size[0]), int(size[1])), genres)


def _check_drop(drop: Collection[str]) -> None:
    bad = [d for d in drop if d not in GROUPS]
    if bad:
        raise FusescopeError(
            f"posters: cannot drop cue group {bad[0]!r}; groups: {', '.join(GROUPS)}"
        )


def _kept(sample: PosterSample, drop: Collection[str]) -> list[int]:
    _check_drop(drop)
    return [g for g in sample.genres if GENRES[g].cue not in drop]


def _motif_mask(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A (h, w) bool mask of one motif centred in a cell, with random size and offset."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = min(h, w) * rng.uniform(0.28, 0.42)
    cy = h / 2 + rng.uniform(-0.08, 0.08) * h
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    square = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == "disc":
        return dy**2 + dx**2 <= r**2
    if kind == "ring":
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= 0.55 * r)
    if kind == "triangle":  # apex up
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if kind == "cross":
        arm = 0.3 * r
        return square & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if kind == "stripes":  # diagonal stripes in a square
        period = max(r / 2, 2.0)
        return square & (((dx + dy) % period) < period / 2)
    if kind == "checker":
        period = max(r / 2, 2.0)
        return square & ((np.floor(dx / period) + np.floor(dy / period)) % 2 == 0)
    raise ValueError(kind)


def render_image(sample: PosterSample, drop: Collection[str] = ()) -> np.ndarray:
    """The poster, uint8 (H, W, 3), without the genres of the `drop` cue groups."""
    h, w = sample.size
    rng = _rng(sample.seed, sample.index, _S_BACKGROUND)
    # background: a dark vertical gradient, then noise, both drawn whatever the genres are
    top, bottom = rng.uniform(0.02, 0.35, size=3), rng.uniform(0.02, 0.35, size=3)
    t = np.linspace(0, 1, h)[:, None, None]
    image = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    noise = rng.normal(0, 0.02, size=(h, w, 3))
    title = rng.uniform(0.5, 0.9, size=3)
    blocks = rng.uniform(size=6) < 0.7
    neutral = rng.uniform() < 0.5
    neutral_color = rng.uniform(0.3, 0.6, size=3)
    neutral_box = rng.uniform(0.15, 0.45, size=2)
    # the grid above the title strip; cell order drawn before looking at the genres
    strip = max(int(round(h * TITLE_FRACTION)), 2)
    ch, cw = (h - strip) // CELL_ROWS, w // CELL_COLS
    cells = _rng(sample.seed, sample.index, _S_CELLS).permutation(CELL_ROWS * CELL_COLS)
    shown = [g for g in _kept(sample, drop) if GENRES[g].motif is not None]
    for slot, g in enumerate(shown):
        row, col = divmod(int(cells[slot]), CELL_COLS)
        motif_rng = _rng(sample.seed, sample.index, _S_MOTIF, g)
        mask = _motif_mask(GENRES[g].motif, ch, cw, motif_rng)
        color = motif_rng.uniform(0.55, 1.0, size=3)
        color[motif_rng.integers(3)] = 1.0  # bright against the dark background
        cell = image[row * ch : (row + 1) * ch, col * cw : (col + 1) * cw]
        cell[mask] = color
    if neutral:  # a plain rectangle in the last cell, which no motif uses (at most 7 motifs)
        row, col = divmod(int(cells[-1]), CELL_COLS)
        bh, bw = max(int(ch * neutral_box[0]), 1), max(int(cw * neutral_box[1]), 1)
        y0, x0 = row * ch + (ch - bh) // 2, col * cw + (cw - bw) // 2
        image[y0 : y0 + bh, x0 : x0 + bw] = neutral_color
    # title strip: a row of light blocks, like letters
    n = len(blocks)
    for k in np.flatnonzero(blocks):
        x0, x1 = int(w * (k + 0.15) / n), int(w * (k + 0.85) / n)
        image[h - strip + strip // 4 : h - strip // 4, x0:x1] = title
    image = image + noise
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def render_plot(sample: PosterSample, drop: Collection[str] = ()) -> list[str]:
    """The plot, a list of 1 or 2 paragraphs, without the genres of the `drop` cue groups."""
    rng = _rng(sample.seed, sample.index, _S_FILLER)
    sentences = [_fill(rng.choice(_FILLER), rng) for _ in range(int(rng.integers(2, 4)))]
    split_after = rng.uniform()
    for g in _kept(sample, drop):
        genre = GENRES[g]
        if not genre.words:
            continue
        g_rng = _rng(sample.seed, sample.index, _S_SENTENCES, g)
        for _ in range(2):
            w1, w2 = g_rng.choice(genre.words, size=2, replace=False)
            sentences.append(_fill(g_rng.choice(_GENRE_SENTENCES), g_rng, w1=w1, w2=w2))
    order = _rng(sample.seed, sample.index, _S_ORDER, len(sentences)).permutation(len(sentences))
    sentences = [sentences[i] for i in order]
    cut = int(split_after * len(sentences))  # 0: one paragraph
    paragraphs = [sentences[:cut], sentences[cut:]] if cut else [sentences]
    return [" ".join(p) for p in paragraphs if p]


def _fill(template: str, rng: np.random.Generator, **words: str) -> str:
    name, name2 = rng.choice(_NAMES, size=2, replace=False)
    text = template.format(
        name=name,
        name2=name2,
        place=rng.choice(_PLACES),
        relative=rng.choice(_RELATIVES),
        time=rng.choice(_TIMES),
        **words,
    )
    return text[0].upper() + text[1:]


def render_poster(sample: PosterSample, drop: Collection[str] = ()) -> tuple[np.ndarray, list[str]]:
    """(poster uint8 (H, W, 3), plot paragraphs) of a sample, without the `drop` cue groups."""
    return render_image(sample, drop), render_plot(sample, drop)


def genre_table() -> list[dict]:
    """The genres as `genres.json` lists them: [{name, cue}] in class-id order."""
    return [{"name": g.name, "cue": g.cue} for g in GENRES]


def _encode(image: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    buf = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _check_args(
    num: int, seed: int, size: tuple[int, int], image_format: str, jpeg_quality: int
) -> None:
    if not (isinstance(num, int | np.integer) and num >= 3):
        raise FusescopeError(f"posters: num must be an integer >= 3 (one per split), got {num!r}")
    if not (isinstance(seed, int | np.integer) and seed >= 0):
        raise FusescopeError(f"posters: seed must be a non-negative integer, got {seed!r}")
    if len(size) != 2 or min(size) < 24:
        raise FusescopeError(f"posters: size must be (height, width) >= 24, got {size!r}")
    if image_format not in IMAGE_FORMATS:
        raise FusescopeError(
            f"posters: image format {image_format!r} is not one of {', '.join(IMAGE_FORMATS)}"
        )
    if not 1 <= jpeg_quality <= 100:
        raise FusescopeError(f"posters: jpeg quality must be 1..100, got {jpeg_quality}")


def split_ids(
    num: int, splits: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, list[str]]:
    """Consecutive runs of ids for train / dev / test (samples are independent); counts by
    largest remainder, at least one per split."""
    shares = np.asarray(splits, dtype=np.float64) / sum(splits)
    counts = np.floor(shares * num).astype(int)
    counts[np.argsort(-(shares * num - counts), kind="stable")[: num - counts.sum()]] += 1
    for i in np.flatnonzero(counts == 0):
        counts[counts.argmax()] -= 1
        counts[i] += 1
    ids = [sample_id(i) for i in range(num)]
    out, start = {}, 0
    for name, count in zip(("train", "dev", "test"), counts.tolist(), strict=True):
        out[name] = ids[start : start + count]
        start += count
    return out


def generate_posters(
    out: str | os.PathLike,
    num: int,
    seed: int = 0,
    size: tuple[int, int] = (96, 64),
    image_format: str = "jpeg",
    jpeg_quality: int = 95,
    progress: bool = False,
) -> None:
    """Write `num` generated movies to `out` in the MM-IMDB release layout (module docstring).

    Written in a temporary sibling folder renamed onto `out` at the end: `out` holds all of it
    or does not exist.

    Args:
        out: the folder to create; it must not exist or be empty.
        num: number of movies (70 / 15 / 15 % train / dev / test).
        seed: movie `i` is drawn from streams seeded with `(seed, i, ...)`.
        size: poster (height, width) in pixels.
        image_format: `jpeg` (as MM-IMDB; lossy) or `png` (exact pixels).
        jpeg_quality: JPEG quality (chroma not subsampled).
        progress: show a progress bar (stderr).

    Raises:
        FusescopeError: `out` exists and is not an empty folder, or an argument is invalid.
    """
    out = Path(out)
    size = (int(size[0]), int(size[1]))
    _check_args(num, seed, size, image_format, jpeg_quality)
    # before anything is allocated or written: drawing a poster takes a few float images of its
    # size (16 bytes per pixel is the bound used), and a file holds at least 0.1 byte per pixel
    check_fits(16 * size[0] * size[1], f"size {size[0]}x{size[1]} (drawing a poster)")
    check_disk_space(out.parent, 0.1 * size[0] * size[1] * num, f"{num} posters")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FusescopeError(
            f"{out}: already exists and is not empty; remove it or choose another folder"
        )
    # overwrite: `out` is at most an empty folder here (checked above)
    with staged_output(out, overwrite=True) as tmp:
        (tmp / "dataset").mkdir()
        ext = "jpeg" if image_format == "jpeg" else "png"
        for index in tqdm(range(num), desc="posters", unit="movie", disable=not progress):
            sample = sample_poster(seed, index, size)
            image, plot = render_poster(sample)
            sid = sample_id(index)
            with atomic_path(tmp / "dataset" / f"{sid}.{ext}") as path:
                path.write_bytes(_encode(image, image_format, jpeg_quality))
            write_json(
                tmp / "dataset" / f"{sid}.json",
                {
                    "imdb_id": sid,
                    "title": f"Movie {sid}",
                    "genres": [GENRES[g].name for g in sample.genres],
                    "plot": plot,
                },
            )
        write_json(tmp / "split.json", split_ids(num))
        write_json(
            tmp / "genres.json",
            {
                "genres": genre_table(),
                "generator": {
                    "name": "fusescope.data.posters",
                    "kind": "posters",
                    "version": GENERATOR_VERSION,
                    "seed": int(seed),
                    "num": int(num),
                    "size": list(size),
                    "image_format": image_format,
                },
            },
        )


def generate_poster_data(
    root: Path, num: int, seed: int, size: tuple[int, int], progress: bool = True
) -> None:
    """The known-answer posters as a classification data folder at `root`: generated in the
    MM-IMDB layout (PNG posters, exact) in a temporary folder, then prepared into `root`."""
    from fusescope.data.mmimdb import prepare_mmimdb

    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # the raw layout is locked while it exists: a killed run's is removed by the next one
    remove_stale_temps(root.parent, [root.name])
    with temp_folder(root.parent, f".{root.name}.raw-") as raw:
        generate_posters(
            raw / "mmimdb", num, seed=seed, size=size, image_format="png", progress=progress
        )
        prepare_mmimdb(raw / "mmimdb", root, overwrite=root.exists(), progress=progress)


POSTERS = register_generator(
    Generator(
        kind="posters",
        version=GENERATOR_VERSION,
        record="fusescope.data.posters",
        generate=lambda root, spec, progress: generate_poster_data(
            root, num=spec.num, seed=spec.seed, size=tuple(spec.size), progress=progress
        ),
    )
)
"""The known-answer posters (`data.synth.kind: posters`): image + plot, classification."""

__all__ = [
    "GENRES",
    "GENRE_ID",
    "GENERATOR_VERSION",
    "GROUPS",
    "Genre",
    "PosterSample",
    "generate_posters",
    "generate_poster_data",
    "genre_table",
    "render_image",
    "render_plot",
    "render_poster",
    "sample_id",
    "sample_poster",
    "split_ids",
]
