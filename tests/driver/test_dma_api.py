"""dma-iommu.c on the driver: the recorded Linux 6.1 sequences (strict under CM with ATS, lazy
without CM), mainline's batched unmap, identity domains, and free-after-flush ordering."""

from __future__ import annotations

import lzma
import re

import pytest
from test_intel_iommu_ops import TRACES, make_system

from vtdsim.driver.dma_api import (
    IommuDmaCookie,
    iommu_dma_map_page,
    iommu_dma_map_sg,
    iommu_dma_unmap_page,
    iommu_dma_unmap_sg,
)
from vtdsim.driver.iova import IovaDomain
from vtdsim.driver.profiles import LINUX_6_1, MAINLINE
from vtdsim.driver.steps import Annotate, FreePage, ReuseIova

QI_LINE = re.compile(r"qi_submit: (\w+) dmar0: (0x[0-9a-f]+) (0x[0-9a-f]+)")


def guest_submits(folder: str, limit: int = 400) -> list[tuple[str, int, int]]:
    """The first ``limit`` non-IEC qi_submit lines of a recording (label, qw0, qw1)."""
    path = TRACES / folder / "guest.log.xz"
    if not path.exists():
        pytest.skip(f"recording {folder} not present")
    out = []
    with lzma.open(path, "rt") as f:
        for line in f:
            m = QI_LINE.search(line)
            if m and m[1] != "iec_inv":
                out.append((m[1], int(m[2], 16), int(m[3], 16)))
                if len(out) == limit:
                    break
    return out


def ats_system(preset: str, profile, domain_type: str):
    """00:1f.x-like boot devices first so that 01:00.0's domain gets DID 7, as recorded."""
    system = make_system(preset, profile, translation=False)
    for name in ("00:00.0", "00:01.0", "00:02.0", "00:03.0", "00:1f.0"):  # DIDs 2..6
        boot_domain = system.run(system.driver.domain_alloc_paging(system.iommu))
        system.run(system.driver.attach_dev(boot_domain, system.probe(name)))
    info = system.probe("01:00.0", ats=True, ats_qdep=32)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu, domain_type))
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    system.run(system.iommu.iommu_enable_translation())
    system.take()
    cookie = IommuDmaCookie(system.driver, domain, IovaDomain(ncpus=2), ncpus=2)
    return system, domain, cookie


def test_linux61_strict_cm_ats_reproduces_recorded_map_and_unmap():
    """legacy-cm-ats: an 8 KiB map -> PSI AM=1; a 2-segment sg -> one PSI over the union; an
    unmap -> PSI then a separate dev_tlb_inv submission (device-TLB after the IOTLB)."""
    recorded = guest_submits("legacy-cm-ats", 8)
    system, domain, cookie = ats_system("qemu72-legacy-cm-ats", LINUX_6_1, "dma")
    assert domain.domain_id_iommu(system.iommu) == 7
    a = system.run(iommu_dma_map_page(cookie, 0x5CF6000, 0x2000))
    sg = system.run(iommu_dma_map_sg(cookie, [(0x5D0D000, 0x1000), (0x5CF0000, 0x1000)]))
    assert (a, sg) == (0xFFFFE000, [0xFFFFC000, 0xFFFFD000])
    pages = [system.run(iommu_dma_map_page(cookie, 0x5DE2000 + i * 0x10000, 0x1000))
             for i in range(4)]
    assert pages == [0xFFFFB000, 0xFFFFA000, 0xFFFF9000, 0xFFFF8000]
    system.run(iommu_dma_unmap_page(cookie, 0xFFFF8000, 0x1000, cpu=0))
    subs = system.take()
    assert all(len(s) == 1 for s in subs)  # one descriptor per IQT write (6.1)
    ours = [d for s in subs for d in s]
    assert ours[:2] == recorded[:2]
    assert ours[-2:] == [("iotlb_inv", 0x700F2, 0xFFFF8000),
                         ("dev_tlb_inv", 0x10000000003, 0xFFFF8000)]
    assert ours[-2:] == recorded[6:8]


def test_mainline_strict_unmap_batches_iotlb_and_devtlb_in_one_submission():
    system, _domain, cookie = ats_system("qemu72-legacy-cm-ats", MAINLINE, "dma")
    iova = system.run(iommu_dma_map_page(cookie, 0x5CF6000, 0x1000))
    assert system.take() == [[("iotlb_inv", 0x700F2, iova)]]  # map: PSI, no device-TLB
    system.run(iommu_dma_unmap_page(cookie, iova, 0x1000))
    # IH=1 (no table page freed) is on the wire in mainline: qw1 bit 6.
    assert system.take() == [[("iotlb_inv", 0x700F2, iova | 0x40),
                              ("dev_tlb_inv", 0x10000000003, iova)]]


