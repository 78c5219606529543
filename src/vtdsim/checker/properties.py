"""The named properties of a VT-d world, decided from what its actors report (VT-d spec 6.5:
invalidation completes before software reuses what it unmapped; 6.1 caching mode; 3.9 snoop).

Every property judges against the page ledger (``lifecycle.PageLedger``, in ``System``):

* ``dma_after_free``: a DMA reaches only pages its device's domains own - a data page they
  mapped, in the page's current epoch; a page freed, or reused by anyone (a page table, another
  buffer), is a violation - unless the IOVA was unmapped lazily and the flush queue has not
  flushed it yet: that is lazy mode's accepted *exposure*, recorded in ``exposure`` (steps the
  page stayed reachable, pages) and not a violation;
* ``stale_after_strict_unmap``: when a synced unmap completes, no IOTLB entry of the domain's
  DIDs and no device-TLB entry of its devices still translates the IOVA;
* ``spurious_fault``: a DMA faults although a completed map (set-up or thread) of the domain
  its device (or PASID) is attached to covers the IOVA with the access's permission, the
  device is not inside an attach/detach, and the DMA is not declared ``expect_fault`` (the
  caching-mode map flush, spec 6.1; Linux's RID attach is not hitless);
* ``torn_entry``: every context- or PASID-cache entry the hardware held is a value the entry
  had between operations (set-up or an op's end), never a half-written one;
* ``no_snoop_coherent``: a CPU read of a page currently owned as a data page returns the last
  value DMA or the CPU stored there (zeroing included), when the domain enforces snooping or
  WBINVD works (seed 004); page-table walker reads are named as such;
* ``stale_after_pasid_teardown``, ``stale_after_context_change`` (seed 001): no translation
  of a PASID survives its ``remove_dev_pasid``; no PASID-cache/IOTLB entry fetched through a
  changed context entry survives ``context_flip_pri`` (``pasid_staleness.PasidWatch``);
* user assertions: ``(name, fn(system) -> message | None)`` checked after every step.

*Observations* (``OBSERVATIONS``) are outcomes the report shows - with a chain - although no
promise is broken: ``lazy_exposure`` (a DMA reached a page freed while its lazy unmap was
still queued) and ``no_snoop_stale_read`` (a CPU read of a data page returned stale data where
coherency is *not* promised: no enforcement and WBINVD a no-op, seed 004's corruption case).
``Monitor.observed`` keeps the first message of each; with ``watch`` naming one, it is also
flagged as a violation, which is how the shrinker finds its shortest chain.

Not modelled: walks that read a freed page-table page (only the final data page counts), the
wall-clock length of the lazy window (it is counted in steps), torn reads by a DMA walk that
leaves no cache entry behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vtdsim.checker.pasid_staleness import (
    STALE_AFTER_CONTEXT_CHANGE,
    STALE_AFTER_PASID_TEARDOWN,
    PasidWatch,
)
from vtdsim.checker.world import Violation
from vtdsim.driver import steps as st
from vtdsim.hardware.memory import PAGE_SIZE

DMA_AFTER_FREE = "dma_after_free"
STALE_AFTER_STRICT_UNMAP = "stale_after_strict_unmap"
SPURIOUS_FAULT = "spurious_fault"
TORN_ENTRY = "torn_entry"
NO_SNOOP_COHERENT = "no_snoop_coherent"
PROPERTIES = (DMA_AFTER_FREE, STALE_AFTER_STRICT_UNMAP, SPURIOUS_FAULT, TORN_ENTRY,
              NO_SNOOP_COHERENT, STALE_AFTER_PASID_TEARDOWN, STALE_AFTER_CONTEXT_CHANGE)
LAZY_EXPOSURE = "lazy_exposure"
NO_SNOOP_STALE_READ = "no_snoop_stale_read"
OBSERVATIONS = (LAZY_EXPOSURE, NO_SNOOP_STALE_READ)
_PAGE_MASK = ~(PAGE_SIZE - 1)
WALKER_READS = frozenset({"pfn_to_dma_pte"})  # the driver's page-table walker (pgtable.py)

Assertion = tuple[str, Callable[[Any], str | None]]


@dataclass
class Exposure:
    """Lazy mode's window for one freed page: when it was freed, how long DMA reached it."""

    page: int
    freed_at: int
    last_reached: int = -1

    @property
    def steps(self) -> int:
        return max(self.last_reached - self.freed_at, 0)


