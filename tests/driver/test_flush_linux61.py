"""Linux 6.1 flushing: PSI/DSI choice, the unaligned start frame, one descriptor per
submission, device-TLB gating by caching mode (seed 000)."""

from __future__ import annotations

import pytest
from test_intel_iommu_ops import make_system

from vtdsim.driver.flush_linux61 import intel_flush_iotlb_all, iommu_flush_iotlb_psi
from vtdsim.driver.profiles import LINUX_6_1


def domain_with_ats(preset: str, profile=LINUX_6_1, ndev: int = 2):
    system = make_system(preset, profile)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu))
    infos = []
    for i in range(ndev):
        info = system.probe(f"01:00.{i}", ats=True, ats_qdep=i + 4)
        assert system.run(system.driver.attach_dev(domain, info)) == 0
        infos.append(info)
    system.take()
    return system, domain, infos


def test_unaligned_psi_writes_the_start_frame_and_covers_both_ends():
    system, domain, _ = domain_with_ats("qemu72-legacy", ndev=1)
    system.run(iommu_flush_iotlb_psi(system.iommu, domain, LINUX_6_1, 0x101, 3, 1, False))
    ((label, qw0, qw1),), = system.take()
    assert label == "iotlb_inv" and qw0 == 0x200F2
    assert qw1 == 0x101000 | 2  # addr = start frame (not aligned), AM=2, IH dropped


def test_mask_above_mamv_becomes_dsi():
    system, domain, _ = domain_with_ats("qemu72-legacy", ndev=1)
    mamv = system.iommu.caps.mamv
    system.run(iommu_flush_iotlb_psi(system.iommu, domain, LINUX_6_1, 0, 1 << (mamv + 1), 0,
                                     False))
    assert system.take() == [[("iotlb_inv", 0x200E2, 0)]]


def test_strict_unmap_flushes_each_ats_device_in_its_own_submission_newest_first():
    system, domain, infos = domain_with_ats("qemu72-legacy-ats")
    system.run(iommu_flush_iotlb_psi(system.iommu, domain, LINUX_6_1, 0xFFFF8, 1, 1, False))
    subs = system.take()
    assert [len(s) for s in subs] == [1, 1, 1]
    assert [s[0][0] for s in subs] == ["iotlb_inv", "dev_tlb_inv", "dev_tlb_inv"]
    sids = [(s[0][1] >> 32) & 0xFFFF for s in subs[1:]]
    assert sids == [infos[1].sid, infos[0].sid]  # list_add: newest device first
    assert [(s[0][1] >> 16) & 0x1F for s in subs[1:]] == [5, 4]  # MIP = ATS queue depth


def test_map_notification_never_flushes_the_device_tlb():
    system, domain, _ = domain_with_ats("qemu72-legacy-cm-ats")
    system.run(iommu_flush_iotlb_psi(system.iommu, domain, LINUX_6_1, 0x100, 1, 0, True))
    assert [label for s in system.take() for label, *_ in s] == ["iotlb_inv"]


@pytest.mark.parametrize("checks_cm,expected", [
    (True, ["iotlb_inv"]),
    (False, ["iotlb_inv", "dev_tlb_inv", "dev_tlb_inv"]),
])
def test_seed000_flush_iotlb_all_under_caching_mode(checks_cm, expected):
    profile = LINUX_6_1.with_(devtlb_flush_checks_caching_mode=checks_cm)
    system, domain, _ = domain_with_ats("qemu72-legacy-cm-ats", profile)
    system.run(intel_flush_iotlb_all(domain, profile))
    subs = system.take()
    assert [label for s in subs for label, *_ in s] == expected
    assert subs[0] == [("iotlb_inv", 0x200E2, 0)]
    if not checks_cm:
        assert subs[1][0][2] == 0x7FFFFFFFFFFFF001


def test_flush_iotlb_all_without_cm_always_flushes_the_device_tlb():
    system, domain, _ = domain_with_ats("qemu72-legacy-ats", ndev=1)
    system.run(intel_flush_iotlb_all(domain, LINUX_6_1))
    assert system.take() == [[("iotlb_inv", 0x200E2, 0)],
                             [("dev_tlb_inv", 0x10000000003 | (4 << 16), 0x7FFFFFFFFFFFF001)]]
