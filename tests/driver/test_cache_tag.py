"""Mainline cache tags: matching, insertion order, refcounts, the 16-descriptor batch, the
aligned PSI address, NESTING_* tags on a nest parent."""

from __future__ import annotations

from test_flush_queue import drain
from test_intel_iommu_ops import make_system

from vtdsim.driver import cache_tag as ct
from vtdsim.driver.device import DeviceInfo
from vtdsim.driver.domain import DmarDomain, IommuDomainInfo
from vtdsim.driver.intel_iommu import IntelIommu
from vtdsim.driver.profiles import LINUX_6_12, MAINLINE
from vtdsim.hardware.presets import get_preset


def two_unit_domain():
    caps = get_preset("server-sm")
    a, b = IntelIommu(0, caps, profile=MAINLINE), IntelIommu(1, caps, profile=MAINLINE)
    domain = DmarDomain("dma", "ss")
    domain.iommu_array = {0: IommuDomainInfo(a, 2), 1: IommuDomainInfo(b, 2)}
    dev = [DeviceInfo(0x100 + i, a if i < 2 else b, ats_enabled=True) for i in range(3)]
    return domain, a, b, dev


def kinds(domain):
    return [(t.type, t.iommu.name, t.dev.name if t.dev else "-", t.users)
            for t in domain.cache_tags]


def test_tags_match_per_unit_for_iotlb_and_per_device_for_devtlb():
    domain, a, b, dev = two_unit_domain()
    drain(ct.cache_tag_assign_domain(domain, dev[0]))
    drain(ct.cache_tag_assign_domain(domain, dev[2]))  # another unit: goes to the head
    drain(ct.cache_tag_assign_domain(domain, dev[1]))  # shares A's IOTLB tag
    assert kinds(domain) == [
        ("iotlb", "dmar1", "-", 1), ("devtlb", "dmar1", "01:00.2", 1),
        ("iotlb", "dmar0", "-", 2), ("devtlb", "dmar0", "01:00.0", 1),
        ("devtlb", "dmar0", "01:00.1", 1),
    ]
    ct.check_tags_sorted(domain)
    drain(ct.cache_tag_unassign_domain(domain, dev[1]))
    assert ("iotlb", "dmar0", "-", 1) in kinds(domain)
    assert not any(k[2] == "01:00.1" for k in kinds(domain))


def test_devtlb_tag_survives_unassign_when_ats_was_disabled_first():
    """Linux's asymmetry: DEVTLB tags go only if ATS is enabled at unassign time."""
    domain, _a, _b, dev = two_unit_domain()
    drain(ct.cache_tag_assign_domain(domain, dev[0]))
    dev[0].ats_enabled = False
    drain(ct.cache_tag_unassign_domain(domain, dev[0]))
    assert kinds(domain) == [("devtlb", "dmar0", "01:00.0", 1)]


def test_assign_is_traced_with_the_refcount():
    domain, _a, _b, dev = two_unit_domain()
    drain(ct.cache_tag_assign_domain(domain, dev[0]))
    steps = drain(ct.cache_tag_assign_domain(domain, dev[1]))
    events = [s.data for s in steps if getattr(s, "event", "") == "cache_tag_assign"]
    assert events[0] == ("dmar0/dmar0 type iotlb did 2 pasid 0", 2)


def ats_domain(ndev: int, preset="server-sm"):
    system = make_system(preset, MAINLINE)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
    for i in range(ndev):
        info = system.probe(f"02:{i:02x}.0", ats=True, ats_qdep=0)
        assert system.run(system.driver.attach_dev(domain, info)) == 0
    system.take()
    return system, domain


def test_qi_batch_submits_every_16_descriptors():
    system, domain = ats_domain(20)
    system.run(ct.cache_tag_flush_range(domain, MAINLINE, 0x10000, 0x10FFF, 1))
    subs = system.take()
    assert [len(s) for s in subs] == [16, 5]  # 1 IOTLB + 20 device-TLB, one wait each
    assert subs[0][0] == ("iotlb_inv", (2 << 16) | 0xF2 | 0, 0x10000 | 0x40)


def test_unaligned_range_is_aligned_down_to_the_mask():
    system, domain = ats_domain(1)
    system.run(ct.cache_tag_flush_range(domain, MAINLINE, 0x101000, 0x103FFF, 0))
    (iotlb, devtlb), = system.take()
    assert iotlb[2] == 0x100000 | 2  # pfn 0x101..0x103 -> 16 KiB block at 0x100000
    assert devtlb[0] == "dev_tlb_inv" and devtlb[2] == 0x100000 | 0x1000 | 1


def test_flush_all_is_dsi_plus_whole_device_tlb():
    system, domain = ats_domain(1)
    system.run(ct.cache_tag_flush_all(domain, MAINLINE))
    (iotlb, devtlb), = system.take()
    assert iotlb[0] == "iotlb_inv" and (iotlb[1] >> 4) & 3 == 2 and iotlb[2] == 0
    assert devtlb[2] == 0x7FFFFFFFFFFFF001


def test_range_np_without_cm_issues_nothing():
    system, domain = ats_domain(1)
    system.run(ct.cache_tag_flush_range_np(domain, MAINLINE, 0x10000, 0x10FFF))
    assert system.take() == []