@dataclass
class Monitor:
    """Per-execution bookkeeping of the properties; ``system`` is the world's copy, whose
    ``ledger`` (``lifecycle.PageLedger``) holds page owners, grants, mappings and contents."""

    system: Any
    stable: dict  # (cache, key) -> set of raw values seen between operations
    assertions: list[Assertion] = field(default_factory=list)
    found: list[Violation] = field(default_factory=list)
    lazy: dict[int, tuple[Any, int]] = field(default_factory=dict)  # page -> (fq, counter)
    exposure: dict[int, Exposure] = field(default_factory=dict)
    seen: set = field(default_factory=set)  # (cache, key, raw) the hardware held
    clock: int = 0  # the world's step number (set before each step)
    pasids: PasidWatch | None = None  # seed 001's properties (built here)
    observed: dict[str, str] = field(default_factory=dict)  # observation -> first message
    watch: frozenset = frozenset()  # observations also flagged as violations (shrinking)
    # The raw event log (tuples, in order) an independent oracle re-derives properties from
    # (tests/checker/oracle.py): ("free"|"alloc", page), ("grant", domain, page),
    # ("attach", device, pasid, domain), ("dma", device, pasid, pages) of a successful DMA.
    events: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pasids = PasidWatch(self.system, self.flag)

    @property
    def ledger(self):
        return self.system.ledger

    @property
    def freed(self) -> dict[int, int]:
        """Pages freed at least once (page -> the step of the last free)."""
        return self.ledger.freed_at

    def flag(self, prop: str, message: str) -> str:
        self.found.append(Violation(prop, message))
        return prop

    def observe(self, name: str, message: str) -> None:
        self.observed.setdefault(name, message)
        if name in self.watch:
            self.flag(name, message)

    # -- thread events ----------------------------------------------------------------------
    def op_begin(self, thread: str, op) -> None:
        self.pasids.op_begin(op)
        self.ledger.op_begin(op, self.system, thread)
        if op.kind in ("map", "dma_map"):
            self.events.append(("grant", op["domain"], self.system.pages[op["page"]]))
        elif op.kind in ("attach", "set_dev_pasid"):
            self.events.append(("attach", op["device"], op.args.get("pasid"), op["domain"]))

    def op_done(self, thread: str, op, value: Any) -> None:
        self.ledger.op_done(op, value, self.system, thread)
        if op.kind == "unmap" and op["sync"]:
            self._strict_unmap_done(op["domain"], op["iova"], op["size"])
        elif op.kind == "dma_unmap":
            self._dma_unmap_done(op)
        self.pasids.op_done(op, self.clock)
        self._note_stable()

    def _dma_unmap_done(self, op) -> None:
        cookie = self.system.cookies.get(op["domain"])
        page = self.system.iova_pages.get((op["domain"], op["iova"] & _PAGE_MASK))
        if cookie is not None and cookie.fq is not None and page is not None:
            self.lazy[page] = (op["domain"], cookie.fq.flush_start_cnt)
        else:
            self._strict_unmap_done(op["domain"], op["iova"], op["size"])

    def thread_step(self, thread: str, step: st.Step, reply: Any, skipped: bool,
                    op=None) -> None:
        if skipped:
            return
        self.ledger.clock = self.clock
        self.ledger.step(step, reply, op, self.system.platform.memory)
        if isinstance(step, st.FreePage):
            self.events.append(("free", step.addr & _PAGE_MASK))
        elif isinstance(step, st.AllocPage) and isinstance(reply, int):
            self.events.append(("alloc", reply & _PAGE_MASK))
        if isinstance(step, st.CpuRead) and self.ledger.is_data(step.addr):
            self._cpu_read(step, reply)
        self._check_assertions()

    # -- hardware events --------------------------------------------------------------------
    def hardware_step(self, sid: int | None = None, via: int | None = None) -> None:
        """After a fill, DMA or ATS request of the device ``sid``; ``via``: the context entry a
        dry walk read (``PasidWatch.filled``)."""
        if sid is not None:
            self.pasids.filled(sid, via)
        unit = self.system.unit(0)
        for cache in (unit.context_cache, unit.pasid_cache):
            for key, entry in cache.items():
                if getattr(entry, "present", True):
                    self.seen.add((cache.name, key, entry.raw))
        self._check_assertions()

    def dma(self, device: str, iova: int, write: bool, result, clock: int,
            pasid: int | None = None, expect_fault: bool = False) -> str | None:
        """Returns the property the DMA violated (for the counterexample's chain)."""
        if result.fault is not None:
            return None if expect_fault else self._fault(device, iova, write, result.fault,
                                                           pasid)
        stale = self.pasids.dma(device, pasid, iova, result)
        self.events.append(("dma", device, pasid, tuple(h & _PAGE_MASK for h in result.pages)))
        domains = self.ledger.domains_of(device, pasid)
        for hpa in result.pages:
            owner = self.ledger.foreign(hpa, domains)
            if owner is not None:
                granted = self.ledger.granted_by(hpa, domains)
                return self._reached_foreign(hpa & _PAGE_MASK, iova, owner, write,
                                             granted) or stale
        if write and result.pages:
            self.ledger.dma_stored(result.pages[0], self.system.platform.memory)
        return stale

    def _fault(self, device: str, iova: int, write: bool, fault,
               pasid: int | None) -> str | None:
        """A fault is spurious when a completed map of the domain the device (or the PASID)
        is attached to covers the IOVA with the access's permission, and no attach or detach
        of it is under way (Linux's RID attach blocks translation first: not hitless)."""
        ledger = self.ledger
        domain = (self.system.domain_of(device) if pasid is None
                  else self.system.pasid_members.get((device, pasid)))
        mapping = None if ledger.in_transit(device, pasid) else ledger.maps(domain, iova, write)
        if mapping is None:
            return None
        return self.flag(SPURIOUS_FAULT, f"{device} faulted at iova={iova:#x}, mapped in "
                                         f"{domain} by {mapping.origin}: "
                                         f"{describe_fault(fault)}")

    def _reached_foreign(self, page: int, iova: int, owner, write: bool,
                         granted: str) -> str | None:
        kind = "write" if write else "read"
        freed = self.freed.get(page)
        when = f", freed at step {freed}" if freed is not None else ""
        when += f"; mapped by {granted}" if granted else "; never mapped in its domain"
        lazy = self.lazy.get(page)
        if lazy is not None and freed is not None and self._window_open(*lazy):
            window = self.exposure.setdefault(page, Exposure(page, freed))
            window.last_reached = self.clock
            self.observe(LAZY_EXPOSURE, f"DMA {kind} at iova={iova:#x} reached page={page:#x} "
                                        f"({owner.describe()}{when}), its unmap still queued")
            return None
        return self.flag(DMA_AFTER_FREE, f"DMA {kind} at iova={iova:#x} reached page="
                                         f"{page:#x}, now {owner.describe()}{when}")

    def _window_open(self, domain: str, counter: int) -> bool:
        fq = self.system.cookies[domain].fq
        return fq.flush_finish_cnt <= counter

    # -- checks -----------------------------------------------------------------------------
    def _strict_unmap_done(self, domain_name: str, iova: int, size: int) -> None:
        system = self.system
        domain = system.domains[domain_name]
        dids = set(system.dids(domain))
        unit = system.unit(0)
        for first in range(iova & _PAGE_MASK, iova + size, PAGE_SIZE):
            for key in unit.iotlb.keys():  # noqa: SIM118 - LruCache has no __iter__
                entry = unit.iotlb.peek(key)
                if key[0] in dids and entry.present and _covers(entry, first):
                    self.flag(STALE_AFTER_STRICT_UNMAP, f"iotlb still maps iova={first:#x} "
                                                        f"(did={key[0]}) after the unmap")
            for dev in system.devices_of(domain_name):
                self._host_iotlb_maps(dev, first)
                if _atc_maps(system.endpoint(dev).device_tlb, first):
                    self.flag(STALE_AFTER_STRICT_UNMAP, f"device-TLB of {dev} still maps "
                                                        f"iova={first:#x} after the unmap")

    def _host_iotlb_maps(self, device: str, iova: int) -> None:
        """An assigned device's guest IOVA is translated by the host unit (VFIO's shadow, the
        nested HWPT): the guest's strict unmap returned only after the VMM's exit had that
        unit invalidate it (vfio_dma_do_unmap, intel_nested_cache_invalidate_user)."""
        unit, dids = self.system.host_dids(device)
        if unit is None:
            return
        for key in unit.iotlb.keys():  # noqa: SIM118 - LruCache has no __iter__
            entry = unit.iotlb.peek(key)
            if key[0] in dids and entry.present and _covers(entry, iova):
                self.flag(STALE_AFTER_STRICT_UNMAP, f"host iotlb still maps iova={iova:#x} "
                                                    f"of {device} (host did={key[0]}) after "
                                                    "the unmap")

    def _cpu_read(self, step: st.CpuRead, value: int) -> None:
        """A read of a data page (its current owner is a data page) must return the last
        value the CPU or a DMA stored there, where coherency is promised."""
        addr = step.addr
        expected = self.ledger.latest.get(addr & ~7)
        if expected is None or (addr & 7) + step.size > 8:
            return
        expected = expected >> 8 * (addr & 7) & ((1 << 8 * step.size) - 1)
        if value == expected:
            return
        who = "page-table walker read" if step.why in WALKER_READS else "CPU read"
        message = f"{who} [{addr:#x}]={value:#x}, last written {expected:#x}"
        if self.system.coherency_promised():
            self.flag(NO_SNOOP_COHERENT, message)
        else:  # nothing promised: the driver's data is corrupted, which the report shows
            self.observe(NO_SNOOP_STALE_READ, message + " (no enforcement, WBINVD a no-op)")

    def _note_stable(self) -> None:
        for key, raw in self.system.entry_values():
            self.stable.setdefault(key, set()).add(raw)

    def _check_assertions(self) -> None:
        for name, check in self.assertions:
            message = check(self.system)
            if message:
                self.flag(name, message)

    def final(self) -> list[Violation]:
        torn = [(c, k, raw) for c, k, raw in sorted(self.seen, key=repr)
                if raw not in self.stable.get((c, k), ())]
        return [Violation(TORN_ENTRY, f"{c}[{k}] held raw={raw:#x}, a value the entry had "
                                      "only half-way through an update") for c, k, raw in torn]


def describe_fault(fault) -> str:
    """A fault in the field's words: reason name and code, SID as BB:DD.F, address in hex."""
    describe = getattr(fault, "describe", None)
    return describe() if describe is not None else str(fault)


def _covers(entry, iova: int) -> bool:
    size = PAGE_SIZE << 9 * (entry.level - 1)
    return entry.iova_base <= iova < entry.iova_base + size


def _atc_maps(device_tlb, iova: int) -> bool:
    """A device-TLB entry (any PASID) translating ``iova``: a peek, no stats."""
    return any(e.base <= iova < e.base + e.size and (e.read or e.write)
               for _, e in device_tlb.items())
