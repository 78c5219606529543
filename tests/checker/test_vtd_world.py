"""The VT-d world: verdicts of the first litmus shapes, DPOR agreeing with plain DFS, worlds
independent of each other, footprints that guard blocking steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtdsim.checker.boot import build_model
from vtdsim.checker.explore import explore
from vtdsim.checker.scenario import load
from vtdsim.checker.schedule import run_schedule
from vtdsim.driver import steps as st

LITMUS = Path(__file__).resolve().parents[2] / "litmus"


@pytest.fixture(scope="module")
def noflush():
    return build_model(load(LITMUS / "unmap_free_race_noflush.toml"))


@pytest.fixture(scope="module")
def nowait():
    return build_model(load(LITMUS / "flush_submitted_without_wait.toml"))


def test_unflushed_unmap_lets_dma_reach_the_freed_page(noflush):
    result = explore(noflush, "dpor")
    assert result.exhaustive
    assert result.verdicts()["dma_after_free"] == "violated"
    assert result.verdicts()["stale_after_strict_unmap"] == "holds"
    chain = [r.chain for r in result.counterexample.records if r.key]
    assert any(c.startswith("fill iotlb") for c in chain)
    assert chain[-1].endswith("(dma_after_free)")


def test_skipping_the_wait_leaves_a_stale_translation(nowait):
    verdicts = explore(nowait, "dpor").verdicts()
    assert verdicts["dma_after_free"] == "violated"
    assert verdicts["stale_after_strict_unmap"] == "violated"


@pytest.mark.parametrize("name", ["noflush", "nowait"])
def test_dpor_agrees_with_dfs_and_explores_fewer(name, request):
    model = request.getfixturevalue(name)
    dfs, dpor = explore(model, "dfs"), explore(model, "dpor")
    assert dfs.exhaustive and dpor.exhaustive
    assert dfs.verdicts() == dpor.verdicts()
    assert dpor.executions < dfs.executions


def test_worlds_are_independent_copies(noflush):
    first = noflush.new_world()
    while first.enabled():
        first.step(first.enabled()[0])
    second = noflush.new_world()
    assert second.threads["T0"].index == 0
    assert second.system.platform.pages.freed == noflush.template.platform.pages.freed
    assert second.system.unit(0).iotlb is not first.system.unit(0).iotlb


def test_a_counterexample_replays(noflush):
    cex = explore(noflush, "dpor", stop_at_first=True).counterexample
    replay = run_schedule(noflush, cex.schedule)
    assert "dma_after_free" in replay.first_hit


def test_blocking_steps_declare_their_guard(noflush):
    world = noflush.new_world()
    lock = world.stepper.footprint(st.Lock(name="qi0.q_lock"))
    assert ("lock", "qi0.q_lock") in lock.guard
    # 0x1001000 is the queue's status page: each 32-bit status word is its own location.
    wait = world.stepper.footprint(st.WaitQword(addr=0x1001010, value=2))
    assert ("status", 0x1001010) in wait.guard and ("reg", 0, "FSTS") in wait.guard
    elsewhere = world.stepper.footprint(st.WaitQword(addr=0x1004010, value=2))
    assert ("mem", 0x1004010) in elsewhere.guard  # the polled qword (no write buffer)


def test_disabled_freedom_is_reported_blocked_but_no_deadlock(noflush):
    world = noflush.new_world()
    while "T0" in world.enabled():
        world.step("T0")
    # The PTE is gone: the fill cannot happen any more, yet nothing is deadlocked.
    assert "hw:fill iotlb dev1@0x1000" in world.blocked()
    assert not world.deadlocked()


def test_fingerprint_follows_the_model_code(noflush, monkeypatch):
    """A schedule saved under other model code must not pass for this model's: the
    fingerprint covers the code's digest (a change in how many steps an op takes would
    otherwise replay a different interleaving silently)."""
    from vtdsim.checker import vtd_world

    before = noflush.fingerprint()
    assert vtd_world.model_digest() == vtd_world.model_digest.__wrapped__()  # stable
    monkeypatch.setattr(vtd_world, "model_digest", lambda: "other code")
    assert noflush.fingerprint() != before
