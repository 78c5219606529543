"""Seed 002: the RWBF preset and its write buffer, attach split into "prepare" and "program",
the bounds the seed's scenarios use (negative-only fills, DMA after a thread), and the chains
of the races (iotlb_sync_map flag, cache-tag order, RWBF)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtdsim.checker import mutants as mt
from vtdsim.checker.boot import boot, build_model
from vtdsim.checker.litmus import Options, run_scenario
from vtdsim.checker.scenario import load, op
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit

LITMUS = Path(__file__).resolve().parents[2] / "litmus"


def _outcome(name: str):
    outcome = run_scenario(load(LITMUS / f"{name}.toml"), Options())
    assert outcome.unexpected == [] and outcome.result.exhaustive
    return outcome


def _records(outcome) -> list[tuple[str, str]]:
    (cex,) = outcome.counterexamples
    return [(r.actor, r.text) for r in cex.records]


def _index(records, actor: str, fragment: str) -> int:
    return next(i for i, (a, text) in enumerate(records) if a == actor and fragment in text)


def test_rwbf_preset_is_qemus_legacy_unit_with_rwbf():
    caps = get_preset("qemu72-legacy-rwbf")
    assert (caps.cap, caps.ecap) == (0xD2008C22260216, 0xF00F4A)
    assert caps.rwbf and not caps.caching_mode and not caps.coherent


def test_rwbf_unit_posts_structure_stores_until_a_write_buffer_flush():
    memory = PhysicalMemory()
    RemappingUnit(get_preset("qemu72-legacy-rwbf"), memory)
    assert memory.write_buffer
    memory.cpu_store(0x5000, 0x1003, 8)
    memory.clflush(0x5000)
    assert memory.read_qword(0x5000, snoop=False) == 0  # written back, still posted
    memory.flush_write_buffer()
    assert memory.read_qword(0x5000, snoop=False) == 0x1003


def _attach_scenario(parts: list[str]):
    sc = load(LITMUS / "seed002_static_tags_before_context_cm.toml")
    sc.threads.clear()
    sc.setup_ops = [o for o in sc.setup_ops if o.kind != "attach"]
    sc.setup(*(op("attach", domain="dom", device="dev1", part=p) for p in parts))
    return boot(sc)


def test_attach_prepare_then_program_is_the_whole_attach():
    whole, split = _attach_scenario(["all"]), _attach_scenario(["prepare", "program"])
    assert whole.executor.steps == split.executor.steps
    for system in (whole, split):
        domain, info = system.domains["dom"], system.devices["dev1"]
        assert system.members["dev1"] == "dom"
        assert [t.did for t in domain.cache_tags] == [domain.domain_id_iommu(info.iommu)]
    assert whole.unit(0).memory.snapshot() == split.unit(0).memory.snapshot()


def test_prepared_attach_leaves_the_hardware_untouched():
    prepared = _attach_scenario(["prepare"])
    assert "dev1" not in prepared.members
    assert prepared.domains["dom"].cache_tags == []
    assert prepared.devices["dev1"].domain is prepared.domains["dom"]
    fills = prepared.unit(0).possible_fills(prepared.endpoint("dev1").sid, 0x1000)
    assert not any(f.cache == "iotlb" for f in fills)  # no context entry to walk through


def test_negative_fill_never_caches_a_present_translation():
    model = build_model(load(LITMUS / "seed002_static_tags_before_context_cm.toml"))
    world = model.new_world()
    fill = "hw:fill iotlb dev1@0x1000"
    while not world.finished():
        for actor in ("T0", "T1"):
            if actor in world.enabled():
                world.step(actor)
    # The IOVA is mapped and visible: a fill would be present, so the negative-only fill
    # is disabled (blocked), and the DMA that waited for T1 may run.
    assert fill in world.blocked() and fill not in world.enabled()
    assert "dev1:dma r@0x1000" in world.enabled()


def test_dma_after_thread_waits_for_that_thread():
    model = build_model(load(LITMUS / "seed002_rwbf_tags_after_context.toml"))
    world = model.new_world()
    dma = "dev1:dma r@0x1000"
    assert dma not in world.enabled()
    while not world.threads["T1"].done:
        world.step("T1")
        assert (dma in world.enabled()) == world.threads["T1"].done
    assert ("finished", "T1") in world.footprint(dma).guard


def test_dynamic_flag_set_after_the_context_lets_the_map_skip_its_flush():
    records = _records(_outcome("seed002_dynamic_sync_map_cm"))
    fill = _index(records, "hw:fill iotlb dev1@0x1000", "(not present)")
    map_done = _index(records, "T1", ") done")
    flag_set = _index(records, "T0", "unlock iommu0.lock (domain_context_mapping_one)")
    # Tags come first here, so the only window is the flag's: T1's map returns without
    # calling cache_tag_flush_range_np before T0 sets the flag.
    assert fill < map_done < flag_set
    assert not any(a == "T1" and "cache_tag_flush_range_np" in t for a, t in records)
    assert "faults" in records[-1][1]


def test_tags_after_the_context_leave_nothing_to_flush():
    records = _records(_outcome("seed002_static_tags_after_context_cm"))
    walk = _index(records, "T1", "cache_tag_flush_range_np")
    assign = _index(records, "T0", "cache_tag_assign")
    assert _index(records, "hw:fill iotlb dev1@0x1000", "(not present)") < walk < assign
    assert "faults" in records[-1][1]


@pytest.mark.parametrize("name", ["seed002_rwbf_tags_after_context",
                                  "seed002_rwbf_flush_before_context"])
def test_rwbf_pte_stays_posted_after_the_contexts_flush(name):
    outcome = _outcome(name)
    (cex,) = outcome.counterexamples
    chain = [r.chain for r in cex.records if r.key]
    flushes = [i for i, c in enumerate(chain) if c.startswith("GCMD.WBF")]
    pte = next(i for i, c in enumerate(chain) if c.startswith("set PTE"))
    assert flushes and max(flushes) < pte  # no write-buffer flush after the PTE store
    assert chain[-1].endswith("(spurious_fault)") and "faults" in chain[-1]
    assert (len(flushes) == 2) == (name == "seed002_rwbf_flush_before_context")


def test_rwbf_with_tags_first_needs_no_flush_before_the_context():
    outcome = _outcome("seed002_rwbf_tags_before_context")
    assert outcome.result.verdicts()["spurious_fault"] == "holds"
    assert outcome.scenario.switches["rwbf_flush_before_context"] is False


@pytest.mark.parametrize("name", ["context_rwbf_flush_dropped", "map_rwbf_flush_dropped"])
def test_each_missing_write_buffer_flush_is_caught(name):
    """Drop the flush after the context store, or the map's own: the scenario that holds with
    both in place then has a DMA walking a posted (not yet visible) entry."""
    mutant = mt.select([name])[0]
    scenarios = [sc for sc in mt.load_all([LITMUS]) if sc.name in mutant.catchers]
    assert mt.hunt(mutant, scenarios, Options()).by == "seed002_rwbf_tags_before_context"