def test_nested_domain_puts_nesting_tags_with_its_did_on_the_parent():
    system = make_system("server-sm", MAINLINE)
    parent = system.run(system.driver.domain_alloc_paging(system.iommu, "unmanaged",
                                                          nest_parent=True))
    info = system.probe("03:00.0", ats=True, pasid=True)
    assert system.run(system.driver.attach_dev(parent, info)) == 0
    nested = system.driver.domain_alloc_nested(parent, fs_pgd=0x4000000)
    assert system.run(system.driver.set_dev_pasid(nested, info, 5)) == 0
    nested_did = nested.domain_id_iommu(system.iommu)
    nesting = [t for t in parent.cache_tags if t.type.startswith("nesting")]
    assert [(t.type, t.did, t.pasid) for t in nesting] == [
        ("nesting_iotlb", nested_did, 5), ("nesting_devtlb", nested_did, 5)]
    system.take()
    # An S2 change: parent PSI for its own DID, PSI with the nested DID, and the whole
    # device-TLB for the nested PASID (type 8), in one submission.
    system.run(ct.cache_tag_flush_range(parent, MAINLINE, 0x20000, 0x20FFF, 0))
    (sub,) = system.take()
    labels = [(label, (qw0 >> 16) & 0xFFFF) for label, qw0, _ in sub]
    assert ("iotlb_inv", nested_did) in labels and ("p_dev_tlb_inv", info.sid) in labels
    pdev = next(d for d in sub if d[0] == "p_dev_tlb_inv")
    assert (pdev[1] >> 32) & 0xFFFFF == 5
    assert system.run(system.driver.remove_dev_pasid(info, 5)) is None
    assert not any(t.type.startswith("nesting") for t in parent.cache_tags)


# -- Linux 6.12 (profile linux-6.12) -----------------------------------------------------------
def test_612_adds_tags_at_the_tail_mainline_keeps_each_units_tags_adjacent():
    domain, a, b, dev = two_unit_domain()
    for unit in (a, b):
        unit.profile = LINUX_6_12
    drain(ct.cache_tag_assign_domain(domain, dev[0]))
    drain(ct.cache_tag_assign_domain(domain, dev[2]))  # cache_tag_assign: list_add_tail
    drain(ct.cache_tag_assign_domain(domain, dev[1]))
    assert [(k[0], k[1], k[2]) for k in kinds(domain)] == [
        ("iotlb", "dmar0", "-"), ("devtlb", "dmar0", "01:00.0"),
        ("iotlb", "dmar1", "-"), ("devtlb", "dmar1", "01:00.2"),
        ("devtlb", "dmar0", "01:00.1"),
    ]


def fs_domain(profile):
    system = make_system("qemu100-flts-cm", profile)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu))
    info = system.probe("00:03.0")
    assert domain.use_first_level and system.run(system.driver.attach_dev(domain, info)) == 0
    system.take()
    return system, domain


def test_612_flush_all_walks_the_tags_itself():
    system, domain = fs_domain(LINUX_6_12)
    system.run(ct.cache_tag_flush_all(domain, LINUX_6_12))
    assert system.events["cache_tag_flush_all"] == 1
    assert not system.events["cache_tag_flush_range"]
    (sub,) = system.take()
    assert sub == [("p_iotlb_inv", (2 << 16) | 0x26, 0)]  # PASID-selective (DID 2), as mainline


def test_612_first_stage_everything_mask_stays_page_selective():
    # A range whose ends share no bit: mask 52.  6.12 hands the page count to qi_desc_piotlb
    # (a type-6 PSI with AM 52); mainline makes it PASID-selective.
    start, end = (1 << 63) - 0x1000, (1 << 63) + 0xFFF  # pfns 2^51 - 1 and 2^51
    for profile, expected in ((LINUX_6_12, (0x36, 52)), (MAINLINE, (0x26, None))):
        system, domain = fs_domain(profile)
        system.run(ct.cache_tag_flush_range(domain, profile, start, end, 0))
        ((label, qw0, qw1),), = system.take()
        assert label == "p_iotlb_inv" and qw0 & 0x3F == expected[0]
        if expected[1] is not None:
            assert qw1 & 0x3F == expected[1] and qw1 >> 12 == 0


def test_612_sets_iotlb_sync_map_at_attach_mainline_at_allocation():
    # 6.12 dmar_domain_attach_device ORs the flag in last; mainline (cee686775f9c) fixes it
    # in domain_alloc_paging.  Under CM a second-stage map then flushes (IOTLB PSI, IH 0).
    for profile, at_alloc in ((LINUX_6_12, False), (MAINLINE, True)):
        system = make_system("qemu100-legacy-cm", profile)
        domain = system.run(system.driver.domain_alloc_paging(system.iommu))
        assert domain.iotlb_sync_map is at_alloc
        info = system.probe("00:03.0")
        assert system.run(system.driver.attach_dev(domain, info)) == 0 and domain.iotlb_sync_map
        system.take()
        system.run(system.driver.map(domain, 0xFFFF0000, 0x2000_0000, 0x2000, 3))
        assert system.take() == [[("iotlb_inv", (2 << 16) | 0xF2, 0xFFFF0000 | 1)]]
