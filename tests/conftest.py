"""Shared test setup: one thread per test process (the suite runs in parallel on 2 cores), and
fixed seeds so every test is repeatable."""

import random

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
