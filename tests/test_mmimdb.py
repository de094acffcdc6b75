"""`fusescope data prepare mmimdb`: the release layout to the classification folder format, on
small fixtures written in that layout (generated posters, and hand-made MM-IMDB movies)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusescope.config import load_config
from fusescope.console import FusescopeWarning
from fusescope.data import classification as cls
from fusescope.data import posters as P
from fusescope.data.meta import load_meta, read_split
from fusescope.data.mmimdb import (
    MMIMDB_GENRES,
    RELEASE_SPLIT_SIZES,
    check_split_sizes,
    prepare_mmimdb,
)
from fusescope.errors import FusescopeError
from fusescope.io import read_image

SIZE = (48, 32)


def write_release(root: Path, movies: dict[str, dict], split: dict | None = None) -> Path:
    """Movies {id: {"genres", "plot", "image": uint8 array | None}} in the release layout."""
    (root / "dataset").mkdir(parents=True)
    for sid, movie in movies.items():
        image = movie.get("image")
        if image is not None:
            Image.fromarray(image).save(root / "dataset" / f"{sid}.jpeg", quality=95)
        body = {k: v for k, v in movie.items() if k != "image"}
        (root / "dataset" / f"{sid}.json").write_text(json.dumps(body))
    ids = sorted(movies)
    split = split or {"train": ids[:-2], "dev": ids[-2:-1], "test": ids[-1:]}
    (root / "split.json").write_text(json.dumps(split))
    return root


def movies() -> dict[str, dict]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (30, 20), dtype=np.uint8)  # some MM-IMDB posters are grey
    return {
        "0000001": {
            "genres": ["Drama", "Sci-Fi"],
            "plot": ["A robot dreams.", "It wakes up."],
            "image": rng.integers(0, 255, (30, 20, 3), dtype=np.uint8),
        },
        "0000002": {"genres": ["Film-Noir", "News"], "plot": ["A detective walks."], "image": grey},
        "0000003": {
            "genres": ["Comedy"],
            "plot": "One string plot.",
            "image": rng.integers(0, 255, (40, 25, 3), dtype=np.uint8),
        },
        "0000004": {
            "genres": ["Western", "Short"],
            "plot": ["Dust."],
            "image": rng.integers(0, 255, (30, 20, 3), dtype=np.uint8),
        },
    }


def test_release_movies_become_the_folder_format(tmp_path):
    root = write_release(tmp_path / "raw", movies())
    # four movies are not the release's 15,552 / 2,608 / 7,799: converted, with a warning
    with pytest.warns(FusescopeWarning, match=r"2 / 1 / 1 movies .* has 15,552 / 2,608 / 7,799"):
        meta = prepare_mmimdb(root, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert load_meta(out) == meta
    assert meta.class_names == list(MMIMDB_GENRES) and len(MMIMDB_GENRES) == 23
    assert meta.task == "classification" and meta.multi_label
    assert meta.modalities["poster"].kind == "color" and meta.modalities["plot"].kind == "text"
    assert meta.extra["left_out_genres"] == {"News": 1}
    assert read_split(out, "train") == ["0000001", "0000002"]
    assert read_split(out, "val") == ["0000003"] and read_split(out, "test") == ["0000004"]
    labels = json.loads((out / "labels.json").read_text())
    assert labels == {
        "0000001": ["Drama", "Sci-Fi"],
        "0000002": ["Film-Noir"],
        "0000003": ["Comedy"],
        "0000004": ["Western", "Short"],
    }
    assert (out / "plot" / "0000001.txt").read_text() == "A robot dreams.\n\nIt wakes up.\n"
    assert (out / "plot" / "0000003.txt").read_text() == "One string plot.\n"
    grey = read_image(out / "poster" / "0000002.png")
    assert grey.shape == (30, 20, 3) and (grey[..., 0] == grey[..., 2]).all()
    decoded = read_image(root / "dataset" / "0000001.jpeg")
    assert np.array_equal(read_image(out / "poster" / "0000001.png"), decoded)  # lossless
    # and it serves as a classification data set
    cfg = load_config(
        None, [f"data.root={out}", "data.modalities=[poster,plot]", "data.vocab_min_count=1"]
    )
    stats = cls.normalisation_stats(cfg.data)
    sample = cls.eval_dataset(cfg.data, "train", stats)[1]
    assert sample["target"].nonzero().flatten().tolist() == [MMIMDB_GENRES.index("Film-Noir")]


def test_split_sizes_are_checked_against_the_release(recwarn):
    release = {name: [f"{name}{i}" for i in range(n)] for name, n in RELEASE_SPLIT_SIZES.items()}
    assert check_split_sizes(release, Path("split.json")) is True
    assert not [w for w in recwarn if issubclass(w.category, FusescopeWarning)]
    release["test"] = release["test"][:-1]  # one test movie short
    with pytest.warns(FusescopeWarning, match=r"split.json: splits of 15,552 / 2,608 / 7,798"):
        assert check_split_sizes(release, Path("split.json")) is False


def test_cmyk_posters_become_rgb(tmp_path):
    root = write_release(tmp_path / "raw", movies())
    rgb = np.zeros((30, 20, 3), np.uint8)
    rgb[:, :10] = (200, 40, 40)
    Image.fromarray(rgb).convert("CMYK").save(root / "dataset" / "0000001.jpeg", quality=95)
    prepare_mmimdb(root, tmp_path / "out", progress=False)
    poster = read_image(tmp_path / "out" / "poster" / "0000001.png")
    assert poster.shape == (30, 20, 3)
    assert np.abs(poster.astype(int) - rgb).mean() < 6


def test_size_resizes_every_poster(tmp_path):
    root = write_release(tmp_path / "raw", movies())
    prepare_mmimdb(root, tmp_path / "out", size=(16, 12), progress=False)
    for path in (tmp_path / "out" / "poster").iterdir():
        assert read_image(path).shape == (16, 12, 3)
    assert load_meta(tmp_path / "out").extra["size"] == [16, 12]


def test_generated_posters_keep_their_genres_and_cues(tmp_path):
    P.generate_posters(tmp_path / "raw", 10, seed=2, size=SIZE, image_format="png")
    meta = prepare_mmimdb(tmp_path / "raw", tmp_path / "out", progress=False)
    assert [(c.name, c.cue) for c in meta.classes] == [(g.name, g.cue) for g in P.GENRES]
    assert meta.cue_groups() == {"appearance": [0, 1, 2], "text": [3, 4, 5], "both": [6, 7, 8, 9]}
    assert meta.extra["generator"]["seed"] == 2 and meta.name == "posters"
    for i in range(10):
        s = P.sample_poster(2, i, SIZE)
        image, plot = P.render_poster(s)
        sid = P.sample_id(i)
        assert np.array_equal(read_image(tmp_path / "out" / "poster" / f"{sid}.png"), image)
        assert (tmp_path / "out" / "plot" / f"{sid}.txt").read_text() == "\n\n".join(plot) + "\n"


def _break(root: Path, what: str) -> str:
    """Damage one thing of a release fixture; returns what the error must name."""
    ds = root / "dataset"
    if what == "missing json":
        (ds / "0000003.json").unlink()
        return "0000003.json: metadata of id 0000003"
    if what == "missing image":
        (ds / "0000004.jpeg").unlink()
        return "0000004.jpeg: poster of id 0000004"
    if what == "bad genre":
        (ds / "0000002.json").write_text(json.dumps({"genres": ["Dram"], "plot": ["x"]}))
        return "0000002.json: genre 'Dram' is not one of the 23 genres"
    if what == "empty plot":
        (ds / "0000001.json").write_text(json.dumps({"genres": ["Drama"], "plot": [" ", ""]}))
        return "0000001.json: empty plot"
    if what == "no genres":
        (ds / "0000001.json").write_text(json.dumps({"plot": ["x"]}))
        return "0000001.json: 'genres' must be a list"
    if what == "unreadable image":
        (ds / "0000002.jpeg").write_bytes(b"\xff\xd8 truncated")
        return "0000002.jpeg: cannot read image"
    if what == "id in two splits":
        (root / "split.json").write_text(
            json.dumps({"train": ["0000001", "0000002"], "dev": ["0000002"], "test": ["0000004"]})
        )
        return "split.json: id 0000002 is in both train and dev"
    if what == "no dev":
        (root / "split.json").write_text(json.dumps({"train": ["0000001"], "test": ["0000004"]}))
        return "split.json: 'dev' must be a non-empty list"
    if what == "id without files":
        (root / "split.json").write_text(
            json.dumps({"train": ["0000001", "9999999"], "dev": ["0000003"], "test": ["0000004"]})
        )
        return "9999999.json: metadata of id 9999999"
    raise ValueError(what)


@pytest.mark.parametrize(
    "what",
    [
        "missing json",
        "missing image",
        "bad genre",
        "empty plot",
        "no genres",
        "unreadable image",
        "id in two splits",
        "no dev",
        "id without files",
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, what):
    root = write_release(tmp_path / "raw", movies())
    expected = _break(root, what)
    with pytest.raises(FusescopeError) as err:
        prepare_mmimdb(root, tmp_path / "out", progress=False)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_cli_prepare_and_existing_output(tmp_path, capsys):
    from fusescope.cli import main

    root = write_release(tmp_path / "raw", movies())
    args = ["data", "prepare", "mmimdb", "--root", str(root), "--out", str(tmp_path / "out")]
    assert main([*args, "--size", "20", "16"]) == 0
    assert "23 genres" in capsys.readouterr().out
    assert main(args) == 2
    assert "output folder exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert read_image(tmp_path / "out" / "poster" / "0000003.png").shape == (40, 25, 3)
