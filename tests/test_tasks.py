"""The task lookup: a run's `task` key picks the module the engine drives."""

import pytest

from fusescope.config import load_config
from fusescope.errors import FusescopeError
from fusescope.tasks import TASKS, Task, known_tasks, register_task, task_of


def test_unknown_task_is_a_config_error_naming_the_known_ones():
    with pytest.raises(
        FusescopeError,
        match=r"^task='detection' unknown; known: classification, segmentation, translation$",
    ):
        load_config(None, ["task=detection"])
    with pytest.raises(FusescopeError, match=r"task='\.\./x' unknown; known: classification"):
        task_of("../x")


def test_every_task_module_registers_itself():
    assert known_tasks() == ["classification", "segmentation", "translation"]
    for name in known_tasks():
        task = task_of(name)
        assert task.name == name and TASKS.get(name) is task


def test_a_task_registered_elsewhere_is_found_by_its_name():
    class Plain(Task):
        name = "plain_test_task"

    task = register_task(Plain())
    try:
        assert task_of("plain_test_task") is task
        assert "plain_test_task" in known_tasks()
    finally:
        del TASKS._builders["plain_test_task"]


def test_the_default_task_is_segmentation_with_its_registry():
    cfg = load_config(None, [])
    task = task_of(cfg)
    assert task.name == cfg.task == "segmentation"
    assert task is task_of("segmentation")  # one instance per task
    assert "cen" in task.methods


def test_a_task_refuses_eval_options_it_has_no_meaning_for():
    class Plain(Task):
        name = "plain"

    Plain().check_eval_options(tta=None, window=None)  # nothing given: nothing to refuse
    with pytest.raises(FusescopeError, match=r"--tta, --window are not supported for task 'plain'"):
        Plain().check_eval_options(tta="flip", window=[8, 8], drop=None)
    task_of("segmentation").check_eval_options(tta="flip", window=[8, 8], drop=["rgb"])
