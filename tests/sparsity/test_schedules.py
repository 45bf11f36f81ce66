"""The threshold schedule against hand-computed values (docs/method.md §4 worked example)."""

import pytest

from bsrnn.sparsity.schedules import NarangSchedule, eq1_theta


def worked():
    return NarangSchedule.from_heuristic(0.1, total_itr=25_000, itr_per_epoch=1_000, block=1,
                                         start_itr=1_000, ramp_itr=5_000, end_itr=10_000)


def test_eq1_worked_example():
    assert eq1_theta(0.1, 1_000, 5_000, 10_000, 100) == pytest.approx(20 / 23_000)
    s = worked()
    assert s.start_slope == pytest.approx(8.6957e-4, rel=1e-4)
    assert s.ramp_slope == pytest.approx(1.5 * 8.6957e-4, rel=1e-4)
    assert s.epsilon(9_900) == pytest.approx(0.098717, rel=1e-4)  # ≈ q at the last update
    block = NarangSchedule.from_heuristic(0.1, total_itr=25_000, itr_per_epoch=1_000, block=(4, 4),
                                          start_itr=1_000, ramp_itr=5_000, end_itr=10_000)
    assert block.start_slope == pytest.approx(1.7391e-3, rel=1e-4)


def test_threshold_at_hand_computed_steps():
    s = NarangSchedule(start_itr=100, ramp_itr=300, end_itr=500, start_slope=0.01, ramp_slope=0.02, freq=50)
    assert s.threshold(0) == 0.0 and s.threshold(149) == 0.0  # before the first update (150)
    assert not s.is_update(100) and s.is_update(150) and not s.is_update(175)
    assert s.threshold(150) == pytest.approx(0.01 * 51 / 50)  # first slope
    assert s.threshold(199) == pytest.approx(0.01 * 51 / 50)  # held between updates
    assert s.threshold(250) == pytest.approx(0.01 * 151 / 50)
    assert s.threshold(350) == pytest.approx((0.01 * 201 + 0.02 * 51) / 50)  # after the ramp
    last = (0.01 * 201 + 0.02 * 151) / 50
    assert s.last_update() == 450 and s.threshold(450) == pytest.approx(last)
    assert s.threshold(10_000) == pytest.approx(last) and s.frozen(500) and not s.is_update(500)


def test_heuristic_fractions_for_weights_and_blocks():
    w = NarangSchedule.from_heuristic(0.1, total_itr=10_000, itr_per_epoch=400, block=1)
    b = NarangSchedule.from_heuristic(0.1, total_itr=10_000, itr_per_epoch=400, block=4)
    assert (w.start_itr, w.ramp_itr, w.end_itr) == (400, 2_500, 5_000)
    assert (b.start_itr, b.ramp_itr, b.end_itr) == (400, 2_000, 4_000)
    f = NarangSchedule.from_fractions(total_itr=1_000, start=0.1, ramp=0.2, end=600)
    assert (f.start_itr, f.ramp_itr, f.end_itr) == (100, 200, 600)


@pytest.mark.parametrize("kw", [dict(start_itr=5, ramp_itr=5, end_itr=9), dict(start_itr=0, ramp_itr=5, end_itr=4),
                                dict(start_itr=0, ramp_itr=5, end_itr=9, freq=0),
                                dict(start_itr=0, ramp_itr=5, end_itr=9, start_slope=-1)])
def test_invalid_schedules_are_clear_errors(kw):
    args = dict(start_slope=0.1, ramp_slope=0.2) | kw
    with pytest.raises(ValueError, match="schedule"):
        NarangSchedule(**args)
