"""Taskonomy preparation from a tiny tree in the public per-domain layout."""

import numpy as np
import pytest

from fusescope.cli import main
from fusescope.data.folder import load_modality
from fusescope.data.meta import load_meta, read_split
from fusescope.data.taskonomy import prepare_taskonomy
from fusescope.errors import FusescopeError
from fusescope.io import read_image, write_png

H, W = 6, 8
FRAMES = [
    "point_3_view_0",
    "point_3_view_1",
    "point_12_view_4",
    "point_40_view_2",
    "point_7_view_10",
    "point_9_view_0",
]
DOMAINS = ("rgb", "reshading", "normal", "depth_zbuffer", "edge_texture", "edge_occlusion")


def domain_file(root, domain, frame):
    return root / domain / f"{frame}_domain_{domain}.png"


@pytest.fixture
def tree(tmp_path):
    """Six frames of every domain, written as Taskonomy stores them; returns (root, truth)."""
    rng = np.random.default_rng(5)
    root = tmp_path / "taskonomy"
    truth = {}
    for frame in FRAMES:
        shade = rng.integers(0, 256, (H, W), dtype=np.uint8)
        files = {
            "rgb": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            # reshading as three equal channels, as Taskonomy stores it
            "reshading": np.repeat(shade[..., None], 3, axis=2),
            "normal": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            "depth_zbuffer": rng.integers(200, 6000, (H, W)).astype(np.uint16),
            "edge_texture": rng.integers(0, 11355, (H, W)).astype(np.uint16),
            "edge_occlusion": rng.integers(0, 11584, (H, W)).astype(np.uint16),
        }
        files["depth_zbuffer"][0, :3] = 65535  # no depth
        files["edge_texture"][1, 0] = 11355  # the maximum -> 255
        files["edge_texture"][1, 1] = 40000  # beyond CEN's maximum: clipped
        files["edge_occlusion"][2, 2] = 11583
        for domain, array in files.items():
            write_png(domain_file(root, domain, frame), array)
        truth[frame] = files
    return root, truth


