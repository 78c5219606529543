"""Tests of schedule files, replay, and counterexample shrinking (schedule.py, shrink.py)."""

import json

import pytest
from toy_models import counter, lock_order, stale_cache

from vtdsim.checker.explore import explore
from vtdsim.checker.schedule import (
    Schedule,
    ScheduleMismatch,
    load,
    replay,
    run_schedule,
    save,
)
from vtdsim.checker.shrink import shrink
from vtdsim.errors import BadInput


def _schedule(model, strategy="dpor", **kw):
    result = explore(model, strategy, **kw)
    return Schedule.of(model, result.counterexample, result.bounds)


def test_saved_schedule_round_trips_and_replays_the_violation(tmp_path):
    model = stale_cache()
    schedule = _schedule(model)
    path = tmp_path / "cex.json"
    save(schedule, path)
    data = json.loads(path.read_text())
    assert data["format"] == "vtdsim-schedule" and data["version"] == 1
    assert data["expect"]["prop"] == "dma_after_free"
    loaded = load(path)
    assert loaded == schedule
    result = replay(stale_cache(), loaded)
    assert result.first_hit["dma_after_free"] == len(loaded.actors)


def test_deadlock_schedule_replays():
    model = lock_order()
    assert "deadlock_free" in replay(model, _schedule(model)).first_hit


def test_replay_detects_a_changed_model_by_fingerprint():
    schedule = _schedule(stale_cache())
    with pytest.raises(ScheduleMismatch, match="fingerprint"):
        replay(stale_cache(buggy=False), schedule)


def test_replay_names_the_first_step_that_diverged():
    schedule = _schedule(lock_order())
    changed = Schedule("lock-order", lock_order().fingerprint(), ("T0", "T1", "T1"), schedule.prop)
    with pytest.raises(ScheduleMismatch, match=r"step 3: actor 'T1' is not enabled"):
        replay(lock_order(), changed)


def test_replay_fails_when_the_property_is_no_longer_violated():
    model = counter()
    fine = Schedule(model.name, model.fingerprint(), ("T0", "T0", "T1", "T1"), "no_lost_update")
    with pytest.raises(ScheduleMismatch, match="no_lost_update was not violated"):
        replay(model, fine)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"format": "vtdsim-schedule", "version": 9}',
        '{"format": "vtdsim-schedule", "version": 1}',
    ],
)
def test_malformed_schedule_files_are_bad_input(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(BadInput, match="bad.json"):
        load(path)


def test_shrink_drops_hardware_steps_and_keeps_the_violation():
    model = stale_cache(fills=4)
    long = _schedule(model, "random", seed=5, max_executions=2000)
    short = shrink(model, long)
    assert len(short.actors) < len(long.actors)
    assert len(short.actors) == 5
    assert "dma_after_free" in replay(model, short).first_hit
    assert shrink(model, long) == short  # deterministic


def test_shrink_reduces_preemptions():
    model = counter(threads=3)
    messy = Schedule(
        model.name, model.fingerprint(), ("T0", "T1", "T2", "T0", "T1", "T2"), "no_lost_update"
    )
    before = run_schedule(model, messy.actors).preemptions()
    short = shrink(model, messy)
    after = run_schedule(model, short.actors).preemptions()
    assert after < before
    assert "no_lost_update" in replay(model, short).first_hit


def test_shrink_rejects_a_schedule_without_the_violation():
    model = counter()
    fine = Schedule(model.name, model.fingerprint(), ("T0", "T0", "T1", "T1"), "no_lost_update")
    with pytest.raises(ScheduleMismatch):
        shrink(model, fine)
