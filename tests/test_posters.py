"""The known-answer posters: determinism, exact cue isolation between poster and plot, the
MM-IMDB layout, atomicity."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from fusescope.data import posters as P
from fusescope.data.text import tokenize
from fusescope.errors import FusescopeError
from fusescope.io import read_image

SIZE = (48, 32)
CUE = {i: g.cue for i, g in enumerate(P.GENRES)}
WORDS = {i: set(g.words) for i, g in enumerate(P.GENRES)}


@functools.cache
def samples(n: int = 60) -> tuple[P.PosterSample, ...]:
    return tuple(P.sample_poster(5, i, SIZE) for i in range(n))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_genre_table():
    assert 8 <= len(P.GENRES) <= 12
    assert {g.cue for g in P.GENRES} == {"appearance", "text", "both"}
    for g in P.GENRES:
        assert (g.motif is not None) == (g.cue in ("appearance", "both"))
        assert bool(g.words) == (g.cue in ("text", "both"))
    motifs = [g.motif for g in P.GENRES if g.motif]
    assert len(set(motifs)) == len(motifs)
    # a cue word belongs to one genre and never to the neutral filler
    words = [w for g in P.GENRES for w in g.words]
    assert len(set(words)) == len(words)
    filler = set()
    for template in P._FILLER + P._GENRE_SENTENCES:
        filler |= set(tokenize(template))
    for group in (P._NAMES, P._PLACES, P._RELATIVES, P._TIMES):
        filler |= set(group)
    assert not filler & set(words)


def test_genre_rates_and_independence_between_cue_groups():
    """Every movie has a genre; base rates as documented; and what the poster shows (the number
    of motifs) says nothing about the text-only genres, what the plot shows nothing about the
    appearance-only ones."""
    drawn = [P.sample_poster(0, i) for i in range(6000)]
    present = np.zeros((len(drawn), len(P.GENRES)), bool)
    for row, s in enumerate(drawn):
        assert s.genres and list(s.genres) == sorted(set(s.genres))
        present[row, list(s.genres)] = True
    cue = np.array([g.cue for g in P.GENRES])
    rates = present.mean(0)
    assert np.abs(rates[cue != "both"] - 0.25).max() < 0.025
    assert np.abs(rates[cue == "both"] - (0.15 + 0.85**4 * 0.25)).max() < 0.025
    assert abs(present.sum(1).mean() - 2.62) < 0.05
    motifs = present[:, cue != "text"].sum(1)
    words = present[:, cue != "appearance"].sum(1)
    for shown, hidden in ((motifs, cue == "text"), (words, cue == "appearance")):
        for k in np.unique(shown):
            rows = shown == k
            if rows.sum() >= 400:
                assert np.abs(present[rows][:, hidden].mean(0) - 0.25).max() < 0.05, k


def test_poster_is_blind_to_text_only_genres():
    """Dropping the text-only genres leaves every poster byte as it was; the plot changes."""
    changed = 0
    for s in samples():
        image, plot = P.render_poster(s)
        image_d, plot_d = P.render_poster(s, drop=("text",))
        assert image_d.tobytes() == image.tobytes()
        has_text_genre = any(CUE[g] == "text" for g in s.genres)
        assert (plot_d != plot) == has_text_genre
        changed += has_text_genre
    assert changed >= 10


def test_plot_is_blind_to_appearance_only_genres():
    """Dropping the appearance-only genres leaves the plot text as it was; the poster changes."""
    changed = 0
    for s in samples():
        image, plot = P.render_poster(s)
        image_d, plot_d = P.render_poster(s, drop=("appearance",))
        assert plot_d == plot
        has_image_genre = any(CUE[g] == "appearance" for g in s.genres)
        assert (image_d.tobytes() != image.tobytes()) == has_image_genre
        changed += has_image_genre
    assert changed >= 10


def test_each_modality_holds_exactly_its_genres_cues():
    """The plot names the cue words of its text / both genres and no other genre's; the poster
    differs from the one without the sample's genres exactly when a genre has an image cue."""
    for s in samples():
        tokens = set(tokenize(" ".join(P.render_plot(s))))
        for g in range(len(P.GENRES)):
            assert bool(tokens & WORDS[g]) == (g in s.genres and CUE[g] in ("text", "both"))
        bare = P.PosterSample(s.seed, s.index, s.size, ())
        shown = any(CUE[g] in ("appearance", "both") for g in s.genres)
        assert (P.render_image(bare).tobytes() != P.render_image(s).tobytes()) == shown


def test_both_genres_show_in_each_modality():
    s = next(s for s in samples() if any(CUE[g] == "both" for g in s.genres))
    g = next(g for g in s.genres if CUE[g] == "both")
    without = P.PosterSample(s.seed, s.index, s.size, tuple(x for x in s.genres if x != g))
    assert P.render_image(without).tobytes() != P.render_image(s).tobytes()
    assert P.render_plot(without) != P.render_plot(s)


def test_unknown_drop_group():
    with pytest.raises(FusescopeError, match="cannot drop cue group 'both'"):
        P.render_poster(samples()[0], drop=("both",))


