"""The machine a driver runs on: physical memory, the DRHD units (Linux's ``dmar_drhd_units``
list from the ACPI DMAR table), endpoints, CPUs, a simulated clock and the page allocator.

``wbinvd_works=False`` models KVM turning a guest WBINVD into a no-op when no non-coherent DMA
is registered for the VM (virt/kvm/vfio.c; seed 004).

Not modelled: CPU topology beyond a count, NUMA, interrupt delivery, more than one PCI segment.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vtdsim.driver.page_alloc import PageAllocator
from vtdsim.errors import BadInput
from vtdsim.hardware.memory import PhysicalMemory

DEFAULT_PAGE_BASE = 0x0100_0000  # 16 MiB: clear of the low memory firmware uses
DEFAULT_PAGE_LIMIT = 0x8000_0000  # 2 GiB of RAM, as in the recordings


class Platform:
    """Memory, units (index = ``MmioWrite.unit``), endpoints, CPUs, clock, pages."""

    def __init__(
        self,
        memory: PhysicalMemory,
        units: Iterable[Any],
        endpoints: Iterable[Any] = (),
        *,
        ncpus: int = 2,
        page_base: int = DEFAULT_PAGE_BASE,
        page_limit: int = DEFAULT_PAGE_LIMIT,
        wbinvd_works: bool = True,
    ):
        if ncpus < 1:
            raise BadInput(f"ncpus={ncpus}: a platform needs at least one CPU")
        self.memory = memory
        self.units = list(units)
        self.endpoints = list(endpoints)
        self.ncpus = ncpus
        self.pages = PageAllocator(page_base, page_limit)
        self.now_ns = 0
        self.wbinvd_works = wbinvd_works

    def unit(self, i: int):
        """Unit ``i``; BadInput naming the valid range otherwise."""
        if not 0 <= i < len(self.units):
            raise BadInput(f"no remapping unit {i}: the platform has {len(self.units)}")
        return self.units[i]

    def advance(self, ns: int) -> None:
        """Move the simulated clock forward (timers such as the flush queue's read it)."""
        if ns < 0:
            raise BadInput(f"cannot move the clock backwards by {ns} ns")
        self.now_ns += ns
