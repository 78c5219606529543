"""Context entries: present-last programming, teardown order per profile, seed 001's lock
placement for the present-change flush (legacy clear and the scalable-mode PRI flip)."""

from __future__ import annotations

import pytest
from test_intel_iommu_ops import make_system

from vtdsim.driver import context as ctx
from vtdsim.driver.profiles import LINUX_6_1, MAINLINE
from vtdsim.driver.steps import CpuWrite, Unlock
from vtdsim.hardware.root_table import CONTEXT_ENTRY, TT_SS_ATS


def attached(preset, profile, **dev):
    system = make_system(preset, profile)
    info = system.probe("01:00.0", **dev)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu))
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    system.take()
    return system, domain, info


def context_addr(system, info):
    return system.run(ctx.iommu_context_addr(system.iommu, info.bus, info.devfn, False))


def test_legacy_entry_fields_and_present_written_last():
    system = make_system("qemu72-legacy-ats", LINUX_6_1)
    info = system.probe("01:00.0", ats=True)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu))
    _rc, steps = system.run_recorded(system.driver.attach_dev(domain, info))
    ce = context_addr(system, info)
    writes = [s for s in steps if isinstance(s, CpuWrite) and s.addr in (ce, ce + 8)]
    assert [w.addr for w in writes] == [ce + 8, ce]  # P lives in qword 0: written last
    mem = system.platform.memory
    value = mem.cpu_load(ce, 8) | mem.cpu_load(ce + 8, 8) << 64
    f = CONTEXT_ENTRY.decode(value)
    assert (f["p"], f["tt"], f["did"], f["aw"]) == (1, TT_SS_ATS, 2, 1)
    assert f["ssptptr"] << 12 == domain.pgtable.root


def _clear_steps(profile, preset="qemu72-legacy-cm-ats"):
    system, domain, info = attached(preset, profile, ats=True, ats_qdep=32)
    ce = context_addr(system, info)
    _rc, steps = system.run_recorded(ctx.domain_context_clear_one(info, profile))
    return system, steps, ce


def test_linux61_clear_zeroes_first_then_flushes_after_unlock():
    system, steps, ce = _clear_steps(LINUX_6_1)
    first_write = next(s for s in steps if isinstance(s, CpuWrite) and s.addr == ce)
    assert first_write.value == 0
    assert system.take() == [[("cc_inv", 0x10000020031, 0)], [("iotlb_inv", 0x200E2, 0)],
                             [("dev_tlb_inv", 0x10000000003, 0x7FFFFFFFFFFFF001)]]


def test_mainline_clear_present_first_then_flush_then_zero():
    system, steps, ce = _clear_steps(MAINLINE)
    writes = [s for s in steps if isinstance(s, CpuWrite) and s.addr == ce]
    assert writes[0].value & 1 == 0 and writes[0].value != 0  # only P cleared
    assert writes[-1].value == 0
    last_submit = max(i for i, s in enumerate(steps) if s.why == "qi_submit_sync")
    assert steps.index(writes[-1]) > last_submit  # zeroed only after the flushes
    assert len(system.take()) == 3  # each helper flush is its own submission


@pytest.mark.parametrize("under_lock", [False, True])
def test_seed001_clear_flush_relative_to_iommu_lock(under_lock):
    profile = MAINLINE.with_(context_flush_under_iommu_lock=under_lock)
    system, steps, _ce = _clear_steps(profile)
    unlock = next(i for i, s in enumerate(steps)
                  if isinstance(s, Unlock) and s.name == system.iommu.lock)
    first_submit = next(i for i, s in enumerate(steps) if s.why == "qi_submit_sync")
    assert (first_submit < unlock) is under_lock


def sm_with_pasids(profile):
    system = make_system("server-sm", profile)
    info = system.probe("04:00.0", ats=True, pasid=True)
    rid = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
    assert system.run(system.driver.attach_dev(rid, info)) == 0
    other = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
    assert system.run(system.driver.set_dev_pasid(other, info, 7)) == 0
    system.take()
    return system, info, rid, other


@pytest.mark.parametrize("under_lock", [False, True])
def test_seed001_pri_flip_flushes_every_pasid_did(under_lock):
    """A present SM context entry changes: device-selective context cache, then per DID of a
    present PASID entry a PASID-cache DSI + IOTLB DSI, then the device-TLB.  With the switch
    the flushes happen before iommu->lock is released (no PASID attach can interleave)."""
    profile = MAINLINE.with_(context_flush_under_iommu_lock=under_lock)
    system, info, rid, other = sm_with_pasids(profile)
    _rc, steps = system.run_recorded(ctx.context_flip_pri(info, True, profile))
    labels = [(label, (qw0 >> 16) & 0xFFFF) for label, qw0, _ in
              [d for s in system.take() for d in s]]
    did_rid, did_other = rid.domain_id_iommu(system.iommu), other.domain_id_iommu(system.iommu)
    assert labels[0][0] == "cc_inv"
    assert ("pc_inv", did_rid) in labels and ("pc_inv", did_other) in labels
    assert ("iotlb_inv", did_rid) in labels and ("iotlb_inv", did_other) in labels
    assert labels[-1][0] == "dev_tlb_inv"
    unlock = max(i for i, s in enumerate(steps)
                 if isinstance(s, Unlock) and s.name == system.iommu.lock)
    last_submit = max(i for i, s in enumerate(steps) if s.why == "qi_submit_sync")
    assert (last_submit < unlock) is under_lock
