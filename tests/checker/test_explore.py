"""Tests of the exploration strategies on the toy worlds (explore.py)."""

import pytest
from toy_models import counter, independent, lock_order, message_passing, stale_cache

from vtdsim.checker.explore import HOLDS, NOT_REACHED, VIOLATED, explore
from vtdsim.checker.world import DEADLOCK
from vtdsim.errors import BadInput

MODELS = {
    "counter": counter,
    "counter3": lambda: counter(threads=3),
    "counter+lock": lambda: counter(locked=True),
    "lock-order": lock_order,
    "mp": message_passing,
    "mp-buggy": lambda: message_passing(buggy=True),
    "stale-cache": lambda: stale_cache(buggy=False),
    "stale-cache-buggy": stale_cache,
    "stale-cache-2fills": lambda: stale_cache(fills=2),
    "independent": lambda: independent(3, 2),
}
EXHAUSTIVE = ("dfs", "dpor", "bfs")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exhaustive_strategies_agree_on_every_verdict(name):
    model = MODELS[name]()
    results = {s: explore(model, s) for s in EXHAUSTIVE}
    assert all(r.exhaustive for r in results.values())
    verdicts = {s: r.verdicts() for s, r in results.items()}
    assert verdicts["dpor"] == verdicts["dfs"] == verdicts["bfs"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_preemption_bounding_agrees_when_exhaustive_and_finds_the_bugs(name):
    model = MODELS[name]()
    full = explore(model, "dfs").verdicts()
    bounded = explore(model, "preemption")
    found = {p for p, v in bounded.verdicts().items() if v == VIOLATED}
    assert found <= {p for p, v in full.items() if v == VIOLATED}
    assert bool(found) == (VIOLATED in full.values())
    if bounded.exhaustive:
        assert bounded.verdicts() == full


def test_lost_update_found_and_lock_fixes_it():
    assert explore(counter(), "dpor").verdicts()["no_lost_update"] == VIOLATED
    fixed = explore(counter(locked=True), "dpor")
    assert fixed.verdicts() == {"no_lost_update": HOLDS, DEADLOCK: HOLDS}


def test_lock_order_deadlock_is_found_as_a_deadlock():
    result = explore(lock_order(), "dpor")
    cex = result.properties[DEADLOCK].counterexample
    assert result.verdicts() == {DEADLOCK: VIOLATED}
    assert cex.schedule == ("T0", "T1")
    assert "blocked: T0, T1" in cex.message


def test_stale_read_needs_the_fill_between_flush_and_clear():
    result = explore(stale_cache(), "dpor")
    cex = result.properties["dma_after_free"].counterexample
    texts = [r.text for r in cex.records]
    assert texts.index("flush cache") < texts.index("fill cache from PTE") < texts.index("pte = 0")
    assert explore(stale_cache(buggy=False), "dpor").verdicts()["dma_after_free"] == HOLDS


def test_dpor_explores_one_execution_of_independent_actors_where_dfs_explores_n_factorial():
    assert explore(independent(4, 1), "dfs").executions == 24
    assert explore(independent(4, 1), "dpor").executions == 1
    dfs, dpor = explore(independent(4, 2), "dfs"), explore(independent(4, 2), "dpor")
    assert dfs.executions == 2520 and dpor.executions == 1
    assert dfs.executions >= 10 * dpor.executions


def test_dpor_explores_fewer_executions_than_dfs_with_hardware_actors():
    model = stale_cache(fills=2)
    assert explore(model, "dpor").executions * 2 <= explore(model, "dfs").executions


def test_bfs_counterexample_is_the_shortest():
    for factory in (counter, lock_order, stale_cache, lambda: stale_cache(fills=3)):
        model = factory()
        shortest = explore(model, "bfs").counterexample
        for strategy in ("dfs", "dpor", "random"):
            other = explore(model, strategy, seed=3).counterexample
            assert len(shortest.schedule) <= len(other.schedule)
    assert len(explore(stale_cache(fills=3), "bfs").counterexample.schedule) == 5


def test_budget_marks_the_result_bounded_not_exhaustive():
    result = explore(independent(4, 2), "dfs", max_executions=10)
    assert not result.exhaustive and result.executions == 10
    assert result.limit == "max_executions=10 reached"
    assert result.verdicts()[DEADLOCK] == NOT_REACHED


def test_max_depth_cuts_executions_and_bounds_the_result():
    result = explore(independent(2, 3), "dpor", max_depth=2)
    assert not result.exhaustive and "max_depth=2" in result.limit


def test_stop_at_first_ends_at_the_first_violation():
    result = explore(counter(threads=3), "dfs", stop_at_first=True)
    assert result.violated and not result.exhaustive
    assert result.executions < explore(counter(threads=3), "dfs").executions


def test_preemption_bounding_prefers_fewest_preemptions():
    result = explore(stale_cache(), "preemption")
    assert result.bounds["preemptions"] == 1
    assert result.limit == "preemptions<=1"


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_sampling_is_seeded_and_never_exhaustive(strategy):
    a = explore(stale_cache(), strategy, seed=7, max_executions=300, stop_at_first=False)
    b = explore(stale_cache(), strategy, seed=7, max_executions=300, stop_at_first=False)
    assert not a.exhaustive and a.limit == "max_executions=300 reached"
    assert a.verdicts()["dma_after_free"] == VIOLATED
    assert a.counterexample.schedule == b.counterexample.schedule
    assert a.steps == b.steps


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_sampling_stops_at_the_first_violation_by_default_and_says_when(strategy):
    result = explore(stale_cache(), strategy, seed=7, max_executions=300)
    assert result.violated and not result.exhaustive and result.executions < 300
    assert result.limit == (f"stopped at the first violation, after {result.executions} "
                            "executions")
    assert explore(stale_cache(), "dpor").exhaustive  # tree searches go on to the end


def test_sampling_without_budget_defaults_to_1000_executions():
    assert explore(counter(locked=True), "random").executions == 1000


def test_unknown_strategy_is_bad_input():
    with pytest.raises(BadInput, match="strategy='chess'"):
        explore(counter(), "chess")


def test_observe_sees_every_complete_execution():
    finals = []
    result = explore(counter(), "dfs", observe=lambda w: finals.append(w.shared["x"]))
    assert len(finals) == result.executions == 6
    assert sorted(set(finals)) == [1, 2]
