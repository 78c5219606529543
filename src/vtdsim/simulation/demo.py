"""The guided demo (``vtdsim demo``, the main job's first part): Linux boots a unit, gives a
device a DMA domain, maps a buffer, the device DMAs through its device-TLB, the driver unmaps,
the stale DMA faults - then the same I/O under both driver profiles, with what it cost.

Everything goes through the one model: the driver's step generators on the direct executor,
the hardware's registers, queue, caches and walks, the endpoint's ATS flow.

Not modelled here: concurrency (that is ``vtdsim check``), lazy flushing (``vtdsim replay``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_map_page, iommu_dma_unmap_page
from vtdsim.driver.iova import IovaDomain
from vtdsim.hardware.descriptors import decode
from vtdsim.simulation.machine import build
from vtdsim.simulation.system import System

DEVICE = "01:00.0"  # behind a root port, with ATS, as in the legacy-cm-ats recording
NVME = "00:04.0"
BUFFER_SIZE = 8192

Out = Callable[[str], None]


def _descriptors(system: System, since: int, out: Out) -> int:
    """Print the descriptors submitted since index ``since``; return the new index."""
    for iqt, *desc in system.submitted[since:]:
        qws = tuple(desc[2:6])
        out(f"    IQT write #{iqt:<3} {decode(qws).describe()}")
    return len(system.submitted)


def _boot(preset: str, profile: str, out: Out) -> tuple[System, IommuDmaCookie]:
    system = build("bare", unit=preset, profile=profile).guest  # the one machine builder
    caps = system.unit.caps
    out(f"  unit {system.unit.name}: cap {caps.cap:x} ecap {caps.ecap:x} "
        f"(caching mode {int(caps.caching_mode)}, device-TLB {int(caps.dt)}, "
        f"{'scalable' if system.unit.ttm else 'legacy'} mode)")
    info = system.probe(DEVICE, ats=True)
    domain = system.attach([DEVICE])
    out(f"  {DEVICE} attached to {domain} as DID {domain.domain_id_iommu(system.iommu)}, "
        f"ATS {'on' if info.ats_enabled else 'off'}")
    return system, IommuDmaCookie(system.driver, domain, IovaDomain(ncpus=2), ncpus=2)


def _io(system: System, cookie: IommuDmaCookie, phys: int, data: bytes, out: Out | None):
    """Map, DMA twice, unmap, DMA again: one strict I/O and its stale retry."""
    say = out or (lambda _text: None)
    mark = len(system.submitted)
    iova = system.run(iommu_dma_map_page(cookie, phys, BUFFER_SIZE))
    say(f"  dma_map_page(phys={phys:#x}, {BUFFER_SIZE} bytes) -> iova {iova:#x}")
    if out:
        mark = _descriptors(system, mark, out)
    endpoint = system.endpoint(DEVICE)
    first = endpoint.dma_write(iova, data)
    second = endpoint.dma_read(iova, len(data))
    say(f"  device writes {len(data)} bytes at iova {iova:#x} -> host {first.hpa:#x} "
        f"(ATS translation request, device-TLB filled); reads back "
        f"{'the same bytes' if second.data == data else 'OTHER bytes'} (device-TLB hit)")
    system.run(iommu_dma_unmap_page(cookie, iova, BUFFER_SIZE))
    say("  dma_unmap_page (strict): the IOTLB, then the device-TLB are invalidated")
    if out:
        _descriptors(system, mark, out)
    stale = endpoint.dma_read(iova, len(data))
    if stale:
        say(f"  device retries the stale iova: REACHED host {stale.hpa:#x}")
    else:
        say(f"  device retries the stale iova: blocked - {stale.fault.describe()}")


def _untranslated_fault(system: System, out: Out) -> None:
    """A device without ATS hits an IOVA nobody mapped: the unit records a primary fault."""
    system.probe(NVME)
    system.attach([NVME])
    result = system.endpoint(NVME).dma_read(0xDEAD_0000, 8)
    out(f"  {NVME} (no ATS) reads unmapped iova 0xdead0000: {result.fault.describe()}")
    for index, fault in system.unit.faults.pending():
        out(f"    FRCD[{index}]: {fault.describe()}")


def run_demo(out: Out, *, preset: str = "qemu72-legacy-cm-ats", seed: int = 0) -> None:
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(64))
    phys = 0x4000_0000 + rng.randrange(0x1000) * 0x1000
    out(f"== Linux 6.1 on {preset} (seed {seed})")
    system, cookie = _boot(preset, "linux-6.1", out)
    _io(system, cookie, phys, data, out)
    _untranslated_fault(system, out)
    out("")
    out("== What one strict I/O costs, per driver profile")
    rows = []
    for profile in ("linux-6.1", "mainline"):
        system, cookie = _boot(preset, profile, lambda _text: None)
        before = system.costs()
        _io(system, cookie, phys, data, None)
        rows.append((profile, system.costs() - before))
    _cost_table(rows, out)


def _cost_table(rows, out: Out) -> None:
    keys = ["iqt_writes", "desc:iotlb_inv", "desc:dev_tlb_inv", "desc:inv_wait", "iotlb_hit",
            "iotlb_miss", "walks", "walk_reads", "faults"]
    notes = {"iqt_writes": "queue-tail writes (VM exits on a vIOMMU)"}
    out(f"  {'':<20}" + "".join(f"{name:>12}" for name, _ in rows))
    for key in keys:
        label = notes.get(key, key)
        out(f"  {key:<20}" + "".join(f"{counts[key]:>12}" for _, counts in rows)
            + (f"   {label}" if key in notes else ""))
