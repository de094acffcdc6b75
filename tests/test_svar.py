"""Semantic variance (eq. 4-6) on hand-computed cases for each concept state."""

import math

import numpy as np
import pytest

from fusescope.dissect import semantic_variance
from fusescope.dissect.svar import concept_variance

OLD = [0.5, 0.0, 0.4, 0.6, 0.0]
NEW = [0.0, 0.3, 0.8, 0.3, 0.0]
FREQ = [0.1, 0.2, 0.25, 0.5, 0.05]
# mean old Set IoU = (0.5 + 0 + 0.4 + 0.6 + 0) / 5 = 0.3
EXPECTED = {
    0: ("vanished", 2 * (0.0 - 0.5) / 0.3 / 0.1),  # eq. 5, lambda = 2
    1: ("new", 2 * (0.3 - 0.0) / 0.3 / 0.2),
    2: ("increased", (0.8 - 0.4) / 0.8 / 0.25),  # eq. 4
    3: ("decreased", (0.3 - 0.6) / 0.6 / 0.5),
    4: ("absent", 0.0),
}


def test_each_state_hand_computed():
    parts = concept_variance(NEW, OLD, FREQ)
    for p in parts:
        state, contribution = EXPECTED[p.index]
        assert p.state == state
        assert p.contribution == pytest.approx(contribution)
    total = sum(c for _, c in EXPECTED.values())
    assert total == pytest.approx(-100 / 3 + 10 + 2 - 1)
    assert semantic_variance(NEW, OLD, FREQ) == pytest.approx(total)


def test_lambda_scales_only_new_and_vanished():
    base = semantic_variance(NEW, OLD, FREQ, lam=2.0)
    doubled = semantic_variance(NEW, OLD, FREQ, lam=4.0)
    new_vanished = EXPECTED[0][1] + EXPECTED[1][1]
    assert doubled - base == pytest.approx(new_vanished)


def test_sign_flips_for_concepts_present_in_both():
    fwd = concept_variance(NEW, OLD, FREQ)
    back = concept_variance(OLD, NEW, FREQ)
    for j in (2, 3):
        assert back[j].contribution == pytest.approx(-fwd[j].contribution)
    assert back[0].state == "new" and back[1].state == "vanished"
    both = [0.2, 0.5, 0.9]
    other = [0.4, 0.1, 0.9]
    freq = [0.3, 0.3, 0.4]
    assert semantic_variance(both, other, freq) == pytest.approx(
        -semantic_variance(other, both, freq)
    )


def test_unscored_concepts_and_edge_cases():
    # NaN IoU (concept not in the probe set) or zero frequency: left out, no NaN in the result
    value = semantic_variance([0.5, np.nan, 0.2], [0.4, 0.3, 0.1], [0.5, 0.0, 0.5])
    assert math.isfinite(value)
    parts = concept_variance([0.5, np.nan, 0.2], [0.4, 0.3, 0.1], [0.5, 0.0, 0.5])
    assert parts[1].state == "absent"
    assert value == pytest.approx((0.1 / 0.5) / 0.5 + (0.1 / 0.2) / 0.5)
    # the eq. 5 baseline is the mean over scored concepts only: mean(0.4, 0.1) = 0.25
    value = semantic_variance([0.5, np.nan, 0.0], [0.4, 0.3, 0.1], [0.5, 0.0, 0.5])
    assert value == pytest.approx((0.1 / 0.5) / 0.5 + 2 * (0.0 - 0.1) / 0.25 / 0.5)
    # identical features: zero
    assert semantic_variance(OLD, OLD, FREQ) == 0.0
    # a threshold turns small IoUs into absences
    assert concept_variance([0.05], [0.5], [1.0], threshold=0.1)[0].state == "vanished"
    with pytest.raises(ValueError, match="shapes"):
        semantic_variance([0.1, 0.2], [0.1], [0.5, 0.5])
