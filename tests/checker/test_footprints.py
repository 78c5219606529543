"""The precise footprints DPOR's reduction rests on (actors.py, vtd_world.py): DPOR still
reaches every final state plain DFS reaches, and each refinement - DRAM vs CPU-cache views,
confined critical sections, walker steps, published queue slots, cached dry walks - says
exactly what it claims."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from vtdsim.checker import actors as ac
from vtdsim.checker.boot import build_model
from vtdsim.checker.explore import explore
from vtdsim.checker.scenario import load
from vtdsim.checker.vtd_world import dry_walk
from vtdsim.driver import steps as st
from vtdsim.errors import ModelError

LITMUS = Path(__file__).resolve().parents[2] / "litmus"


def _digest(world) -> tuple:
    unit = world.system.unit(0)
    caches = sorted((name, repr(key), repr(getattr(unit, name).peek(key)))
                    for name, key in unit.cached())
    return (world.system.platform.memory.snapshot(), tuple(caches),
            tuple(sorted({v.prop for v in world.monitor.found})),
            tuple(sorted(world.monitor.observed)), tuple(sorted(world.fired.items())))


def _final_states(model, strategy: str) -> set:
    states: set = set()
    result = explore(model, strategy, observe=lambda w: states.add(_digest(w)))
    assert result.exhaustive
    return states


@pytest.mark.parametrize("name", [
    "unmap_free_race_noflush",
    "cm_map_without_sync_map",
    pytest.param("flush_submitted_without_wait", marks=pytest.mark.slow),
    pytest.param("seed003_lazy_exposure_legacy", marks=pytest.mark.slow),
])
def test_dpor_reaches_every_final_state_dfs_reaches(name):
    """Equivalent executions end in the same state (verdicts and observations included), so
    a footprint that hides a dependency shows up as a state only DFS reaches."""
    model = build_model(load(LITMUS / f"{name}.toml"))
    assert _final_states(model, "dpor") == _final_states(model, "dfs")


@pytest.fixture(scope="module")
def attach_race():
    return build_model(load(LITMUS / "seed002_static_tags_after_context_cm.toml"))


def _run_until(world, actor: str, done) -> None:
    while not done(world):
        world.step(actor)


def test_non_snooped_walks_race_with_the_clflush_not_the_store(attach_race):
    world = attach_race.new_world()
    _run_until(world, "T0", lambda w: "context present" in str(
        ac.chain_label(w.threads["T0"].pending, False)))
    store = world.footprint("T0")  # the context entry's qword 0 (ECAP.C=0: walks read DRAM)
    world.step("T0")
    flush = world.footprint("T0")
    assert isinstance(world.threads["T0"].pending, st.ClflushRange)
    fill = ac.fp(reads=dry_walk(world.system.unit(0), 0x10, 0x1000, set()).reads)
    assert not store.conflicts(fill) and flush.conflicts(fill)


def test_confined_sections_do_not_touch_driver_bookkeeping(attach_race):
    world = attach_race.new_world()
    seen = {}
    while not world.threads["T0"].done:
        step = world.threads["T0"].pending
        if step is not None:
            seen.setdefault((type(step).__name__, getattr(step, "name", ""), step.why),
                            ac.DRV in world.footprint("T0").writes)
        world.step("T0")
    # Inside qi->q_lock and iommu->lock's domain_context_mapping_one section: no ("drv",);
    # leaving the section (its code sets tags and flags without a lock) touches it.
    assert seen[("Lock", "qi0.q_lock", "qi_submit_sync")] is False
    assert seen[("Annotate", "", "qi_submit_sync")] is False
    assert seen[("Lock", "iommu0.lock", "domain_context_mapping_one")] is False
    assert seen[("Unlock", "iommu0.lock", "domain_context_mapping_one")] is True
    assert seen[("Unlock", "domain2.cache_lock", "cache_tag_assign")] is True


def test_walker_steps_claim_only_walker_code_and_are_checked(attach_race):
    world = attach_race.new_world()
    _run_until(world, "T1", lambda w: isinstance(w.threads["T1"].pending, st.CpuRead))
    walker = world.footprint("T1")
    assert ac.DRV not in walker.writes and ac.PGTABLE in walker.reads
    outer = ac._outer_walker(world.threads["T1"].gen)
    assert outer is not None and outer.gi_frame.f_globals["__name__"] == "vtdsim.driver.pgtable"

    def elsewhere():
        yield st.Annotate(event="not the walker")

    with pytest.raises(ModelError, match="left the page-table walker"):
        ac._check_walker(outer, elsewhere(), st.CpuRead(addr=0, why="pfn_to_dma_pte"))


def test_an_iqt_write_publishes_the_slots_the_engine_then_reads():
    model = build_model(load(LITMUS / "flush_submitted_without_wait.toml"))
    world = model.new_world()
    _run_until(world, "T0", lambda w: isinstance(w.threads["T0"].pending, st.MmioWrite))
    tail = world.system.unit(0).queue.tail
    published = {loc for loc in world.footprint("T0").writes if loc[0] == "qslot"}
    assert published == {("qslot", 0, tail), ("qslot", 0, tail + 16)}  # the PSI and its wait
    world.step("T0")
    engine = world.footprint("hw:qi")
    assert {loc for loc in engine.reads if loc[0] == "qslot"} == {("qslot", 0, tail)}
    assert ("qslot", 0, tail) in engine.guard and ("reg", 0, "IQT") not in engine.reads


def test_cached_dry_walks_equal_fresh_ones_along_random_executions(attach_race):
    rng = random.Random(4)
    for _ in range(20):
        world = attach_race.new_world()
        while enabled := world.enabled():
            world.step(rng.choice(enabled))
            cached = world.walk("dev1", 0x1000)
            fresh = dry_walk(world.system.unit(0), 0x10, 0x1000, world.recycled,
                             grain=world.universe.grain)
            assert cached == fresh


def test_the_exact_footprint_adds_an_ops_end_only_where_it_ended(attach_race):
    world = attach_race.new_world()
    ended = []
    while not world.threads["T1"].done:
        predicted = world.footprint("T1")
        world.step("T1")
        taken = world.taken()
        assert taken.writes <= predicted.writes and taken.reads <= predicted.reads
        ended.append(any(loc[0] in ("owner", "mapped") for loc in taken.writes))
    # The map's begin grants its page to the domain; its last transition notes the IOVA.
    assert ended.count(True) == 2 and ended[0] and ended[-1]
    assert ("finished", "T1") in taken.writes


def _suspended():
    yield 1  # closing it resumes this frame: a "call" the recorder would see


class _Cycle:
    pass


def test_a_generator_the_collector_finalises_is_not_called_by_the_continuation():
    """Cyclic garbage (an abandoned execution's suspended generator) collected while a
    continuation runs is not the continuation's code: when the collector runs depends on
    what the process did before, so counting it would make footprints depend on history."""
    import gc

    from vtdsim.checker.continuations import PURE_LEVEL, Recorder

    threshold = gc.get_threshold()
    gc.collect()
    garbage = _Cycle()
    garbage.me, garbage.gen = garbage, _suspended()
    next(garbage.gen)
    del garbage
    recorder = Recorder()
    try:
        with recorder:
            gc.set_threshold(1)  # the next allocation would collect
            junk = []
            for _ in range(100):
                junk.append({})
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    assert recorder.level == PURE_LEVEL


def test_a_memoised_function_is_judged_the_same_on_a_miss_as_on_a_hit():
    """A cache hit runs no Python code; a miss of the same memoised function must not make
    the continuation a writer (what is cached depends on what the process ran before)."""
    from vtdsim.checker.continuations import PURE_LEVEL, Recorder
    from vtdsim.driver import qi

    qi._iotlb_desc.cache_clear()
    with Recorder() as recorder:
        qi._iotlb_desc(1, 1, 7, 0x1000, 0, 3, 0)
    assert recorder.level == PURE_LEVEL
