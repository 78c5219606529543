"""What one strict DMA I/O costs on each platform (simulation.machine): bare metal, a guest on
QEMU's emulated unit, with the device assigned through VFIO (shadowed second stage) and through
iommufd (nested first stage) - per guest driver profile and VMM version, for a 4 KiB and a
64 KiB buffer: exits, descriptors, VMM page-walk reads, VFIO calls, host invalidations per
I/O, and the model's I/Os per second (wall time of this run, shared machine).  Columns: iqt
(guest queue-tail writes), descs (guest descriptors), exits, exit_descs (descriptors the VMM
processed), walk_reads (guest PTEs the VMM read), vfio_map / vfio_unmap (ioctls), fwd_inv
(iommufd cache invalidations forwarded), host_inv (host invalidation descriptors, waits
excluded).

Each I/O is dma_map_page, one device write, dma_unmap_page (strict), on a booted platform
with the device attached; the counts are averaged over ``--n`` I/Os.

Usage: python benchmarks/platforms.py [--n 200]
"""

from __future__ import annotations

import argparse
import json
import time

from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_map_page, iommu_dma_unmap_page
from vtdsim.driver.iova import IovaDomain
from vtdsim.simulation.machine import build

DEV = "01:00.0"
KEYS = ("guest_iqt_writes", "descriptors", "exits", "exit_descriptors", "vmm_walk_reads",
        "vfio_map_dma", "vfio_unmap_dma", "iommufd_cache_invalidate", "host_invalidations")
LABELS = ("iqt", "descs", "exits", "exit_descs", "walk_reads", "vfio_map", "vfio_unmap",
          "fwd_inv", "host_inv")
_VMMS = {"bare": ("-",), "emulated": ("qemu-7.2", "qemu-10.0"),
         "shadow": ("qemu-7.2", "qemu-10.0"), "nested": ("qemu-nesting-2026",)}
CASES = [(p, prof, v) for p in _VMMS for prof in ("linux-6.1", "mainline") for v in _VMMS[p]]


def measure(platform: str, profile: str, vmm: str, size: int, n: int) -> dict:
    machine = build(platform, profile=profile, vmm=vmm if vmm != "-" else "qemu-7.2")
    machine.device(DEV)
    domain = machine.guest.attach([DEV])
    cookie = IommuDmaCookie(machine.guest.driver, domain, IovaDomain(ncpus=2), ncpus=2)
    endpoint = machine.dma_endpoint(DEV)
    before = machine.counts()
    start = time.perf_counter()
    for i in range(n):
        phys = 0x4000_0000 + (i % 64) * size
        iova = machine.guest.run(iommu_dma_map_page(cookie, phys, size))
        endpoint.dma_write(iova, b"\x5a" * 64)
        machine.guest.run(iommu_dma_unmap_page(cookie, iova, size))
    elapsed = time.perf_counter() - start
    counts = machine.counts() - before
    row = {key: counts[key] / n for key in KEYS}
    row["ios_per_s"] = n / elapsed
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    figures = {}
    header = f"{'platform':<9} {'guest':<10} {'vmm':<17} {'size':>6}" + "".join(
        f"{label:>11}" for label in LABELS) + f"{'I/O per s':>11}"
    print(header)
    for platform, profile, vmm in CASES:
        for size in (4096, 65536):
            row = measure(platform, profile, vmm, size, args.n)
            figures[f"{platform}/{profile}/{vmm}/{size}"] = {k: round(v, 3)
                                                             for k, v in row.items()}
            print(f"{platform:<9} {profile:<10} {vmm:<17} {size:>6}"
                  + "".join(f"{row[k]:>11.2f}" for k in KEYS) + f"{row['ios_per_s']:>11.0f}")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
