"""Tests of source-set DPOR with sleep sets (dpor.py): soundness against plain DFS, blocking."""

import pytest
from toy_models import counter, independent, lock_order, message_passing, random_program

from vtdsim.checker.explore import explore


def _final_states(model, strategy):
    states = set()
    result = explore(model, strategy, observe=lambda w: states.add(w.snapshot()))
    assert result.exhaustive
    return states, result


@pytest.mark.parametrize("seed", range(60))
def test_dpor_and_bfs_reach_every_final_state_dfs_reaches(seed):
    """Equivalent executions end in the same state, so a sound reduction loses no final
    state: random programs with a lock, a flag wait and a hardware actor."""
    model = random_program(seed, actors=2, length=3)
    dfs_states, dfs = _final_states(model, "dfs")
    dpor_states, dpor = _final_states(model, "dpor")
    bfs_states, _ = _final_states(model, "bfs")
    assert dpor_states == dfs_states == bfs_states
    assert dpor.verdicts() == dfs.verdicts()
    assert dpor.executions <= dfs.executions


def test_lock_released_before_a_blocked_acquire_is_reordered():
    """Regression: a hardware actor, a lock and a thread that blocks forever (seed 85); the
    race release -> acquire is not reversible, the acquire -> acquire one is."""
    model = random_program(85, actors=3, length=2)
    assert _final_states(model, "dpor")[0] == _final_states(model, "dfs")[0]


def test_deadlock_is_found_through_the_pending_acquires():
    result = explore(lock_order(), "dpor")
    assert result.violated and result.executions < explore(lock_order(), "dfs").executions


def test_waits_are_explored_soundly():
    for buggy in (False, True):
        model = message_passing(buggy)
        assert _final_states(model, "dpor")[0] == _final_states(model, "dfs")[0]


def test_counter_final_states_and_sleep_sets():
    states, result = _final_states(counter(threads=3), "dpor")
    assert {s[0] for s in states} == {s[0] for s in _final_states(counter(threads=3), "dfs")[0]}
    assert result.executions < 90


def test_one_execution_per_trace_of_independent_writers():
    _, result = _final_states(independent(5, 2), "dpor")
    assert result.executions == 1 and result.sleep_blocked == 0
