"""Pruning schedules: shapes, event placement, and the end-of-pruning share of training."""
import math

import numpy as np
import pytest

from autoprune.errors import AutopruneError
from autoprune.train.schedules import PruningSchedule, list_schedules

SHAPES = ["constant", "linear", "cosine", "exponential", "cubic"]


def test_registry_has_every_shape():
    assert set(SHAPES) <= set(list_schedules())


@pytest.mark.parametrize("shape", SHAPES)
def test_fraction_is_monotone_from_zero_to_one(shape):
    s = PruningSchedule(shape, final=0.3, start=10, end=90, frequency=10)
    assert s.events == [20, 30, 40, 50, 60, 70, 80, 90]
    fr = [s.fraction(t) for t in range(0, 120)]
    assert fr[:20] == [0.0] * 20  # nothing before the first event (t0 itself is Zhu & Gupta's s_i)
    assert all(b >= a for a, b in zip(fr, fr[1:]))
    assert fr[90] == pytest.approx(1.0) and fr[119] == pytest.approx(1.0)
    assert s.target(90) == pytest.approx(0.3) and s.target(0) == 1.0
    # piecewise constant between events
    assert s.fraction(21) == s.fraction(29) == s.fraction(20)


def test_cubic_matches_zhu_and_gupta():
    t0, dt, n = 5, 4, 6
    s = PruningSchedule("cubic", final=0.4, start=t0, end=t0 + n * dt, frequency=dt)
    s_i, s_f = 0.0, 0.6  # sparsity in MACs
    for t in range(t0, t0 + n * dt + 1, dt):
        zhu = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert 1 - s.target(t) == pytest.approx(zhu)


def test_constant_removes_the_same_share_of_the_current_model_each_time():
    s = PruningSchedule("constant", final=0.25, start=0, end=40, frequency=10)
    kept = [1.0] + [s.target(e) for e in s.events]
    ratios = np.array(kept[1:]) / np.array(kept[:-1])
    assert np.allclose(ratios, 0.25 ** (1 / 4))


def test_linear_equal_steps_cosine_symmetric_exponential_front_loaded():
    lin = PruningSchedule("linear", 0.5, 0, 100, 10)
    steps = np.diff([0.0] + [lin.fraction(e) for e in lin.events])
    assert np.allclose(steps, 0.1)
    cos = PruningSchedule("cosine", 0.5, 0, 100, 10)
    assert cos.fraction(50) == pytest.approx(0.5)
    assert cos.fraction(10) == pytest.approx(1 - cos.fraction(90))
    exp = PruningSchedule("exponential", 0.5, 0, 100, 10)
    cub = PruningSchedule("cubic", 0.5, 0, 100, 10)
    assert exp.fraction(30) > lin.fraction(30) and cub.fraction(30) > lin.fraction(30)
    assert exp.fraction(10) == pytest.approx((1 - math.exp(-0.5)) / (1 - math.exp(-5)))


def test_over_training_leaves_the_final_share_at_final_width():
    s = PruningSchedule.over_training("cubic", 0.5, total_steps=400, start=0.1, end=0.75, every=20)
    assert s.start == 40 and s.end == 300 and s.events[-1] == 300
    assert all(b - a == 20 for a, b in zip(s.events, s.events[1:]))
    # end = 1.0 still prunes inside training
    assert PruningSchedule.over_training("linear", 0.5, 100, 0.0, 1.0, 10).end == 99


def test_uneven_frequency_still_ends_exactly_at_end():
    s = PruningSchedule("linear", 0.5, start=0, end=100, frequency=30)
    assert s.events[-1] == 100 and len(s.events) == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(shape="quadratic", final=0.5, start=0, end=10, frequency=1), "unknown pruning schedule"),
    (dict(shape="cubic", final=0.0, start=0, end=10, frequency=1), "outside"),
    (dict(shape="cubic", final=0.5, start=10, end=10, frequency=1), "start before"),
    (dict(shape="cubic", final=0.5, start=0, end=10, frequency=0), "frequency"),
])
def test_bad_schedules_raise(kwargs, match):
    with pytest.raises(AutopruneError, match=match):
        PruningSchedule(**kwargs)


def test_over_training_rejects_bad_ranges():
    with pytest.raises(AutopruneError, match="start"):
        PruningSchedule.over_training("cubic", 0.5, 100, start=0.8, end=0.5)
    with pytest.raises(AutopruneError, match="too short"):
        PruningSchedule.over_training("cubic", 0.5, 2, start=0.0, end=0.2)


def test_a_schedule_started_late_keeps_its_end_spacing_and_final():
    """A shape decided at step 40 (from scratch): the same cuts, compressed into (40, end]."""
    s = PruningSchedule("cubic", 0.3, 0, 100, 10)
    late = s.starting_at(40)
    assert late.events == [50, 60, 70, 80, 90, 100] and late.end == s.end and late.final == s.final
    assert late.target(40) == 1.0 and late.target(100) == pytest.approx(0.3)
    assert s.starting_at(0) is s
    with pytest.raises(AutopruneError, match="decide earlier"):
        s.starting_at(100)
