"""`fusescope list`: everything it prints comes from the registries and the configs folder."""

from pathlib import Path

import pytest

from fusescope.cli import main
from fusescope.tasks import task_of
from fusescope.tasks.base import known_tasks

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def listed(capsys, *argv):
    capsys.readouterr()
    assert main(["list", *argv]) == 0
    return capsys.readouterr().out


def test_methods_are_every_registered_builder_per_task(capsys):
    out = listed(capsys, "methods")
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line[0].isspace()}
    for task in known_tasks():
        for name in task_of(task).methods.names():
            assert name in rows and task in rows[name], (task, name)
    # the default backbone comes from the builder's signature
    assert "segmentation (resnet18)" in rows["cen"]
    only = listed(capsys, "methods", "--task", "translation")
    names = {line.split()[0] for line in only.splitlines() if line and not line[0].isspace()}
    assert set(task_of("translation").methods.names()) <= names
    assert "sagate" not in names  # a segmentation-only method


def test_a_newly_registered_method_is_listed_with_its_paper_and_options(capsys, monkeypatch):
    registry = task_of("segmentation").methods

    def dummy(modalities, in_channels, num_classes, backbone="resnet34", depth: int = 3):
        """A method registered by this test. Second sentence not shown."""

    dummy.paper = "Someone et al., A Venue 2031"
    monkeypatch.setitem(registry._builders, "zz_dummy", dummy)
    out = listed(capsys, "methods", "--options")
    block = out[out.index("zz_dummy") :].splitlines()
    assert block[0].split() == ["zz_dummy", "segmentation", "(resnet34)"]
    assert block[1].strip() == "Someone et al., A Venue 2031"
    assert block[2].strip() == "options: backbone='resnet34', depth=3"
    del dummy.paper  # without a paper: the docstring's first sentence
    out = listed(capsys, "methods")
    assert out[out.index("zz_dummy") :].splitlines()[1].strip() == (
        "A method registered by this test"
    )


def test_configs_backbones_and_tasks(capsys):
    from fusescope.config import load_config
    from fusescope.models import backbones

    out = listed(capsys, "configs")
    for path in CONFIGS.rglob("*.yaml"):
        listed_line = [
            x for x in out.splitlines() if x.startswith(str(path.relative_to(CONFIGS.parent)))
        ]
        if "_base_" in path.parts:  # the fragments configs inherit from are not listed
            assert listed_line == []
            continue
        # the method as the config resolves it (its `_base_` files included)
        assert str(load_config(path).model.name) in listed_line[0].split()
    seg = listed(capsys, "configs", "--task", "classification")
    paths = [line.split()[0] for line in seg.splitlines() if line.startswith("configs/")]
    assert "configs/classification/posters_mango.yaml" in paths
    assert all(p.startswith("configs/classification/") for p in paths)
    out = listed(capsys, "backbones")
    assert all(name in out.split() for name in backbones.SUPPORTED)
    out = listed(capsys, "tasks")
    for name in known_tasks():
        assert f"validation metric {task_of(name).primary_metric}" in out


def test_bad_arguments_are_one_line(capsys):
    assert main(["list", "methods", "--task", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusescope: error: --task 'nope' unknown; known: ") and "\n" not in err
    with pytest.raises(SystemExit):
        main(["list", "plugins"])
