"""The shared schedules against values worked by hand."""

import math

import pytest

from replearn.schedules import fixmatch_cosine, linear_ramp, sigmoid_ramp, warmup_cosine


def test_warmup_cosine_hand_values():
    # 10 warm-up steps of 100: (step + 1) / 10, then 0.5 (1 + cos(pi t)) over the remaining 90
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(150, 100, 10) == pytest.approx(0.0, abs=1e-12)  # clipped past the end
    assert warmup_cosine(0, 100, 0) == pytest.approx(1.0)  # no warm-up


def test_fixmatch_cosine_hand_values():
    assert fixmatch_cosine(0, 1000) == 1.0
    assert fixmatch_cosine(1000, 1000) == pytest.approx(math.cos(7 * math.pi / 16))  # 0.1951
    assert fixmatch_cosine(1000, 1000) == pytest.approx(0.19509, abs=1e-5)
    assert fixmatch_cosine(500, 1000) == pytest.approx(math.cos(7 * math.pi / 32))
    assert fixmatch_cosine(2000, 1000) == fixmatch_cosine(1000, 1000)


def test_sigmoid_ramp_hand_values():
    assert sigmoid_ramp(0.0, 0.4) == pytest.approx(math.exp(-5.0))
    assert sigmoid_ramp(0.2, 0.4) == pytest.approx(math.exp(-1.25))  # t = 1/2: exp(-5/4)
    assert sigmoid_ramp(0.4, 0.4) == sigmoid_ramp(0.9, 0.4) == sigmoid_ramp(0.1, 0.0) == 1.0


def test_linear_ramp_hand_values():
    assert linear_ramp(0.0, 0.4) == 0.0
    assert linear_ramp(0.1, 0.4) == pytest.approx(0.25)
    assert linear_ramp(0.4, 0.4) == linear_ramp(0.8, 0.4) == linear_ramp(0.1, 0.0) == 1.0
