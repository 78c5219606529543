"""PASID entries: 6.1's scalable-mode attach under CM (as QEMU saw it), mainline's probe-time
context, setup -EBUSY, teardown order per profile, seed 000's CM gate in teardown."""

from __future__ import annotations

import pytest
from test_intel_iommu_ops import make_system

from vtdsim.driver import pasid
from vtdsim.driver.device import IOMMU_NO_PASID
from vtdsim.driver.profiles import LINUX_6_1, MAINLINE
from vtdsim.driver.steps import CpuWrite
from vtdsim.hardware.pasid_table import PASID_ENTRY, PGTT_SS


def sm_cm_system(profile, preset="qemu72-sm"):
    return make_system(preset, profile, cm=1)


def test_linux61_sm_attach_under_cm_order():
    """PASID entry first (pc_inv, p_iotlb: separate submissions, silent no-ops on QEMU 7.2),
    then the context entry (cc DID 0, DSI with the domain's DID) - reference §3.7."""
    system = sm_cm_system(LINUX_6_1)
    info = system.probe("00:03.0")
    system.take()
    domain = system.run(system.driver.domain_alloc_paging(system.iommu))
    assert domain.stage == "ss"
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    subs = system.take()
    assert [s[0][0] for s in subs] == ["pc_inv", "p_iotlb_inv", "cc_inv", "iotlb_inv"]
    assert subs[2][0][1:] == (0x1800000031, 0) and subs[3][0][1:] == (0x200E2, 0)


def test_mainline_sm_context_at_probe_flushes_with_did_0():
    system = sm_cm_system(MAINLINE)
    system.take()
    system.probe("00:03.0")
    assert system.take() == [[("cc_inv", 0x1800000031, 0)], [("iotlb_inv", 0xE2, 0)]]


def test_setup_on_a_present_entry_is_ebusy():
    system = make_system("server-sm", MAINLINE)
    info = system.probe("05:00.0", pasid=True)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    rc = system.run(pasid.intel_pasid_setup_second_level(system.iommu, domain, info,
                                                         IOMMU_NO_PASID))
    assert rc == pasid.EBUSY
    pte = system.run(pasid.intel_pasid_get_entry(info, IOMMU_NO_PASID))
    value = system.run(pasid.read_pasid_entry(pte, "test"))
    f = PASID_ENTRY.decode(value)
    assert (f["p"], f["pgtt"], f["did"]) == (1, PGTT_SS, 2)


def teardown(profile, preset="server-sm", cm=False):
    system = make_system(preset, profile, cm=int(cm))
    info = system.probe("05:00.0", ats=True, ats_qdep=32)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    system.take()
    pte = system.run(pasid.intel_pasid_get_entry(info, IOMMU_NO_PASID))
    _rc, steps = system.run_recorded(
        pasid.intel_pasid_tear_down_entry(system.iommu, info, IOMMU_NO_PASID, profile))
    return system, steps, pte


@pytest.mark.parametrize("profile", [LINUX_6_1, MAINLINE])
def test_teardown_order(profile):
    system, steps, pte = teardown(profile)
    qw0_writes = [s for s in steps if isinstance(s, CpuWrite) and s.addr == pte]
    first_submit = next(i for i, s in enumerate(steps) if s.why == "qi_submit_sync")
    assert steps.index(qw0_writes[0]) < first_submit  # P cleared before any flush
    if profile.context_clear_present_first:
        assert qw0_writes[0].value != 0 and not qw0_writes[0].value & 1
        assert steps.index(qw0_writes[-1]) > first_submit and qw0_writes[-1].value == 0
    else:
        assert [w.value for w in qw0_writes] == [0]
    labels = [label for s in system.take() for label, *_ in s]
    assert labels == ["pc_inv", "iotlb_inv", "dev_tlb_inv"]  # SS: DSI, then device-TLB


@pytest.mark.parametrize("profile,devtlb", [(LINUX_6_1, False), (MAINLINE, True)])
def test_seed000_teardown_under_cm_devtlb(profile, devtlb):
    system, _steps, _pte = teardown(profile, cm=True)
    labels = [label for s in system.take() for label, *_ in s]
    assert ("dev_tlb_inv" in labels) is devtlb


def test_pasid_attach_replace_hands_over_tags():
    """set_dev_pasid(new, old): new tags first, entry torn down and set up, old tags last."""
    system = make_system("server-sm", MAINLINE)
    info = system.probe("06:00.0", pasid=True)
    rid = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
    assert system.run(system.driver.attach_dev(rid, info)) == 0
    old = system.run(system.driver.domain_alloc_paging(system.iommu, stage="fs"))
    new = system.run(system.driver.domain_alloc_paging(system.iommu, stage="fs"))
    assert system.run(system.driver.set_dev_pasid(old, info, 9)) == 0
    _rc, steps = system.run_recorded(system.driver.set_dev_pasid(new, info, 9, old=old))
    events = [(s.event, s.data[0]) for s in steps if getattr(s, "event", "").startswith("cache")]
    assert events[0][0] == "cache_tag_assign" and events[-1][0] == "cache_tag_unassign"
    assert not old.cache_tags and len(new.cache_tags) == 1
    assert info.pasid_domains[9] is new
