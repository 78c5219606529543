"""The DMA API's driver operations yield exactly the steps they yielded before the op path was
made cheaper (issue 12): every step, its reply and the Linux functions on its call stack that
the checker's mutants name, for a mix of maps and unmaps (pages, scatterlists, 2 MiB, table
pages freed) under every profile, strict and lazy, with and without caching mode and ATS.
The digests were taken at fa362d7, before any restructuring of those generators."""

from __future__ import annotations

import hashlib

import pytest

from vtdsim.checker.mutations import call_stack
from vtdsim.driver.dma_api import (
    IommuDmaCookie,
    iommu_dma_map_page,
    iommu_dma_map_sg,
    iommu_dma_unmap_page,
    iommu_dma_unmap_sg,
)
from vtdsim.driver.iova import IovaDomain
from vtdsim.simulation.system import System

# The functions a mutant's ``within`` names (checker/mutants.py) plus the submission itself:
# a restructured generator chain must keep each on the stack of the steps it had.
NAMED = frozenset({
    "iommu_iotlb_sync", "cache_tag_flush_range", "cache_tag_flush_all",
    "cache_tag_flush_range_np", "intel_iommu_tlb_sync_linux61", "iommu_flush_iotlb_psi",
    "mapping_notify_one", "_install_run", "write_entry_present_last", "flush_context_device",
    "context_present_cache_flush", "_flush_cleared_linux61", "qi_submit_sync",
    "fq_flush_timeout", "iommu_dma_free_iova",
})
BASE = 0x1_0000_0000
MB2 = 2 << 20


def traced_run(system: System, gen, log: list) -> object:
    """Run ``gen`` on the system's executor, logging each step, its reply and its stack."""
    executor, reply = system.executor, None
    while True:
        try:
            step = gen.send(reply)
        except StopIteration as stop:
            return stop.value
        stack = tuple(name for name in call_stack(gen) if name in NAMED)
        reply = executor.apply(step)
        log.append((repr(step), reply, stack))


def op_mix(system: System, cookie: IommuDmaCookie, log: list) -> None:
    """Maps and unmaps: recycled pages, a scatterlist, an unaligned buffer, a 2 MiB buffer,
    a range whose unmap frees a table page, then the flush queue's timeout (lazy)."""
    run = lambda gen: traced_run(system, gen, log)  # noqa: E731
    for round_ in range(3):
        addrs = [run(iommu_dma_map_page(cookie, BASE + i * 4096, 4096, cpu=i % 2))
                 for i in range(6)]
        for i, addr in enumerate(addrs):
            run(iommu_dma_unmap_page(cookie, addr, 4096, i % 2, 1000 * round_ + i))
    odd = run(iommu_dma_map_page(cookie, BASE + 0x123, 3000))
    sg = [(BASE + 0x10000, 4096), (BASE + 0x11000, 8192), (BASE + 0x20000, 4096)]
    sg_addrs = run(iommu_dma_map_sg(cookie, sg))
    big = run(iommu_dma_map_page(cookie, BASE + 32 * MB2, MB2))
    many = run(iommu_dma_map_page(cookie, BASE + 64 * MB2, 4 * MB2 + 4096 * 600))
    table = run(iommu_dma_map_page(cookie, BASE + 96 * MB2 + 4096, MB2))  # 512 4 KiB leaves
    run(iommu_dma_unmap_page(cookie, odd, 3000, 0, 5000))
    run(iommu_dma_unmap_sg(cookie, sg_addrs, [n for _, n in sg], 1, 5001))
    run(iommu_dma_unmap_page(cookie, big, MB2, 0, 5002))
    run(iommu_dma_unmap_page(cookie, many, 4 * MB2 + 4096 * 600, 1, 5003))
    run(iommu_dma_unmap_page(cookie, table, MB2, 0, 5004))  # frees its table page
    if cookie.fq is not None:
        run(cookie.fq.fq_flush_timeout(10**9))


CASES = [
    (unit, profile, dtype)
    for unit in ("server-sm", "qemu72-legacy-cm", "qemu72-legacy", "vm-flts-cm",
                 "qemu72-legacy-ats", "qemu72-legacy-cm-ats")  # the -ats ones: a device-TLB
    for profile in ("linux-6.1", "linux-6.12", "mainline")
    for dtype in ("dma", "dma_fq")
]


