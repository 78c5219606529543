"""Seed 001: DMA with a PASID, the two staleness properties (PASID teardown, present context
change), lock gates, the sync queue's footprint, and the "lock dropped early" mutant."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtdsim.checker import mutants as mt
from vtdsim.checker import mutations as mu
from vtdsim.checker.boot import build_model
from vtdsim.checker.explore import explore
from vtdsim.checker.litmus import Options, run_scenario
from vtdsim.checker.pasid_staleness import (
    STALE_AFTER_CONTEXT_CHANGE,
    STALE_AFTER_PASID_TEARDOWN,
)
from vtdsim.checker.scenario import load, parse
from vtdsim.driver import steps as st
from vtdsim.errors import BadInput

LITMUS = Path(__file__).resolve().parents[2] / "litmus"
SID = 0x10  # 00:02.0

BASE = """
name = "{name}"
preset = "server-sm"
profile = "mainline"
policy = "strict"
[switches]
context_flush_under_iommu_lock = true
context_clear_present_first = false
[[device]]
name = "dev1"
sid = "00:02.0"
pasid = true
ats = {ats}
[[domain]]
name = "rid"
stage = "ss"
devices = ["dev1"]
pages = ["rbuf"]
[[domain]]
name = "dom1"
stage = "ss"
pages = ["buf1"]
[[setup]]
op = "map"
domain = "rid"
iova = 0x1000
page = "rbuf"
[[setup]]
op = "map"
domain = "dom1"
iova = 0x1000
page = "buf1"
[[setup]]
op = "set_dev_pasid"
domain = "dom1"
device = "dev1"
pasid = 1
[hardware]
qi = "sync"
warm = [{{device = "dev1", iova = 0x1000}}, {{device = "dev1", iova = 0x1000, pasid = 1}}]
"""


def scenario(name: str, ops: str, *, ats: bool = False, extra: str = ""):
    text = BASE.format(name=name, ats=str(ats).lower())
    return parse(text + extra + f'[[thread]]\nname = "T0"\nops = [{ops}]\n')


TEARDOWN = '{op = "remove_dev_pasid", device = "dev1", pasid = 1}'
FLIP = '{op = "context_flip_pri", device = "dev1"}'


def verdicts(sc, mutant: mt.Mutant | None = None) -> dict:
    if mutant is None:
        return explore(build_model(sc), "dpor").verdicts()
    with mt.applied(mutant):
        return explore(build_model(sc), "dpor").verdicts()


def dropping(label: str, within: str) -> mt.Mutant:
    return mt.Mutant(f"no_{label}", f"{label} dropped in {within}", (),
                     mt.drop_desc(label, within))


def run_to_end(world, order: list[str]) -> None:
    """Step the first enabled actor of ``order`` until none is enabled."""
    while enabled := world.enabled():
        world.step(next(a for a in order if a in enabled))


# -- the DMA-with-PASID actor --------------------------------------------------------------------
def test_dma_with_a_pasid_walks_and_fills_that_pasids_entries():
    sc = scenario("dma_pasid", TEARDOWN, extra='[[dma]]\ndevice = "dev1"\niova = 0x1000\n'
                                              'pasid = 1\n')
    model = build_model(sc)
    world = model.new_world()
    unit = world.system.unit(0)
    for key in [k for k, _ in unit.pasid_cache.items() if k[1] == 1]:
        unit.pasid_cache.evict(key)
    actor = "dev1:dma r@0x1000 pasid=0x1"
    table = world.system.devices["dev1"].pasid_table.tables[0]
    assert ("mem", table + 64) in world.footprint(actor).reads  # PASID 1's entry line
    world.step(actor)
    did = world.system.dids(world.system.domains["dom1"])[0]
    assert unit.pasid_cache.peek((SID, 1)).did == did
    assert any(k[:2] == (did, 1) for k, _ in unit.iotlb.items())
    assert world.monitor.found == []


def test_warm_up_dma_fills_the_initial_caches_per_pasid():
    system = build_model(scenario("warm", TEARDOWN)).template
    unit = system.unit(0)
    assert {(SID, 0), (SID, 1)} <= {k for k, _ in unit.pasid_cache.items()}
    assert {k[1] for k, _ in unit.iotlb.items()} == {0, 1}


# -- stale_after_pasid_teardown --------------------------------------------------------------------
def test_teardown_flushes_everything_of_the_pasid():
    assert verdicts(scenario("td", TEARDOWN))[STALE_AFTER_PASID_TEARDOWN] == "holds"


@pytest.mark.parametrize("label", ["pc_inv", "iotlb_inv"])
def test_teardown_missing_a_flush_leaves_the_pasid_translating(label):
    got = verdicts(scenario("td", TEARDOWN), dropping(label, "intel_pasid_tear_down_entry"))
    assert got[STALE_AFTER_PASID_TEARDOWN] == "violated"


def test_device_tlb_of_the_pasid_is_checked_too():
    sc = scenario("td_ats", TEARDOWN, ats=True)
    atc = build_model(sc).template.endpoint("dev1").device_tlb
    assert any(e.pasid == 1 for _, e in atc.items())  # the warm-up went through ATS
    assert verdicts(sc)[STALE_AFTER_PASID_TEARDOWN] == "holds"
    got = verdicts(sc, dropping("p_dev_tlb_inv", "intel_pasid_tear_down_entry"))
    assert got[STALE_AFTER_PASID_TEARDOWN] == "violated"


def test_dma_racing_a_teardown_leaves_nothing_behind():
    """A DMA with the PASID anywhere around remove_dev_pasid (DPOR, exhaustive): a refill
    before the flushes is flushed, one after them finds the entry not present."""
    sc = scenario("td_race", TEARDOWN, extra='[[dma]]\ndevice = "dev1"\niova = 0x1000\n'
                                             'pasid = 1\ntimes = 2\n')
    result = explore(build_model(sc), "dpor")
    assert result.exhaustive and result.executions > 2
    assert result.verdicts()[STALE_AFTER_PASID_TEARDOWN] == "holds"
    assert result.verdicts()["spurious_fault"] == "holds"


def test_dma_with_the_pasid_after_the_teardown_completed_is_flagged():
    """With the PASID cache and IOTLB left alone, a DMA after remove_dev_pasid returned still
    reaches the old domain's page; after a correct teardown it faults (and the fault is not
    spurious: the PASID is detached)."""
    extra = '[[dma]]\ndevice = "dev1"\niova = 0x1000\npasid = 1\n'
    dma = "dev1:dma r@0x1000 pasid=0x1"
    for leaky in (False, True):
        leak = mt.Mutant("leak", "", (), mu.Mutation(descriptors=(
            mu.DescriptorRule("pc_inv", "intel_pasid_tear_down_entry"),
            mu.DescriptorRule("iotlb_inv", "intel_pasid_tear_down_entry"))))
        with mt.applied(leak if leaky else mt.Mutant("none", "", ())):
            world = build_model(scenario("td_dma", TEARDOWN, extra=extra)).new_world()
            run_to_end(world, ["T0", dma])
        messages = [v.message for v in world.violations() if v.prop == STALE_AFTER_PASID_TEARDOWN]
        assert any("DMA with pasid=0x1" in m for m in messages) is leaky
        assert all(v.prop != "spurious_fault" for v in world.violations())


# -- stale_after_context_change --------------------------------------------------------------------
def test_context_change_flushes_what_came_through_the_old_entry():
    assert verdicts(scenario("flip", FLIP))[STALE_AFTER_CONTEXT_CHANGE] == "holds"


def test_context_change_without_the_per_did_flush_is_stale():
    no_pc = dropping("pc_inv", "intel_context_flush_present")
    no_both = mt.Mutant("no_both", "", (), mu.Mutation(descriptors=(
        mu.DescriptorRule("pc_inv", "intel_context_flush_present"),
        mu.DescriptorRule("iotlb_inv", "intel_context_flush_present"))))
    assert verdicts(scenario("flip", FLIP), no_pc)[STALE_AFTER_CONTEXT_CHANGE] == "violated"
    assert verdicts(scenario("flip", FLIP), no_both)[STALE_AFTER_CONTEXT_CHANGE] == "violated"


def test_an_entry_of_a_torn_down_pasid_is_the_teardowns_business():
    """The flip leaves PASID 1's old entries when PASID 1 is no longer present (its teardown
    flushes them); only the teardown property looks at them."""
    sc = scenario("flip_after_clear", FLIP)
    model = build_model(sc)
    world = model.new_world()
    info = world.system.devices["dev1"]
    memory = world.system.platform.memory
    pte = info.pasid_table.tables[0] + 64
    memory.cpu_store(pte, memory.cpu_load(pte, 8) & ~1, 8)  # P cleared before the flip
    run_to_end(world, ["T0"])
    assert world.system.unit(0).pasid_cache.peek((SID, 1)) is not None  # left to its teardown
    assert world.violations() == []


# -- lock gates ------------------------------------------------------------------------------------
def test_a_gated_thread_waits_for_the_other_threads_release():
    model = build_model(load(LITMUS / "seed001_teardown_after_walk_locked.toml"))
    world = model.new_world()
    assert world.enabled() == ["T0"] and "T1" in world.blocked()
    assert ("lock", "iommu0.lock") in world.footprint("T1").guard
    while "T1" not in world.enabled():
        world.step("T0")
    assert world.threads["T0"].done  # the flip's only iommu->lock section ended with it


def test_gate_naming_an_unknown_thread_is_bad_input():
    text = BASE.format(name="bad", ats="false") + (
        f'[[thread]]\nname = "T0"\nops = [{FLIP}]\n'
        'after = [{lock = "iommu0.lock", thread = "T9"}]\n')
    with pytest.raises(BadInput, match="unknown thread 'T9'"):
        parse(text)


# -- the sync queue --------------------------------------------------------------------------------
def test_sync_iqt_write_touches_what_its_descriptors_invalidate():
    world = build_model(scenario("sync", FLIP)).new_world()
    while not (isinstance(step := world.threads["T0"].pending, st.MmioWrite)
               and step.offset == 0x88):
        world.step("T0")
    assert ("cc", 0, SID) in world.footprint("T0").writes  # the context-cache flush


# -- the "lock dropped early" mutant ---------------------------------------------------------------
def test_early_unlock_releases_before_the_marked_step_and_drops_the_own_release():
    def op():
        yield st.Lock(name="L", why="flip")
        yield st.CpuWrite(addr=0x100, value=1, why="flip")
        yield st.Lock(name="Q", why="qi_submit_sync")
        yield st.Unlock(name="Q", why="qi_submit_sync")
        yield st.Unlock(name="L", why="flip")

    rule = mu.EarlyUnlock(mu.Match(kinds=(st.Lock,), why="flip"),
                          mu.Match(kinds=(st.Lock,), why="qi_submit_sync"))
    steps = list(mu.Mutation(rules=(rule,)).wrap(op()))
    assert [(type(s).__name__, s.name) for s in steps if hasattr(s, "name")] == [
        ("Lock", "L"), ("Unlock", "L"), ("Lock", "Q"), ("Unlock", "Q")]


def test_lock_dropped_early_lets_an_attach_be_cached_through_the_old_context_entry():
    """T1 and the DMA run as soon as they may: with the protocol the gate holds T1 until the
    flip is over; with the lock released before the context-cache flush, PASID 2 is attached
    and used through the stale context-cache entry, and no flush of the flip covers its DID."""
    path = LITMUS / "seed001_attach_after_walk_locked.toml"
    mutant = mt.select(["lock_dropped_early"])[0]
    order = ["T1", "dev1:dma r@0x1000 pasid=0x2", "T0"]
    for seeded in (False, True):
        with mt.applied(mutant if seeded else mt.Mutant("none", "", ())):
            world = build_model(load(path)).new_world()
            while "T1" not in world.enabled() and not world.threads["T0"].done:
                world.step("T0")
            run_to_end(world, order)
        props = {v.prop for v in world.violations()}
        assert (STALE_AFTER_CONTEXT_CHANGE in props) is seeded


@pytest.mark.slow
def test_lock_dropped_early_is_caught_by_its_scenario():
    mutant = mt.select(["lock_dropped_early"])[0]
    sc = load(LITMUS / "seed001_attach_after_walk_locked.toml")
    assert run_scenario(sc, Options()).unexpected == []
    caught = mt.hunt(mutant, [sc], Options())
    assert caught.by == sc.name and "stale_after_context_change" in caught.detail