def write_lists(tmp_path, train, val, cen_style=True):
    def line(frame):
        return f"{{domain}}/{frame}_domain_{{domain}}.png" if cen_style else frame

    (tmp_path / "train.txt").write_text("\n".join(line(f) for f in train))  # no final newline
    (tmp_path / "val.txt").write_text("".join(f"{line(f)}\n" for f in val))
    return tmp_path / "train.txt", tmp_path / "val.txt"


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_prepare_with_cen_lists(tree, tmp_path):
    root, truth = tree
    train_list, val_list = write_lists(tmp_path, FRAMES[:4], FRAMES[4:])
    out = tmp_path / "out"
    prepare_taskonomy(root, out, train_list=train_list, val_list=val_list)
    meta = load_meta(out)
    assert meta.classes == []
    kinds = {name: (spec.kind, spec.channels) for name, spec in meta.modalities.items()}
    assert kinds == {
        "rgb": ("color", 3),
        "shade": ("image", 1),
        "texture": ("image", 1),
        "edge": ("image", 1),
        "depth": ("depth", 1),
        "normal": ("normal", 3),
    }
    assert meta.modalities["depth"].scale == 1 / 512
    assert meta.extra["domains"] == {
        "rgb": "rgb",
        "shade": "reshading",
        "texture": "edge_texture",
        "edge": "edge_occlusion",
        "depth": "depth_zbuffer",
        "normal": "normal",
    }
    assert read_split(out, "train") == FRAMES[:4] and read_split(out, "val") == FRAMES[4:]
    assert not (out / "label").exists()
    for frame, files in truth.items():

        def got(name, frame=frame):
            return read_image(out / name / f"{frame}.png")

        np.testing.assert_array_equal(got("rgb"), files["rgb"])
        np.testing.assert_array_equal(got("normal"), files["normal"])
        np.testing.assert_array_equal(got("shade"), files["reshading"][..., 0])
        depth = files["depth_zbuffer"]
        np.testing.assert_array_equal(got("depth"), np.where(depth == 65535, 0, depth))
        for name, domain, top in (
            ("texture", "edge_texture", 11355),
            ("edge", "edge_occlusion", 11584),
        ):
            v = files[domain].astype(np.int64)
            np.testing.assert_array_equal(got(name), np.minimum(v * 255 // top, 255))
        # the data set reader takes depth in 1/512 m to metres, holes stay 0
        metres = load_modality(out / "depth" / f"{frame}.png", "depth", meta.modalities["depth"])
        np.testing.assert_allclose(metres[0], np.where(depth == 65535, 0, depth) / 512)
    texture = read_image(out / "texture" / f"{FRAMES[0]}.png")
    assert texture[1, 0] == 255 and texture[1, 1] == 255
    assert read_image(out / "edge" / f"{FRAMES[0]}.png")[2, 2] == 254


def test_plain_id_lists_and_a_subset_of_modalities(tree, tmp_path):
    root, _ = tree
    train_list, val_list = write_lists(tmp_path, FRAMES[1:3], FRAMES[3:4], cen_style=False)
    out = tmp_path / "out"
    meta = prepare_taskonomy(
        root, out, train_list=train_list, val_list=val_list, modalities=["shade", "texture", "rgb"]
    )
    assert list(meta.modalities) == ["shade", "texture", "rgb"]
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "rgb",
        "shade",
        "splits",
        "texture",
    ]
    # only the listed frames are converted
    assert sorted(p.stem for p in (out / "rgb").iterdir()) == sorted(FRAMES[1:4])


def test_resize(tree, tmp_path):
    root, truth = tree
    frame = FRAMES[0]
    # a one-pixel checkerboard: shrinking by 2 without antialiasing would keep 0s or 255s
    checker = (np.indices((H, W)).sum(0) % 2 * 255).astype(np.uint8)
    write_png(domain_file(root, "rgb", frame), np.repeat(checker[..., None], 3, axis=2))
    out = tmp_path / "out"
    train_list, val_list = write_lists(tmp_path, FRAMES[:1], FRAMES[1:2])
    prepare_taskonomy(root, out, train_list=train_list, val_list=val_list, size=[3, 4])
    for name in ("rgb", "shade", "texture", "edge", "depth", "normal"):
        assert read_image(out / name / f"{frame}.png").shape[:2] == (3, 4)
    # depth by nearest neighbour: the pixel whose centre is nearest, (2i + 1, 2j + 1), so no
    # hole (0) is blended into a depth value
    depth = truth[frame]["depth_zbuffer"]
    np.testing.assert_array_equal(
        read_image(out / "depth" / f"{frame}.png"), np.where(depth == 65535, 0, depth)[1::2, 1::2]
    )
    # bilinear shrinking is antialiased: the checkerboard becomes mid grey away from the border
    rgb = read_image(out / "rgb" / f"{frame}.png")
    assert np.all(np.abs(rgb[1, 1:3].astype(int) - 127.5) <= 1)


def test_without_lists_every_frame_split_two_to_one(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "out"
    meta = prepare_taskonomy(root, out)
    train, val = read_split(out, "train"), read_split(out, "val")
    assert len(train) == 4 and len(val) == 2 and sorted(train + val) == sorted(FRAMES)
    assert "seed" in meta.extra["split"]
    again = tmp_path / "again"
    prepare_taskonomy(root, again)
    assert read_split(again, "val") == val  # fixed seed


def test_cli(tree, tmp_path, capsys):
    root, _ = tree
    train_list, val_list = write_lists(tmp_path, FRAMES[:2], FRAMES[2:3])
    out = tmp_path / "out"
    args = [
        "data",
        "prepare",
        "taskonomy",
        "--root",
        str(root),
        "--out",
        str(out),
        "--train-list",
        str(train_list),
        "--val-list",
        str(val_list),
        "--size",
        "4",
        "4",
    ]
    assert main(args) == 0
    assert read_image(out / "rgb" / f"{FRAMES[0]}.png").shape == (4, 4, 3)
    assert main(args) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def corrupt(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")


@pytest.mark.parametrize(
    "damage,match",
    [
        (
            lambda root: domain_file(root, "edge_texture", FRAMES[3]).unlink(),
            r"edge_texture/point_40_view_2_domain_edge_texture.png: file not found \(frame "
            r"point_40_view_2 of the train split\)",
        ),
        (
            lambda root: write_png(
                domain_file(root, "normal", FRAMES[2]), np.zeros((H, W + 1, 3), np.uint8)
            ),
            r"point_12_view_4_domain_normal.png: size \(6, 9\) differs from "
            r"point_12_view_4_domain_rgb.png's \(6, 8\)",
        ),
        (
            lambda root: corrupt(domain_file(root, "reshading", FRAMES[4])),
            r"point_7_view_10_domain_reshading.png: cannot read image",
        ),
        (
            lambda root: write_png(
                domain_file(root, "depth_zbuffer", FRAMES[1]), np.zeros((H, W), np.uint8)
            ),
            r"point_3_view_1_domain_depth_zbuffer.png: expected a 16-bit single-channel PNG, "
            r"got uint8",
        ),
        (
            lambda root: write_png(domain_file(root, "rgb", FRAMES[0]), np.zeros((H, W), np.uint8)),
            r"point_3_view_0_domain_rgb.png: expected an 8-bit image with 3 channel\(s\)",
        ),
        (
            lambda root: __import__("shutil").rmtree(root / "edge_occlusion"),
            r"edge_occlusion: Taskonomy domain folder not found",
        ),
    ],
    ids=["missing-file", "other-size", "unreadable", "8-bit-depth", "grey-rgb", "no-folder"],
)
def test_bad_input_names_the_file_and_writes_nothing(tree, tmp_path, damage, match):
    root, _ = tree
    train_list, val_list = write_lists(tmp_path, FRAMES[:4], FRAMES[4:])
    damage(root)
    with pytest.raises(FusescopeError, match=match) as err:
        prepare_taskonomy(root, tmp_path / "out", train_list=train_list, val_list=val_list)
    assert "\n" not in str(err.value)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "train,val,match",
    [
        (
            ["point_3_view_0", "point_99_view_1"],
            ["point_9_view_0"],
            r"point_99_view_1_domain_rgb.png: file not found \(frame point_99_view_1 of the "
            r"train split\)",
        ),
        (
            ["point_3_view_0"],
            ["point_9_view_0", "point_3_view_0"],
            r"val.txt: point_3_view_0 is also in the training list",
        ),
        (
            ["point_3_view_0", "rgb/point_3_view_0_domain_rgb.png"],
            ["point_9_view_0"],
            r"train.txt: line 2: point_3_view_0 is listed twice \(first on line 1\)",
        ),
        (
            ["point_3_view_0", "frame_12.png"],
            ["point_9_view_0"],
            r"train.txt: line 2: 'frame_12.png' names no Taskonomy frame",
        ),
    ],
    ids=["unknown-frame", "overlap", "twice", "bad-line"],
)
def test_bad_lists(tree, tmp_path, train, val, match):
    root, _ = tree
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(val) + "\n")
    with pytest.raises(FusescopeError, match=match):
        prepare_taskonomy(
            root, tmp_path / "out", train_list=tmp_path / "train.txt", val_list=tmp_path / "val.txt"
        )
    assert_nothing_written(tmp_path)


def test_bad_options(tree, tmp_path):
    root, _ = tree
    train_list, _ = write_lists(tmp_path, FRAMES[:2], FRAMES[2:])
    with pytest.raises(FusescopeError, match="both --train-list and --val-list"):
        prepare_taskonomy(root, tmp_path / "out", train_list=train_list)
    with pytest.raises(FusescopeError, match=r"unknown modalities \['albedo'\]"):
        prepare_taskonomy(root, tmp_path / "out", modalities=["rgb", "albedo"])
    with pytest.raises(FusescopeError, match="size must be two positive integers"):
        prepare_taskonomy(root, tmp_path / "out", size=[0, 4])
    with pytest.raises(FusescopeError, match="input folder not found"):
        prepare_taskonomy(tmp_path / "nowhere", tmp_path / "out")
    assert_nothing_written(tmp_path)