def digest(unit: str, profile: str, dtype: str) -> str:
    system = System.boot(unit, profile, qi_mode="async")
    info = system.probe("03:00.0", ats=unit.endswith("-ats"))
    domain = system.run(system.driver.domain_alloc_paging(system.iommu, dtype))
    system.run(system.driver.attach_dev(domain, info))
    cookie = IommuDmaCookie(system.driver, domain, IovaDomain(ncpus=2), ncpus=2)
    log: list = []
    op_mix(system, cookie, log)
    return hashlib.sha256(repr(log).encode()).hexdigest()[:16]


PINNED: dict[tuple, str] = {
    ('server-sm', 'linux-6.1', 'dma'): '496f269bcd089db3',
    ('server-sm', 'linux-6.1', 'dma_fq'): 'ee1e314e1a0dd498',
    ('server-sm', 'linux-6.12', 'dma'): '7d3ae4a5ecd2e4ff',
    ('server-sm', 'linux-6.12', 'dma_fq'): '8349c77c5f506293',
    ('server-sm', 'mainline', 'dma'): '7d3ae4a5ecd2e4ff',
    ('server-sm', 'mainline', 'dma_fq'): '441614c41cb816af',
    ('qemu72-legacy-cm', 'linux-6.1', 'dma'): '78b723d7bc589025',
    ('qemu72-legacy-cm', 'linux-6.1', 'dma_fq'): '797935f469583452',
    ('qemu72-legacy-cm', 'linux-6.12', 'dma'): '9987b973c17bb7d1',
    ('qemu72-legacy-cm', 'linux-6.12', 'dma_fq'): 'e31b1403b05f3243',
    ('qemu72-legacy-cm', 'mainline', 'dma'): '9987b973c17bb7d1',
    ('qemu72-legacy-cm', 'mainline', 'dma_fq'): '3f5134052df63e8d',
    ('qemu72-legacy', 'linux-6.1', 'dma'): 'c04f575f18d0cd8f',
    ('qemu72-legacy', 'linux-6.1', 'dma_fq'): '1e6d46bcfae0fe1f',
    ('qemu72-legacy', 'linux-6.12', 'dma'): 'd90e3aebce4b5b1c',
    ('qemu72-legacy', 'linux-6.12', 'dma_fq'): '83188a51555ad201',
    ('qemu72-legacy', 'mainline', 'dma'): 'd90e3aebce4b5b1c',
    ('qemu72-legacy', 'mainline', 'dma_fq'): '62126e71a51cb762',
    ('vm-flts-cm', 'linux-6.1', 'dma'): '5d94c028acfccd31',
    ('vm-flts-cm', 'linux-6.1', 'dma_fq'): 'e6e4e970abcd9c9b',
    ('vm-flts-cm', 'linux-6.12', 'dma'): 'd59efd0830e4b5fd',
    ('vm-flts-cm', 'linux-6.12', 'dma_fq'): '72234254921a353c',
    ('vm-flts-cm', 'mainline', 'dma'): 'd59efd0830e4b5fd',
    ('vm-flts-cm', 'mainline', 'dma_fq'): 'bf228ea9bf9f3dd8',
    ('qemu72-legacy-ats', 'linux-6.1', 'dma'): '3b72f69f25896dab',
    ('qemu72-legacy-ats', 'linux-6.1', 'dma_fq'): '250446a66b397b0f',
    ('qemu72-legacy-ats', 'linux-6.12', 'dma'): 'c4ad374c7fe134f7',
    ('qemu72-legacy-ats', 'linux-6.12', 'dma_fq'): 'f675171a4e5320a5',
    ('qemu72-legacy-ats', 'mainline', 'dma'): 'c4ad374c7fe134f7',
    ('qemu72-legacy-ats', 'mainline', 'dma_fq'): '16d3a02c574ed5d3',
    ('qemu72-legacy-cm-ats', 'linux-6.1', 'dma'): '4c8677005a89c18a',
    ('qemu72-legacy-cm-ats', 'linux-6.1', 'dma_fq'): '797935f469583452',
    ('qemu72-legacy-cm-ats', 'linux-6.12', 'dma'): '3982b15871e5d961',
    ('qemu72-legacy-cm-ats', 'linux-6.12', 'dma_fq'): '264c641bba8017e9',
    ('qemu72-legacy-cm-ats', 'mainline', 'dma'): '3982b15871e5d961',
    ('qemu72-legacy-cm-ats', 'mainline', 'dma_fq'): 'ac7c680c5b5a0b96',
}


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_op_steps_unchanged(case):
    assert digest(*case) == PINNED[case]
