"""The page ledger (checker/lifecycle.py), the ops that hand pages and devices over
(checker/device_ops.py) and the torn-read freedom: what each records, judged on small worlds."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtdsim.checker import boot
from vtdsim.checker.lifecycle import DATA, FREE, PGTABLE
from vtdsim.checker.litmus import Options, run_scenario
from vtdsim.checker.scenario import Scenario, load, op, parse
from vtdsim.errors import BadInput

LITMUS = Path(__file__).resolve().parents[2] / "litmus"


def _run_thread(model, thread: str = "T0"):
    world = model.new_world()
    while not world.threads[thread].done:
        world.step(thread)
    return world


def test_a_freed_page_reused_as_a_table_is_owned_by_that_domain_at_its_level():
    model = boot.build_model(load(LITMUS / "issue10_p2_stale_iotlb_writes_reused_table.toml"))
    buf = model.template.pages["buf"]
    assert model.template.ledger.owner(buf).kind == DATA
    world = _run_thread(model)
    owner = world.system.ledger.owner(buf)
    assert (owner.kind, owner.name) == (PGTABLE, "dom2") and owner.level >= 1
    assert owner.epoch == 2  # allocated at boot as a data page, then again as a table
    assert world.system.ledger.foreign(buf, {"dom1"}) == owner


def test_the_set_up_feeds_the_ledger_like_a_thread():
    model = boot.build_model(load(LITMUS / "issue10_p3_readonly_write_faults.toml"))
    ledger = model.template.ledger
    assert ledger.maps("dom", 0x1000, write=False) and not ledger.maps("dom", 0x1000, write=True)
    assert ledger.domains_of("dev1", None) == {"dom"} and not ledger.moving
    root = model.template.domains["dom"].pgtable.root
    assert ledger.owner(root).kind == PGTABLE and ledger.owner(root).name == "dom"


def _two_domains(profile: str = "linux-6.1", preset: str = "qemu72-legacy") -> Scenario:
    sc = Scenario("t", preset=preset, profile=profile)
    sc.device("dev1", 0x10).device("dev2", 0x18)
    sc.domain("dom1", type="unmanaged", stage="ss", devices=("dev1",), pages=("buf",))
    sc.domain("dom2", type="unmanaged", stage="ss", devices=("dev2",), pages=("buf2",))
    return sc.setup(op("map", domain="dom1", iova=0x1000, page="buf"))


def test_alloc_hands_the_freed_page_to_a_new_owner_in_a_new_epoch():
    sc = _two_domains().thread("T0", op("unmap", domain="dom1", iova=0x1000),
                               op("free", page="buf"), op("alloc", page="buf2"))
    model = boot.build_model(sc.validate())
    old = model.template.pages["buf"]
    world = _run_thread(model)
    assert world.system.pages["buf2"] == old  # LIFO: the freed page comes back first
    owner = world.system.ledger.owner(old)
    assert (owner.kind, owner.name, owner.epoch) == (DATA, "buf2", 2)
    assert world.system.ledger.foreign(old, {"dom1"}) == owner  # no longer dom1's


@pytest.mark.parametrize("profile", ["linux-6.1", "mainline"])
def test_detach_leaves_the_device_unattached_and_its_faults_unjudged(profile):
    preset = "server-sm" if profile == "mainline" else "qemu72-legacy"
    sc = _two_domains(profile, preset).thread("T0", op("detach", device="dev1"))
    sc.dma_actor("dev1", 0x1000, after_thread="T0")
    model = boot.build_model(sc.validate())
    world = _run_thread(model)
    assert "dev1" not in world.system.members and not world.system.ledger.moving
    record = world.step("dev1:dma r@0x1000")
    assert "faults: DMAR fault" in record.text and "sid=00:02.0 addr=0x1000" in record.text
    assert world.violations() == []


def test_release_tears_down_and_frees_the_pasid_tables():
    sc = _two_domains("mainline", "server-sm").thread("T0", op("release", device="dev1"))
    model = boot.build_model(sc.validate())
    table = model.template.devices["dev1"].pasid_table
    world = _run_thread(model)
    assert world.system.devices["dev1"].pasid_table is None
    assert world.system.ledger.owner(table.directory).kind == FREE


def test_ats_disable_empties_the_device_tlb():
    sc = Scenario("t", preset="qemu72-legacy-ats").device("dev1", 0x10, ats=True)
    sc.domain("dom", type="unmanaged", devices=("dev1",), pages=("buf",))
    sc.setup(op("map", domain="dom", iova=0x1000, page="buf"))
    sc.thread("T0", op("ats_disable", device="dev1"))
    model = boot.build_model(sc.validate())
    world = model.new_world()
    endpoint = world.system.endpoint("dev1")
    assert endpoint.ats
    endpoint.ats_prefetch(0x1000)
    assert len(endpoint.device_tlb) == 1
    world.step("T0")
    assert not endpoint.ats and len(endpoint.device_tlb) == 0


@pytest.mark.parametrize("declared", [False, True])
def test_a_dma_declared_to_fault_is_never_a_spurious_fault(declared):
    sc = Scenario("t").device("dev1", 0x10)
    sc.domain("dom", type="unmanaged", devices=("dev1",), pages=("buf",))
    # A map whose PTE store is dropped completes without a translation: its DMA faults.
    sc.thread("T0", op("map", domain="dom", iova=0x1000, page="buf", skip=["CpuCmpxchg"]))
    sc.dma_actor("dev1", 0x1000, after_thread="T0", expect_fault=declared)
    outcome = run_scenario(sc.validate(), Options())
    assert outcome.result.verdicts()["spurious_fault"] == ("holds" if declared else "violated")


def test_torn_fill_fields_are_checked():
    text = (LITMUS / "issue10_p5_torn_context_reattach.toml").read_text()
    with pytest.raises(BadInput, match=r"torn_fills\[0\]\.first: expected 'p' or 'rest'"):
        parse(text.replace('first = "rest"', 'first = "middle"'), "x.toml")


def test_an_early_piece_joins_the_rest_of_the_entry_as_read_later():
    model = boot.build_model(load(LITMUS / "issue10_p5_torn_context_reattach.toml"))
    unit = model.template.unit(0)
    sid = model.template.endpoint("dev1").sid
    (root, _), (context, qwords) = unit.entry_pieces(sid, 0x1000)
    assert qwords == 2
    plain = [f for f in unit.possible_fills(sid, 0x1000) if f.cache == "context_cache"][0]
    torn = [f for f in unit.possible_fills(sid, 0x1000, earlier={context + 8: 0x5 << 8 | 1})
            if f.cache == "context_cache"][0]
    assert torn.entry.raw & ((1 << 64) - 1) == plain.entry.raw & ((1 << 64) - 1)
    assert torn.entry.raw >> 64 == 0x5 << 8 | 1 and torn.entry.did == 5
