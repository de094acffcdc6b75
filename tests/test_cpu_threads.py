"""A fixed torch CPU thread count makes training bitwise repeatable whatever the machine's own
count: the demo's table (issue 26) depends on it, and on nothing else that varies between runs
on one machine."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli_train, write_folder_dataset
from fusescope.engine.device import cpu_threads
from fusescope.errors import FusescopeError


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cpu_threads_sets_the_count_inside_and_restores_it_after(restore_threads):
    torch.set_num_threads(1)
    with cpu_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1
    with pytest.raises(KeyError), cpu_threads(2):
        raise KeyError("inside")
    assert torch.get_num_threads() == 1  # restored after an error too
    with cpu_threads(None):
        assert torch.get_num_threads() == 1  # None: left as it is


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_cpu_threads_refuses_a_count_that_is_not_a_positive_integer(bad, restore_threads):
    torch.set_num_threads(1)
    with pytest.raises(FusescopeError, match="CPU threads must be a positive integer"):
        with cpu_threads(bad):
            pass
    assert torch.get_num_threads() == 1


def _train(tmp_path, name, data, ambient: int, fixed: int | None) -> dict:
    """The weights a short training reaches on a machine whose torch uses `ambient` threads."""
    torch.set_num_threads(ambient)
    run = tmp_path / name
    with cpu_threads(fixed):
        assert cli_train(run, data, "data.crop_size=[48,64]", "train.max_steps=2") == 0
    assert json.loads((run / "run.json").read_text())["torch_threads"] == (fixed or ambient)
    return load_file(run / "model.safetensors")


@pytest.mark.slow
def test_fixed_threads_give_the_same_weights_whatever_the_machines_count(tmp_path, restore_threads):
    """Two trainings on machines with 1 and 2 cores' worth of threads give the same bytes once
    the count is fixed; left to the machine, the same two trainings differ (the control that
    makes the first assertion mean something: the thread count alone moves the weights)."""
    data = write_folder_dataset(tmp_path / "data", size=(48, 64))
    one = _train(tmp_path, "fixed_on_1", data, ambient=1, fixed=2)
    two = _train(tmp_path, "fixed_on_2", data, ambient=2, fixed=2)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one), [
        k for k in one if not torch.equal(one[k], two[k])
    ]
    unfixed = _train(tmp_path, "own_count_1", data, ambient=1, fixed=None)
    assert not all(torch.equal(one[k], unfixed[k]) for k in one)