def test_linux61_lazy_no_cm_queues_and_the_timer_flushes_dsi_plus_devtlb():
    """legacy-nocm-ats-lazy: maps and unmaps issue nothing; the flush-queue timer issues
    iotlb DSI (0x700e2) then a whole-space dev_tlb_inv, two submissions."""
    recorded = guest_submits("legacy-nocm-ats-lazy", 2)
    system, _domain, cookie = ats_system("qemu72-legacy-ats", LINUX_6_1, "dma_fq")
    iovas = [system.run(iommu_dma_map_page(cookie, 0x79347000 + i * 0x1000, 0x1000))
             for i in range(4)]
    _rc, steps = system.run_recorded(iommu_dma_unmap_page(cookie, iovas[0], 0x1000, now_ns=5))
    assert not any(isinstance(s, ReuseIova | FreePage) for s in steps)
    assert system.take() == []
    assert cookie.fq.timer_due(5 + 10_000_000)
    _rc, steps = system.run_recorded(cookie.fq.fq_flush_timeout(10_000_005))
    assert system.take() == [[recorded[0]], [recorded[1]]]
    assert recorded == [("iotlb_inv", 0x700E2, 0), ("dev_tlb_inv", 0x10000000003,
                                                     0x7FFFFFFFFFFFF001)]
    reuse = [i for i, s in enumerate(steps) if isinstance(s, ReuseIova)]
    flushed = max(i for i, s in enumerate(steps) if s.why == "qi_submit_sync")
    assert reuse and min(reuse) > flushed


@pytest.mark.parametrize("profile,devtlb", [(LINUX_6_1, False), (MAINLINE, True)])
def test_seed000_lazy_flush_under_cm_skips_devtlb_only_in_61(profile, devtlb):
    system, _domain, cookie = ats_system("qemu72-legacy-cm-ats", profile, "dma_fq")
    iova = system.run(iommu_dma_map_page(cookie, 0x1000000, 0x1000))
    system.take()
    system.run(iommu_dma_unmap_page(cookie, iova, 0x1000))
    system.run(cookie.fq.fq_flush_timeout(10_000_000))
    labels = [label for s in system.take() for label, *_ in s]
    assert ("dev_tlb_inv" in labels) is devtlb and "iotlb_inv" in labels


def test_strict_unmap_frees_the_iova_only_after_the_flush():
    system, _domain, cookie = ats_system("qemu72-legacy-cm-ats", LINUX_6_1, "dma")
    iova = system.run(iommu_dma_map_page(cookie, 0x1000000, 0x1000))
    _rc, steps = system.run_recorded(iommu_dma_unmap_page(cookie, iova, 0x1000))
    last_wait = max(i for i, s in enumerate(steps) if type(s).__name__ == "MmioWrite")
    reuse = next(i for i, s in enumerate(steps) if isinstance(s, ReuseIova))
    assert reuse > last_wait
    assert isinstance(steps[-1], Annotate) and steps[-1].event == "dma_unmap_done"


def test_sg_unmap_covers_the_whole_list_in_one_flush():
    system, _domain, cookie = ats_system("qemu72-legacy-cm", LINUX_6_1, "dma")
    addrs = system.run(iommu_dma_map_sg(cookie, [(0x2000000, 0x1000), (0x3000000, 0x3000)]))
    system.take()
    system.run(iommu_dma_unmap_sg(cookie, addrs, [0x1000, 0x3000]))
    (psi,), = system.take()
    assert psi[0] == "iotlb_inv" and psi[2] & 0x3F == 2  # 4 pages: AM=2


def test_identity_domain_maps_nothing():
    system = make_system("qemu72-legacy", LINUX_6_1)
    info = system.probe("00:02.0")
    domain = system.driver.domain_alloc_identity()
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    system.take()
    cookie = IommuDmaCookie(system.driver, domain, IovaDomain())
    assert system.run(iommu_dma_map_page(cookie, 0x1234000, 0x1000)) == 0x1234000
    system.run(iommu_dma_unmap_page(cookie, 0x1234000, 0x1000))
    assert system.take() == []
