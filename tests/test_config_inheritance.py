"""Config inheritance: `_base_` files merged in order, then the file, then the command line;
bad bases are one-line errors naming the file; every shipped config resolves over its bases."""

from pathlib import Path

import pytest

from fusescope.config import load_config, to_container
from fusescope.errors import FusescopeError

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bases_merge_in_order_then_the_file_then_overrides(tmp_path):
    write(tmp_path / "b/a.yaml", "train: {lr: 0.1, max_steps: 5, batch_size: 3}\nmodel: {x: 1}\n")
    write(tmp_path / "b/b.yaml", "_base_: a.yaml\ntrain: {lr: 0.2}\nmodel: {y: 2}\n")
    write(tmp_path / "c.yaml", "train: {max_steps: 7}\nmodel: {name: cen, x: 3}\n")
    child = write(
        tmp_path / "child.yaml",
        "_base_: [b/b.yaml, c.yaml]\ndata: {modalities: [rgb]}\ntrain: {batch_size: 4}\n",
    )
    cfg = load_config(child, ["train.batch_size=6"])
    assert cfg.train.lr == 0.2  # b over its base a
    assert cfg.train.max_steps == 7  # c, listed after b
    assert cfg.train.batch_size == 6  # the command line over the file over the bases
    assert to_container(cfg.model) == {"name": "cen", "x": 3, "y": 2}  # mappings merge by key
    assert list(cfg.data.modalities) == ["rgb"]
    assert "_base_" not in to_container(cfg)
    # without the override the file wins over its bases
    assert load_config(child).train.batch_size == 4


def test_a_list_in_a_base_is_replaced_not_appended(tmp_path):
    write(tmp_path / "base.yaml", "data: {modalities: [rgb, depth, hha]}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ndata: {modalities: [depth]}\n")
    assert list(load_config(child).data.modalities) == ["depth"]


def test_a_cycle_is_one_line_naming_the_files(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(
        FusescopeError, match=r"a\.yaml: _base_ cycle: .*a\.yaml -> .*b\.yaml"
    ) as err:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(err.value)
    write(tmp_path / "self.yaml", "_base_: self.yaml\n")
    with pytest.raises(FusescopeError, match=r"self\.yaml: _base_ cycle"):
        load_config(tmp_path / "self.yaml")


def test_a_diamond_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", "train: {lr: 0.5}\n")
    write(tmp_path / "left.yaml", "_base_: root.yaml\ntrain: {max_steps: 3}\n")
    write(tmp_path / "right.yaml", "_base_: root.yaml\ntrain: {batch_size: 2}\n")
    child = write(tmp_path / "child.yaml", "_base_: [left.yaml, right.yaml]\n")
    cfg = load_config(child)
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.batch_size) == (0.5, 3, 2)


def test_a_missing_base_names_the_file_that_asks_for_it(tmp_path):
    child = write(tmp_path / "child.yaml", "_base_: [nope.yaml]\n")
    with pytest.raises(FusescopeError, match=r"child\.yaml: _base_ 'nope\.yaml': file not found"):
        load_config(child)


@pytest.mark.parametrize("value", ["3", "[a.yaml, 4]", "{x: a.yaml}", "''"])
def test_a_base_that_is_not_a_path_is_an_error(tmp_path, value):
    child = write(tmp_path / "child.yaml", f"_base_: {value}\n")
    with pytest.raises(FusescopeError, match=r"child\.yaml: _base_ must be a file path"):
        load_config(child)


def test_an_unknown_key_names_the_file_it_came_from(tmp_path):
    write(tmp_path / "base.yaml", "train: {max_stepz: 3}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {lr: 0.1}\n")
    with pytest.raises(
        FusescopeError, match=r"base\.yaml: unknown config key train\.max_stepz; did"
    ):
        load_config(child)
    write(tmp_path / "good.yaml", "train: {lr: 0.1}\n")
    bad_child = write(tmp_path / "bad_child.yaml", "_base_: good.yaml\ndata: {rot: x}\n")
    with pytest.raises(FusescopeError, match=r"bad_child\.yaml: unknown config key data\.rot"):
        load_config(bad_child)


def test_the_run_folder_keeps_the_resolved_config(tmp_path, tiny_data):
    from omegaconf import OmegaConf

    from fusescope.engine.train import train

    write(
        tmp_path / "base.yaml",
        "model: {name: early_concat, backbone: resnet18}\n"
        "train: {max_steps: 1, batch_size: 2, lr: 0.003, progress: false}\n",
    )
    child = write(tmp_path / "child.yaml", f"_base_: base.yaml\ndata: {{root: {tiny_data}}}\n")
    overrides = ["data.crop_size=[32,40]"]
    run = train(load_config(child, overrides), tmp_path / "run")
    saved = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    assert "_base_" not in saved
    assert saved["train"]["lr"] == 0.003 and saved["train"]["max_steps"] == 1
    assert saved == to_container(load_config(child, overrides))


SHIPPED = sorted(
    p.relative_to(ROOT).as_posix()
    for p in (ROOT / "configs").glob("*/*.yaml")
    if p.parent.name != "_base_"
)


def test_nyudv2_and_sunrgbd_cen_are_a_few_lines_over_one_base():
    for dataset in ("nyudv2", "sunrgbd"):
        lines = [
            ln
            for ln in (ROOT / "configs" / dataset / "cen.yaml").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")
        ]
        assert lines[0] == "_base_: ../_base_/cen_paper.yaml" and len(lines) <= 4
    a = load_config(ROOT / "configs/nyudv2/cen.yaml")
    b = load_config(ROOT / "configs/sunrgbd/cen.yaml")
    assert to_container(a.model) == to_container(b.model)
    assert a.data.root != b.data.root


@pytest.mark.parametrize("config", SHIPPED)
def test_every_shipped_config_resolves(config):
    cfg = load_config(ROOT / config)
    assert cfg.model.name  # every config names its method