def test_generate_is_deterministic_and_in_the_mmimdb_layout(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        P.generate_posters(tmp_path / name, 7, seed=seed, size=SIZE, image_format="png")
    a, b, c = (tree_bytes(tmp_path / n) for n in "abc")
    assert a == b and a != c
    assert sorted(a) == sorted(
        [f"dataset/{P.sample_id(i)}.{ext}" for i in range(7) for ext in ("json", "png")]
        + ["genres.json", "split.json"]
    )
    split = json.loads(a["split.json"])
    assert split == {
        "train": [P.sample_id(i) for i in range(5)],
        "dev": ["0000005"],
        "test": ["0000006"],
    }
    for i in range(7):
        s = P.sample_poster(3, i, SIZE)
        image, plot = P.render_poster(s)
        meta = json.loads(a[f"dataset/{P.sample_id(i)}.json"])
        assert meta["genres"] == [P.GENRES[g].name for g in s.genres] and meta["plot"] == plot
        assert isinstance(meta["plot"], list) and all(isinstance(p, str) for p in plot)
        assert np.array_equal(
            read_image(tmp_path / "a" / "dataset" / f"{P.sample_id(i)}.png"), image
        )
    genres = json.loads(a["genres.json"])
    assert genres["genres"] == P.genre_table() and genres["generator"]["seed"] == 3


def test_jpeg_posters_are_close_to_the_render(tmp_path):
    P.generate_posters(tmp_path / "j", 3, seed=1, size=SIZE, jpeg_quality=95)
    image = read_image(tmp_path / "j" / "dataset" / "0000000.jpeg")
    exact = P.render_image(P.sample_poster(1, 0, SIZE))
    assert image.shape == exact.shape
    assert np.abs(image.astype(int) - exact).mean() < 4


def test_samples_do_not_depend_on_the_rest_of_the_set():
    assert P.render_poster(P.sample_poster(2, 9, SIZE))[1] == P.render_plot(
        P.sample_poster(2, 9, SIZE)
    )
    small = [P.sample_poster(2, i, SIZE) for i in range(3)]
    assert small == [P.sample_poster(2, i, SIZE) for i in range(10)][:3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num": 2}, "num must be"),
        ({"size": (10, 10)}, "size must be"),
        ({"image_format": "gif"}, "image format"),
        ({"jpeg_quality": 0}, "jpeg quality"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"num": 5, "size": SIZE, **kwargs}
    with pytest.raises(FusescopeError, match=message):
        P.generate_posters(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_existing_folder_and_failure_leave_nothing(tmp_path, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FusescopeError, match="already exists"):
        P.generate_posters(tmp_path / "full", 5, size=SIZE)

    def broken(sample, drop=()):
        if sample.index == 3:
            raise RuntimeError("boom")
        return np.zeros((*SIZE, 3), np.uint8), ["x"]

    monkeypatch.setattr(P, "render_poster", broken)
    with pytest.raises(RuntimeError):
        P.generate_posters(tmp_path / "new", 5, size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_cli(tmp_path, capsys):
    from fusescope.cli import main

    assert main(
        [
            "data",
            "synth-posters",
            str(tmp_path / "p"),
            "--num",
            "4",
            "--size",
            "32",
            "32",
            "--format",
            "png",
        ]
    ) in (0, None)
    assert len(list((tmp_path / "p" / "dataset").glob("*.png"))) == 4
    assert "wrote 4 posters" in capsys.readouterr().out


def test_config_generates_posters_on_first_use_and_refuses_other_specs(tmp_path):
    from fusescope.config import load_config
    from fusescope.data.build import ensure_data
    from fusescope.data.meta import load_meta

    root = tmp_path / "posters"
    spec = [
        f"data.root={root}",
        "data.synth.kind=posters",
        "data.synth.num=6",
        "data.synth.size=[32,24]",
        "data.synth.seed=1",
        "data.modalities=[poster,plot]",
    ]
    cfg = load_config(None, spec)
    assert ensure_data(cfg.data, progress=False) == root
    meta = load_meta(root)
    assert meta.task == "classification" and meta.extra["generator"]["kind"] == "posters"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posters"]  # no raw folder left
    image = read_image(root / "poster" / "0000004.png")  # exact pixels (PNG on the way)
    assert np.array_equal(image, P.render_image(P.sample_poster(1, 4, (32, 24))))
    assert ensure_data(cfg.data, progress=False) == root  # the same spec: used as it is
    with pytest.raises(FusescopeError, match="num 6 here, 8 wanted"):
        ensure_data(load_config(None, [*spec, "data.synth.num=8"]).data, progress=False)
    with pytest.raises(FusescopeError, match="kind posters here, rooms wanted"):
        ensure_data(load_config(None, [*spec, "data.synth.kind=rooms"]).data, progress=False)
    with pytest.raises(FusescopeError, match="data.synth.kind='tv' unknown"):
        load_config(None, [*spec, "data.synth.kind=tv"])
