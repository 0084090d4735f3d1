"""The training job's time budget covers the whole job: the epochs planned leave room for the
calibration and OOD passes that follow them (issue 18: HAM10000's job ran 20.1 min on a 15-min
epoch budget when those passes were left out)."""

from __future__ import annotations

from ml_code.training.checkpoints import Progress
from ml_code.training.loop import after_training_seconds, plan_after_epoch
from ml_code.training.options import validate_options


def _plan(reserve: float, elapsed: float, epoch_seconds: float = 120.0) -> tuple[bool, Progress]:
    opts = validate_options({"epochs": 12, "max_minutes": 10})
    progress = Progress(mean=[0.5] * 3, std=[0.25] * 3, planned_epochs=12, elapsed=elapsed)
    stop = plan_after_epoch(progress, opts, 1, [epoch_seconds], lambda *a: None, reserve)
    return stop, progress


def test_the_epochs_planned_leave_the_reserve_free() -> None:
    # 600 s budget, 120 s gone after epoch 1, 120 s an epoch: 4 more epochs without a reserve...
    assert _plan(0.0, 120.0)[1].planned_epochs == 5
    # ...2 more when 240 s must stay free for what follows the last epoch
    stop, progress = _plan(240.0, 120.0)
    assert (stop, progress.planned_epochs, progress.budget_limited) == (False, 3, True)
    # time already spent before the epochs (the descriptor model) counts as well
    assert _plan(240.0, 120.0 + 200.0)[1].planned_epochs == 1


def test_a_reserve_past_the_budget_stops_after_this_epoch() -> None:
    stop, progress = _plan(500.0, 120.0)
    assert stop and progress.stop_reason == "time budget" and progress.planned_epochs == 1


def test_the_reserve_scales_with_the_runs_own_speed_and_views() -> None:
    one = after_training_seconds(10.0, 1000, 8, 5000)
    assert after_training_seconds(20.0, 1000, 8, 5000) - 15.0 == 2 * (one - 15.0)  # a machine half as fast
    assert after_training_seconds(10.0, 1000, 1, 5000) < one  # fewer served views: a shorter calibration pass
    # HAM10000 at 96 px on two cores (the README's real-data demo): val pass ~15 s for 1,645 images,
    # 8 views, 6,909 + 1,645 OOD images; calibration + OOD took 212 s there
    assert 212 <= after_training_seconds(15.0, 1645, 8, 6909 + 1645) <= 1.3 * 212 + 15
