"""``vtdsim demo --platform bare|emulated|shadow|nested``: one strict map / DMA / unmap on a
built platform (``machine.build``) and what it cost there - queue-tail writes (VM exits on a
VM), descriptors, the VMM's page-walk reads, VFIO calls and pinned pages, the host's own
invalidations - then whether the unmapped IOVA is blocked.

Not modelled here: lazy unmaps (a strict I/O is the unit of cost), concurrency.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_map_page, iommu_dma_unmap_page
from vtdsim.driver.iova import IovaDomain
from vtdsim.simulation.machine import build

DEVICE = "01:00.0"
BUFFER_SIZE = 8192
ROWS = (
    ("guest_iqt_writes", "guest queue-tail writes"),
    ("exits", "VM exits (one per IQT write)"),
    ("exit_descriptors", "descriptors the VMM processed"),
    ("vmm_iotlb_miss", "QEMU's translations that walked (emulated DMA)"),
    ("vmm_walks", "VMM shadow page walks"),
    ("vmm_walk_reads", "guest PTEs the VMM read"),
    ("vfio_map_dma", "VFIO_IOMMU_MAP_DMA"),
    ("vfio_unmap_dma", "VFIO_IOMMU_UNMAP_DMA"),
    ("vfio_pinned_pages", "pages pinned"),
    ("iommufd_cache_invalidate", "iommufd cache invalidations"),
    ("host_pte_cmpxchg", "host PTE installs (cmpxchg)"),
    ("host_iqt_writes", "host queue-tail writes"),
    ("host_invalidations", "host invalidation descriptors"),
)


def one_io(platform: str, profile: str, vmm: str, seed: int):
    """Build ``platform``, attach the device, map / DMA / unmap once; (counts, DMA result,
    stale retry result, iova, buffer, VMM version, the I/O's exits with their work)."""
    rng = random.Random(seed)
    phys = 0x4000_0000 + rng.randrange(0x1000) * 0x1000
    machine = build(platform, profile=profile, vmm=vmm, record=True)
    machine.device(DEVICE)
    domain = machine.guest.attach([DEVICE])
    cookie = IommuDmaCookie(machine.guest.driver, domain, IovaDomain(ncpus=2), ncpus=2)
    before = machine.counts()
    iova = machine.guest.run(iommu_dma_map_page(cookie, phys, BUFFER_SIZE))
    endpoint = machine.dma_endpoint(DEVICE)
    data = bytes(rng.randrange(256) for _ in range(64))
    done = endpoint.dma_write(iova, data)
    machine.guest.run(iommu_dma_unmap_page(cookie, iova, BUFFER_SIZE))
    stale = endpoint.dma_read(iova, len(data))
    version = machine.vmm.version.name if machine.vmm else ""
    counts = machine.counts() - before
    exits = machine.vmm.exits[len(machine.vmm.exits) - counts["exits"]:] if version else []
    return counts, done, stale, iova, phys, version, exits


def run_platform_demo(out: Callable[[str], None], platforms: list[str], *,
                      profile: str = "linux-6.1", vmm: str = "qemu-7.2", seed: int = 0):
    rows = []
    for platform in platforms:
        counts, done, stale, iova, phys, version, exits = one_io(platform, profile, vmm, seed)
        where = f"host {done.hpa:#x}" if done else done.fault.describe()
        out(f"== {platform}: {profile} guest" + (f" on {version}" if version else "")
            + f"; dma_map_page(phys={phys:#x}) -> iova {iova:#x}; device writes -> {where}; "
            + ("stale retry REACHED memory" if stale else "stale retry blocked"))
        for n, work in enumerate(exits, 1):
            done_work = ", ".join(f"{k.removeprefix('vmm_')} {v}" for k, v in
                                  sorted(work.work.items()) if not k.startswith("exits_"))
            out(f"  exit {n}: {work.descriptors} descriptors; VMM work: {done_work or 'none'}")
        rows.append((platform, counts))
    out(f"  {'':<26}" + "".join(f"{name:>10}" for name, _ in rows))
    for key, label in ROWS:
        out(f"  {key:<26}" + "".join(f"{counts[key]:>10}" for _, counts in rows)
            + f"   {label}")
