"""The VT-d world the interleaving checker explores: driver threads and bounded hardware
freedoms over one copy of a booted system (the ``world.World``/``world.Model`` adapter).

A ``VtdModel`` holds a *template* system (booted, set up, ready for the threads) and the actor
list; ``new_world()`` deep-copies the template (RemappingUnit, memory and driver objects all
support it; closures are re-bound to the copy) so that building a world costs one copy, not a
boot.  Driver steps are applied through the ``DirectExecutor``'s per-step handlers, so a step
means exactly what it means in a direct run; only blocking differs - a lock or wait that cannot
complete leaves the thread blocked (``Stepper.ready``) instead of stepping the hardware.

Not modelled: several remapping units (actors drive unit 0), CPU migration of threads, time
(the flush-queue timer fires whenever its actor is scheduled once armed).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtdsim.checker import actors as ac
from vtdsim.checker import continuations as cont
from vtdsim.checker import verdict_locations as vl
from vtdsim.checker.lifecycle import PageLedger
from vtdsim.checker.properties import PROPERTIES, Assertion, Monitor
from vtdsim.checker.world import Footprint, StepRecord, Violation
from vtdsim.driver import steps as st
from vtdsim.hardware.descriptors import devtlb_range
from vtdsim.hardware.global_command import requested_commands
from vtdsim.hardware.memory import LINE_SIZE, PAGE_SIZE
from vtdsim.hardware.request import format_sid

DMAR_GCMD_REG = 0x18
HOST_UNIT = 1  # the host unit's index in cache locations (unit 0 is the guest's)
HOST = ("host",)  # the host unit's translation state: its tables, context, registers
_STORE_SIZES = {st.CpuWrite: lambda s: s.size, st.CpuCmpxchg: lambda s: 8,
                st.CpuZero: lambda s: s.size}
# The most entries one request inserts: context, PASID, IOTLB, four paging-structure levels,
# the device-TLB (a translation fills each cache at most once).
_MAX_INSERTS = 8


# -- the system a world runs on -----------------------------------------------------------------
@dataclass
class System:
    """A booted machine plus the names the scenario gave its parts."""

    platform: Any
    executor: Any
    driver: Any = None
    domains: dict = field(default_factory=dict)  # name -> DmarDomain
    devices: dict = field(default_factory=dict)  # name -> DeviceInfo (or None)
    endpoints: dict = field(default_factory=dict)  # name -> Endpoint
    cookies: dict = field(default_factory=dict)  # domain name -> IommuDmaCookie
    pages: dict = field(default_factory=dict)  # data page name -> physical address
    members: dict = field(default_factory=dict)  # device name -> domain name
    pasid_members: dict = field(default_factory=dict)  # (device, pasid) -> domain name
    iova_pages: dict = field(default_factory=dict)  # (domain, iova page) -> data page
    force_snoop: bool = False
    ledger: PageLedger = field(default_factory=PageLedger)  # page owners, grants, contents
    machine: Any = None  # the builder's Machine (simulation.machine): VMM, host, backends
    assigned: set = field(default_factory=set)  # devices whose DMA the host unit translates
    setup_ops: list = field(default_factory=list)  # "set-up map(...)", in [[setup]] order
    setup_writes: dict = field(default_factory=dict)  # qword -> the set-up op that stored it
    setup_current: int | None = None  # the set-up op running (boot)

    def note_setup_store(self, step, index: int | None) -> None:
        """A store's qwords were last written by set-up op ``index`` (None: by a thread)."""
        size = _STORE_SIZES.get(type(step))
        if size is None:
            return
        span = range(step.addr & ~7, step.addr + (size(step)), 8)
        for qword in span:
            if index is None:
                self.setup_writes.pop(qword, None)
            else:
                self.setup_writes[qword] = index

    def setup_causes(self, addrs) -> tuple:
        """The set-up ops (index, label) whose stores a walk reading ``addrs`` read."""
        found = {self.setup_writes[a & ~7] for a in addrs if a & ~7 in self.setup_writes}
        return tuple((i, self.setup_ops[i]) for i in sorted(found))

    def unit(self, i: int):
        return self.platform.units[i]

    def endpoint(self, name: str):
        return self.endpoints[name]

    @property
    def data_pages(self) -> set:
        return set(self.pages.values())

    def domain_of(self, device: str) -> str | None:
        return self.members.get(device)

    def devices_of(self, domain: str) -> list[str]:
        return sorted(d for d, dom in self.members.items() if dom == domain)

    def dids(self, domain) -> list[int]:
        """The DIDs a domain uses on unit 0 (``domain_id_iommu``)."""
        iommus = getattr(domain, "iommus", None)
        if iommus is None:
            return [getattr(domain, "did", 0)]
        return [info.did for info in iommus()]

    def host_dids(self, device: str) -> tuple[Any, set[int]]:
        """(host unit, DIDs) translating an assigned device's guest IOVAs (VFIO's shadow
        domain, iommufd's nested HWPT); (None, set()) for any other device."""
        if device not in self.assigned:
            return None, set()
        key = format_sid(self.endpoints[device].sid)
        domain = self.machine.host_domain(key)
        if domain is None:
            return None, set()
        return self.machine.host.unit, {info.did for info in domain.iommus()}

    def coherency_promised(self) -> bool:
        """No-snoop DMA must look coherent: the domain blocks no-snoop, or WBINVD works."""
        forced = any(getattr(d, "force_snooping", False) for d in self.domains.values())
        return forced or self.force_snoop or self.platform.wbinvd_works

    def entry_values(self) -> list[tuple[tuple, int]]:
        """(cache, key) -> raw of every context/PASID entry current memory holds for the
        scenario's devices (what a fill would read now): RID_PASID and each attached PASID."""
        unit = self.unit(0)
        found = []
        requests = [(ep.sid, None) for ep in self.endpoints.values()]
        requests += [(self.endpoints[d].sid, p) for d, p in sorted(self.pasid_members)]
        for sid, pasid in requests:
            for fill in unit.possible_fills(sid, 0, pasid):
                if fill.cache in ("context_cache", "pasid_cache"):
                    found.append(((fill.cache, fill.key), fill.entry.raw))
        return found


# -- applying steps -----------------------------------------------------------------------------
class Stepper:
    """Applies driver steps with the DirectExecutor's semantics; knows when one may run and
    what it touches."""

    def __init__(self, world: VtdWorld):
        self.world = world
        system = world.system
        self.executor = system.executor
        self.memory = system.platform.memory
        self.platform = system.platform
        machine = system.machine
        self.vmm = machine.vmm if machine is not None else None
        self.exit_work = ""  # what the VMM did in the exit of the last register write

    def ready(self, step: st.Step, skipped: bool) -> bool:
        return skipped or self.executor.ready(step)

    def apply(self, step: st.Step, thread: str) -> Any:
        self.exit_work = ""
        if self.vmm is None or type(step) is not st.MmioWrite:
            reply = self.executor.apply(step)
        else:
            before = self.vmm.stats.copy()
            reply = self.executor.apply(step)
            self.exit_work = exit_work(self.vmm.stats - before)
        if self.world.system.setup_writes:
            self.world.system.note_setup_store(step, None)  # a thread's store: no longer set-up's
        return reply

    def footprint(self, step: st.Step) -> Footprint:
        return _STEP_FOOTPRINTS[type(step)](self, step)

    # -- helpers for the footprint table ---------------------------------------------------
    def store(self, addr: int, size: int) -> Footprint:
        """A CPU store changes the CPU view only (the line may be filled from DRAM); with a
        write buffer it also posts the line, which changes what the unit reads (spec 6.8)."""
        dram = self.dram(addr, size)
        posted = dram if self.memory.write_buffer else set()
        return ac.fp(dram, self.mem(addr, size) | posted)

    def dram(self, addr: int, size: int) -> set:
        universe = self.world.universe
        return mem_locations(addr, size, universe.status_pages, "dram", universe.grain)

    def mem(self, addr: int, size: int) -> set:
        universe = self.world.universe
        locs = mem_locations(addr, size, universe.status_pages, "mem", universe.grain)
        page = addr & ~(PAGE_SIZE - 1)
        if page in self.world.recycled:
            locs.add(("page", page))
        if page in self.world.system.data_pages:
            locs.add(ac.DATA)
        if page in self.world.recycled or page in self.world.system.data_pages:
            locs.add(vl.owner(page))  # the ledger judges a CPU access by the page's owner
        return locs

    def alloc_page(self) -> Footprint:
        """The allocator's order, and the page it hands out next (LIFO: knowable now)."""
        nxt = self.platform.pages.peek()
        owner = {vl.owner(nxt)} if nxt is not None else set()
        return ac.fp(writes={ac.ALLOC, ac.DATA} | owner)

    def free_page(self, addr: int) -> Footprint:
        """The page's owner; the allocator's order only while an op that may allocate is left
        (two frees then commute: no allocation can tell their order)."""
        order = {ac.ALLOC} if self.world.may_allocate() else set()
        return ac.fp(writes={vl.owner(addr)} | order)

    def mmio_write(self, step: st.MmioWrite) -> Footprint:
        location = ac.reg(step.unit, step.offset)
        if location[2] == "IQT":
            return self._iqt_write(step, location)
        if location[2] == "FSTS":
            # RW1C of IQE/ICE/ITE; FECTL.IP clears once nothing is pending (10.4.10).
            return ac.fp(writes={location, ac.fault_location(step.unit)})
        # Any other register (GCMD, CCMD, IOTLB ...) may change translation or caches, and
        # GCMD.WBF drains the write buffer (spec 6.8): posted lines become visible.
        posted = {loc for loc in ac.whole_lines(self.memory.posted_lines(),
                                                self.world.universe.grain) if loc[0] == "dram"}
        if step.offset == DMAR_GCMD_REG and requested_commands(
                step.value, self.platform.unit(step.unit).regs["GSTS"]) == ["wbf"]:
            return ac.fp(writes={location} | posted)  # a write-buffer flush and nothing else
        done = ac.fp(writes={location} | posted | self.world.universe.everything(step.unit))
        return self._with_exit(done)

    def _with_exit(self, done: Footprint) -> Footprint:
        """On a VM a guest register write is a VM exit, atomic for the vCPU that makes it:
        QEMU's handler (``vtd_handle_iqt_write``, ``vtd_handle_gcmd_te``/``_srtp``) reads the
        guest's remapping structures fresh - root, context and PASID entries, the shadow
        walk's page tables: every page the guest's driver allocated, data pages aside - and
        changes the host side: VFIO map/unmap with the host driver's own invalidations,
        iommufd binds and forwarded flushes (``HOST``, the host unit's caches)."""
        if self.world.system.machine is None or self.world.system.machine.vmm is None:
            return done
        # A data page recycled as a table is written under DATA (``mem``): reading DATA keeps
        # the exit ordered with stores to it without reading every data line.
        reads = {ac.DATA}
        data = self.world.system.data_pages
        for page in sorted(self.platform.pages.allocated - data):
            reads |= self.mem(page, PAGE_SIZE) | self.dram(page, PAGE_SIZE)
        writes = {HOST} | self.world.universe.everything(HOST_UNIT)
        return Footprint(done.reads | frozenset(reads) | writes, done.writes | writes,
                         done.guard)


    def _iqt_write(self, step: st.MmioWrite, location: tuple) -> Footprint:
        """Publishing slots; with ``qi_mode`` "sync" the unit also performs them inside the
        write (InvalidationQueue.process), so the write touches what each descriptor does."""
        published = self._published(step)
        if self.platform.unit(step.unit).qi_mode != "sync":
            return ac.fp(writes={location} | published)
        reads, writes = set(), {location} | published
        for slot in sorted(published):
            done = ac.slot_footprint(self.world, step.unit, slot[2])
            reads |= done.reads - {slot}
            writes |= done.writes
        return self._with_exit(ac.fp(reads, writes))

    def _published(self, step: st.MmioWrite) -> set:
        """The slots an IQT write hands to the hardware: from the old tail to the new one (a
        tail that is not a valid slot offset may publish anything)."""
        queue = self.platform.unit(step.unit).queue
        size, width, new = queue.size, queue.width, step.value
        if new >= size or new % width:
            return {slot_location(step.unit, off) for off in range(0, size, width)}
        found, off = set(), queue.tail
        while off != new:
            found.add(slot_location(step.unit, off))
            off = (off + width) % size
        return found

    def wait_word(self, step: st.WaitQword) -> set:
        """What a WaitQword polls: the status words its mask covers, else the line."""
        if step.addr & ~(PAGE_SIZE - 1) in self.world.universe.status_pages:
            return {("status", step.addr + 4 * i) for i in (0, 1)
                    if step.mask >> 32 * i & 0xFFFF_FFFF}
        grain = self.world.universe.grain  # a CPU load: cache, else DRAM
        return {ac.line(step.addr, grain), ac.dram_line(step.addr, grain)}

    def dirty(self) -> set:
        universe = self.world.universe
        return {loc for a in self.memory.dirty_lines() for view in ("mem", "dram")
                for loc in mem_locations(a, LINE_SIZE, universe.status_pages, view,
                                         universe.grain)}

    def clflush(self, addr: int, size: int) -> Footprint:
        """A clflush writes each dirty line back and drops it.  Per line (grain): it changes
        the CPU view of nothing and DRAM of the whole line.  Per qword (no write buffer):
        a qword's cached copy differs from DRAM only after a CPU store to it (device writes
        to these pages are snooped and update both; non-snooped ones reach data pages,
        ``("data",)``), so the write-back changes exactly the qwords that differ now, and
        whether one differs depends on both views of every qword of the line."""
        universe = self.world.universe
        first = addr & ~(LINE_SIZE - 1)
        whole = first, ((addr + size - 1) | (LINE_SIZE - 1)) + 1 - first  # whole lines
        extra = self.mem(*whole) - {loc for loc in self.mem(*whole) if loc[0] == "mem"}
        if universe.grain == LINE_SIZE:
            return ac.fp(writes=self.mem(*whole) | self.dram(*whole))
        views = self.mem(*whole) | self.dram(*whole)
        memory = self.memory
        dirty = set(memory.dirty_lines())
        changed = {("dram", loc[1]) for loc in views if loc[0] == "mem"
                   and loc[1] & ~(LINE_SIZE - 1) in dirty
                   and memory.cpu_load(loc[1], 8) != memory.dram_qword(loc[1])}
        return ac.fp(reads=views, writes=changed | extra)


def _continuation(base: Footprint, level: int) -> Footprint:
    """A thread transition's footprint once its driver code is known (``continuations``):
    code that touched no bookkeeping drops ``("drv",)``, code that only read it reads it; both
    read ``("pgtable",)`` (a table's ``force_snoop``)."""
    if ac.DRV not in base.writes:
        return base
    if level == cont.WRITE_LEVEL:  # unreviewed code: any bookkeeping, named fields too
        return Footprint(base.reads | cont.FIELDS, base.writes | cont.FIELDS, base.guard)
    reads = (base.reads | {ac.PGTABLE}) - cont.FIELDS  # the prediction's fields: not touched
    writes = base.writes - {ac.DRV} - cont.FIELDS
    if level == cont.PURE_LEVEL:
        reads = reads - {ac.DRV}
    if level == cont.FIELD_LEVEL:  # map_pages: sets has_mappings, reads the table
        reads, writes = reads - {ac.DRV}, writes | {cont.HAS_MAPPINGS}
    return Footprint(reads | writes, writes, base.guard)


# The VMM's work a counterexample names (vmm.Vmm.stats keys): what reaches a device's DMA.
_EXIT_WORK = (("vmm_vfio_map_dma", "VFIO map"), ("vmm_vfio_unmap_dma", "VFIO unmap"),
              ("vmm_iommufd_cache_invalidate", "iommufd flush"),
              ("vmm_notify_deviotlb_unmap", "DEVIOTLB_UNMAP"))


def exit_work(done: Counter) -> str:
    """``exit: VFIO unmap x1, ...`` for one VM exit's work (empty when it reached no
    listener)."""
    parts = [f"{name} x{done[key]}" for key, name in _EXIT_WORK if done[key]]
    return "exit: " + ", ".join(parts) if parts else ""


def slot_location(unit: int, offset: int) -> tuple:
    """A queue slot's publication: written by the IQT write that hands it to the hardware,
    read (and guarded on) by the queue engine when it fetches the slot (spec 6.5.2)."""
    return ("qslot", unit, offset)


def mem_locations(addr: int, size: int, status_pages, view: str = "mem",
                  grain: int = LINE_SIZE) -> set:
    """Cells (lines, or qwords: ``Universe.grain``) of one view ("mem": the CPU's view;
    "dram": what a non-snooped access sees) - except on a queue's status page
    (``desc_status``), whose 32-bit words are written by one CPU or by wait descriptors and
    read by their own submitter only, always coherently (snooped stores, plain loads): there
    each word is its own location, in both views."""
    if addr & ~(PAGE_SIZE - 1) in status_pages:
        return {("status", a) for a in range(addr & ~3, addr + size, 4)}
    first = addr & ~(grain - 1)
    return {(view, a) for a in range(first, addr + size, grain)}


def _wait_fp(locations: set, unit: int = 0) -> Footprint:
    guard = locations | {ac.reg(unit, 0x34)}
    return ac.fp(guard, (), guard)


_STEP_FOOTPRINTS = {
    st.CpuWrite: lambda s, x: s.store(x.addr, x.size),
    st.CpuCmpxchg: lambda s, x: s.store(x.addr, 8),
    st.CpuZero: lambda s, x: s.store(x.addr, x.size),
    st.CpuRead: lambda s, x: ac.fp(reads=s.mem(x.addr, x.size) | s.dram(x.addr, x.size)),
    st.Clflush: lambda s, x: s.clflush(x.addr, 1),
    st.ClflushRange: lambda s, x: s.clflush(x.addr, x.size),
    st.Wbinvd: lambda s, x: ac.fp(writes=s.dirty() | {ac.DATA}),
    st.MmioWrite: Stepper.mmio_write,
    st.MmioRead: lambda s, x: ac.fp(reads={ac.reg(x.unit, x.offset)}),
    st.WaitQword: lambda s, x: _wait_fp(s.wait_word(x)),
    st.WaitRegister: lambda s, x: _wait_fp({ac.reg(x.unit, x.offset)}, x.unit),
    st.Lock: lambda s, x: ac.fp(writes={("lock", x.name)}, guard={("lock", x.name)}),
    st.Unlock: lambda s, x: ac.fp(writes={("lock", x.name)}),
    # A page changing hands changes how the ledger judges a DMA or a CPU read of it.
    st.AllocPage: lambda s, x: s.alloc_page(),
    st.FreePage: lambda s, x: s.free_page(x.addr),
    st.ReuseIova: lambda s, x: ac.fp(),
    st.Annotate: lambda s, x: ac.fp(),
}


# -- abstract cache locations over the bounded IOVA universe -----------------------------------
class Universe:
    """The scenario's devices and IOVA pages: the finite set of cache locations."""

    def __init__(self, devices: dict[str, int], atc: set[str], iovas: list[int],
                 assigned: frozenset = frozenset()):
        self.sids = devices  # name -> sid
        self.atc = atc  # devices with a device-TLB
        self.pages = sorted({i & ~(PAGE_SIZE - 1) for i in iovas})
        self.status_pages: frozenset = frozenset()  # set by VtdModel from the booted driver
        self.assigned = assigned  # devices whose DMA the host unit translates (HOST_UNIT)
        # The cell of a memory location (set by VtdModel): a qword, or a line when the unit
        # has a write buffer (a store then posts its whole line: spec 6.8).
        self.grain = LINE_SIZE

    def cache_locations(self, device: str, iova: int, cache: str) -> set:
        """Every location a request of ``device`` at ``iova`` may read or fill in ``cache``:
        the IOTLB and paging-structure-cache keys of each level that covers the IOVA."""
        sid, page = self.sids[device], iova & ~(PAGE_SIZE - 1)
        unit = HOST_UNIT if device in self.assigned else 0
        if cache == "context_cache":
            return {("cc", unit, sid)}
        if cache == "pasid_cache":
            return {("pc", unit, sid)}
        if cache == "iotlb":
            return {("tlb", unit, lvl, page >> _tlb_shift(lvl)) for lvl in _TLB_LEVELS}
        return {("psc", unit, lvl, page >> _psc_shift(lvl)) for lvl in _PSC_LEVELS}

    @staticmethod
    def key_location(cache: str, key, unit: int = 0) -> tuple:
        """The location of one cache key (key shapes: caches/*.py): a large-page IOTLB entry
        or a paging-structure entry is one location shared by every page it covers."""
        if cache == "context_cache":
            return ("cc", unit, key)
        if cache == "pasid_cache":
            return ("pc", unit, key[0])
        if cache == "iotlb":
            return ("tlb", unit, key[2], key[3])
        return ("psc", unit, key[3], key[4])

    def unit_of(self, device: str) -> int:
        """The unit whose caches a device's requests use: the host's for an assigned one."""
        return HOST_UNIT if device in self.assigned else 0

    def unmap_check(self, op) -> set:
        """What the monitor reads when a synced unmap ends (stale_after_strict_unmap): the
        IOTLB and device-TLB locations of the unmapped range."""
        if op.kind not in ("unmap", "dma_unmap") or not op.args.get("sync", True):
            return set()
        start = op["iova"] & ~(PAGE_SIZE - 1)
        end = op["iova"] + op["size"]
        pages = [p for p in self.pages if start <= p < end]
        units = (0, HOST_UNIT) if self.assigned else (0,)
        found = {("tlb", u, lvl, p >> _tlb_shift(lvl))
                 for u in units for p in pages for lvl in _TLB_LEVELS}
        return found | {("atc", self.sids[d], p) for d in self.atc for p in pages}

    def device_locations(self, device: str, iova: int) -> set:
        found = set()
        for cache in ("context_cache", "pasid_cache", "iotlb", "pscache"):
            found |= self.cache_locations(device, iova, cache)
        if device in self.atc:
            found.add(("atc", self.sids[device], iova & ~(PAGE_SIZE - 1)))
        return found

    def everything(self, unit: int) -> set:
        found = {(c, unit, sid) for c in ("cc", "pc") for sid in self.sids.values()}
        found |= self._keys(unit, 0, 1 << 64, psc=True)
        found |= {("atc", self.sids[d], p) for d in self.atc for p in self.pages}
        return with_shadows(found)

    def invalidated(self, unit: int, desc) -> set:
        """The cache locations a descriptor may change (spec 6.5.2; table in reference §15)."""
        if desc is None:
            return self.everything(unit)
        f, label = desc.fields, desc.label
        if label == "inv_wait":
            if not f.get("sw"):
                return set()
            addr = f["status_addr"]  # a snooped write: both views
            return mem_locations(addr, 4, self.status_pages, "mem", self.grain) | mem_locations(
                addr, 4, self.status_pages, "dram", self.grain)
        if label == "cc_inv":
            sids = [f["sid"]] if f.get("g") == 3 else list(self.sids.values())
            return with_shadows({("cc", unit, s) for s in sids})
        if label == "pc_inv":
            return {("pc", unit, s) for s in self.sids.values()}
        if label in ("iotlb_inv", "p_iotlb_inv"):
            return with_shadows(self._tlb(unit, f, page_selective=f.get("g") == 3))
        if label in ("dev_tlb_inv", "p_dev_tlb_inv"):
            base, size = devtlb_range(f["addr"], f["s"])
            return {("atc", f["sid"], p) for p in self.pages if base <= p < base + size}
        return set() if label in ("iec_inv", "page_grp_resp") else self.everything(unit)

    def _tlb(self, unit: int, f: dict, page_selective: bool) -> set:
        """IOTLB keys whose region overlaps the range; paging-structure keys too unless a
        page-selective IH=1 keeps them (spec 6.5.2.3: "invalidation hint")."""
        if not page_selective:
            return self._keys(unit, 0, 1 << 64, psc=True)
        size = PAGE_SIZE << f.get("am", 0)
        base = f["addr"] & ~(size - 1)
        return self._keys(unit, base, base + size, psc=not f.get("ih"))

    def _keys(self, unit: int, start: int, end: int, psc: bool) -> set:
        """The IOTLB (and paging-structure) keys covering a universe page whose region
        overlaps [start, end)."""
        found = set()
        levels = [("tlb", lvl, _tlb_shift(lvl)) for lvl in _TLB_LEVELS]
        if psc:
            levels += [("psc", lvl, _psc_shift(lvl)) for lvl in _PSC_LEVELS]
        for page in self.pages:
            for cache, lvl, shift in levels:
                idx = page >> shift
                if idx << shift < end and start < (idx + 1) << shift:
                    found.add((cache, unit, lvl, idx))
        return found


def with_shadows(locations: set) -> set:
    """Add the shadow ``("fill", *loc)`` of each context / paging-structure location: a
    request's fill of such an entry equal to memory's is invisible to other requests (they read
    the cache or that memory) but not to an invalidation, which leaves it absent if it runs
    after the fill and present if before - so requests read the shadow, invalidations write it
    (``actors.changed_locations``)."""
    return locations | {("fill", *loc) for loc in locations if loc[0] in ("cc", "psc")}


_TLB_LEVELS = (1, 2, 3)  # 4 KiB, 2 MiB, 1 GiB entries
_PSC_LEVELS = (1, 2, 3, 4)  # the table a PDE .. PML5E points to


def _tlb_shift(level: int) -> int:
    return 12 + 9 * (level - 1)


def _psc_shift(level: int) -> int:
    return 12 + 9 * level


# -- the dry walk's memory reads -----------------------------------------------------------------
@dataclass(frozen=True)
class Walk:
    """What a walk of current memory for (device, IOVA) would fill, and the lines it reads."""

    fills: tuple
    reads: frozenset
    grain: int = LINE_SIZE
    addrs: tuple = ()  # the qwords read

    @property
    def ad_writes(self) -> set:
        """Lines the walk writes: accessed/dirty updates (first stage, or SS with SSADS),
        snooped - both views."""
        return {loc for f in self.fills for a, _ in f.writes
                for loc in (ac.line(a, self.grain), ac.dram_line(a, self.grain))}


class _RecordingMemory:
    """Wraps PhysicalMemory for one dry walk, remembering every qword address read."""

    def __init__(self, memory):
        self._memory = memory
        self.addrs: list[tuple[int, bool]] = []

    def read_qword(self, addr: int, *, snoop: bool = True) -> int:
        self.addrs.append((addr, snoop))
        return self._memory.read_qword(addr, snoop=snoop)

    def __getattr__(self, name: str):
        return getattr(self._memory, name)


def dry_walk(unit, sid: int, iova: int, recycled: set, pasid: int | None = None,
             grain: int = LINE_SIZE) -> Walk:
    real = unit.memory
    recorder = _RecordingMemory(real)
    unit.memory = recorder
    try:
        fills = unit.possible_fills(sid, iova, pasid)
    finally:
        unit.memory = real
    # A non-snooped walk (ECAP.C=0, or no PWSNP) reads DRAM only: a CPU store it does not see
    # until the clflush is no race with it.
    # The root-table pointer and TE (GCMD/RTADDR) decide where a walk starts, or whether any.
    reads = {("page", p) for p in recycled} | {ac.reg(0, DMAR_GCMD_REG)}
    for addr, snoop in recorder.addrs:
        reads.add(ac.dram_line(addr, grain))
        if snoop:
            reads.add(ac.line(addr, grain))
    return Walk(tuple(fills), frozenset(reads), grain, tuple(a for a, _ in recorder.addrs))


# -- the world ----------------------------------------------------------------------------------
class VtdWorld:
    """One execution's state (implements ``checker.world.World``)."""

    def __init__(self, model: VtdModel):
        self.model = model
        self.system: System = model.copy_template()
        self.threads = {t.name: ac.ThreadState(list(t.ops)) for t in model.thread_actors}
        self.fired: Counter[str] = Counter()
        self.universe = model.universe
        self.stepper = Stepper(self)
        self.monitor = Monitor(self.system, copy.deepcopy(model.stable),
                               list(model.assertions), watch=model.watch)
        self.schedule: list[str] = []  # the actors stepped so far (observations' chains)
        self.recycled: set[int] = set(model.recycled)
        self.pieces: dict[str, dict] = {}  # torn fill -> the entry pieces it read early
        self.clock = 0
        self._patterns = 0
        self._walks: dict[tuple[str, int], Walk] = {}
        self._fps: dict[str, tuple] = {}  # actor -> footprint parts, until the next step
        self._taken: Footprint | None = None
        self.hw_written: set = set()  # cache locations the last request changed (actors.Dma)

    # -- the World protocol -------------------------------------------------------------------
    def _live(self) -> list:
        return [a for a in self.model.actors if a.live(self)]

    def enabled(self) -> list[str]:
        return [a.name for a in self._live() if a.ready(self)]

    def blocked(self) -> list[str]:
        """Live actors that cannot move now - disabled freedoms too: their pending transition
        must race with whatever disabled it (a clflush that removed the fill's PTE)."""
        return [a.name for a in self._live() if not a.ready(self)]

    def footprint(self, actor: str) -> Footprint:
        """The next transition's footprint, predicted (a thread's includes what ending its op
        would add); memoised until the next step."""
        if actor not in self._fps:
            self._fps[actor] = self._parts(actor)
        base, ending = self._fps[actor]
        if ending is None:
            return base
        return Footprint(base.reads | ending.reads, base.writes | ending.writes, base.guard)

    def _parts(self, actor: str) -> tuple[Footprint, Footprint | None]:
        who = self.model.by_name[actor]
        if isinstance(who, ac.Thread):
            return who.footprint_parts(self)
        return who.footprint(self), None

    def taken(self) -> Footprint | None:
        """The exact footprint of the transition just stepped (``world.World``): a thread's
        op-end locations only if its op did end in it (None when none was predicted)."""
        return self._taken

    def step(self, actor: str) -> StepRecord:
        self.schedule.append(actor)
        # The footprint predicted before the step (the engine asked for it, or the cached walks
        # need its writes); replayed steps the engine knows already skip it.
        parts = self._fps.pop(actor, None)
        if parts is None and (self._walks or self.pieces):
            parts = self._parts(actor)
        self._fps.clear()
        self.clock += 1
        self.monitor.clock = self.clock
        who = self.model.by_name[actor]
        self.hw_written = set()
        record = who.step(self)
        self._taken = None
        if parts is not None:
            base, ending = parts
            state = self.threads.get(actor)
            if ending is not None and state.ended:
                base = Footprint(base.reads | ending.reads, base.writes | ending.writes,
                                 base.guard)
            if state is not None and state.level is not None:
                base = _continuation(base, state.level)
            elif hasattr(who, "taken"):
                base = who.taken(self, base)
            self._taken = base
        written = self._taken.writes if self._taken is not None else frozenset()
        predicted = parts[0].writes if parts is not None else frozenset()
        freed = set(self.monitor.freed)
        if not freed <= self.recycled:
            self._walks.clear()  # a walk's reads name the recycled pages
            self.recycled |= freed
        self._forget_walks(written)
        if isinstance(self.model.by_name[actor], ac.Thread | ac.QueueEngine):
            # Fills and DMA write caches too, but invalidate none; an invalidation ends an
            # in-flight fetch whether or not it found an entry (what it may change, predicted).
            dropped = self._drop_pieces(predicted | written)
            if dropped and self._taken is not None:
                t = self._taken
                self._taken = Footprint(t.reads | dropped, t.writes | dropped, t.guard)
        return record

    def _drop_pieces(self, written: frozenset) -> set:
        """An invalidation of a torn fill's cache location between its two reads ends the fetch
        (``actors.TornFill``): its early pieces are dropped (the fill's location changes)."""
        dropped = set()
        for name in list(self.pieces):
            who = self.model.by_name[name]
            if not who.cache_locations(self).isdisjoint(written):
                del self.pieces[name]
                dropped.add(who.location())
        return dropped

    def _forget_walks(self, written: frozenset) -> None:
        """A dry walk is a function of the memory it read and of the unit's registers (root
        pointer, TE): it stays valid across a step that wrote none of them."""
        if not self._walks:
            return
        if any(loc[0] == "reg" and loc[2] == "OTHER" for loc in written):
            self._walks.clear()
            return
        for key in [k for k, w in self._walks.items() if not w.reads.isdisjoint(written)]:
            del self._walks[key]

    def violations(self) -> list[Violation]:
        return self.monitor.found

    def finished(self) -> bool:
        return all(s.done for s in self.threads.values())

    def deadlocked(self) -> bool:
        live = self._live()
        return not any(a.ready(self) for a in live) and any(not a.optional for a in live)

    def final_checks(self) -> list[Violation]:
        return self.monitor.final()

    def describe_bounds(self) -> dict:
        return dict(self.model.bounds)

    def optional(self, actor: str) -> bool:
        return self.model.by_name[actor].optional

    # -- services for the actors --------------------------------------------------------------
    def may_allocate(self) -> bool:
        """Some thread's current or later op may allocate a page (checked: actors.Thread)."""
        return any(op.kind not in vl.NON_ALLOCATING_OPS
                   for s in self.threads.values() if not s.done
                   for _, _, op in s.ops[s.index:])

    def walk(self, device: str, iova: int, pasid: int | None = None) -> Walk:
        key = (device, iova, pasid)
        if key not in self._walks:
            ep = self.system.endpoint(device)
            walk = dry_walk(ep.unit, ep.sid, iova, self.recycled, pasid, self.universe.grain)
            if device in self.system.assigned:
                # The host unit's tables and context change only inside a VM exit.
                walk = Walk(walk.fills, walk.reads | {HOST})
            self._walks[key] = walk
        return self._walks[key]

    def next_pattern(self) -> bytes:
        """DMA write data: distinct per write, so a stale read is visible."""
        self._patterns += 1
        return (0xD0D0_0000_0000_0000 | self._patterns).to_bytes(8, "little")


@dataclass
class VtdModel:
    """A factory of identical VT-d worlds (implements ``checker.world.Model``)."""

    name: str
    template: System
    thread_actors: list
    hardware_actors: list
    universe: Universe
    bounds: dict
    assertions: list[Assertion] = field(default_factory=list)
    properties: tuple[str, ...] = PROPERTIES
    stable: dict = field(default_factory=dict)
    recycled: set = field(default_factory=set)
    describe: str = ""
    watch: frozenset = frozenset()  # observations its worlds flag as violations (shrinking)

    def __post_init__(self) -> None:
        self.actors = [*self.thread_actors, *self.hardware_actors]
        self.by_name = {a.name: a for a in self.actors}
        self.properties = tuple(dict.fromkeys([*self.properties,
                                               *(n for n, _ in self.assertions)]))
        memory = self.template.platform.memory
        self.universe.grain = LINE_SIZE if memory.write_buffer else 8
        self.universe.status_pages = frozenset(
            iommu.qi.status_base & ~(PAGE_SIZE - 1)
            for iommu in getattr(self.template.driver, "iommus", ()) if iommu.qi is not None)
        probe = Monitor(self.template, {}, [])
        probe._note_stable()
        self.stable = probe.stable
        self.recycled = set(self.template.platform.pages.freed)
        self.lru_invisible = self._lru_invisible()
        self.evicted_caches = frozenset(a.cache for a in self.hardware_actors
                                        if isinstance(a, ac.CacheEvict))
        self._frozen = pickle.dumps(self.template, protocol=pickle.HIGHEST_PROTOCOL)

    def _lru_invisible(self) -> bool:
        """No cache can fill up in any execution: each hardware firing inserts at most
        ``_MAX_INSERTS`` entries and threads insert none, so the recency order a lookup
        refreshes never picks a victim (``LruCache.fill``) and cannot be observed."""
        unit = self.template.unit(0)
        caches = [getattr(unit, name) for name in ac.CACHE_FAMILIES]
        caches += [ep.device_tlb for ep in self.template.endpoints.values()]
        firings = sum(getattr(a, "times", 0) for a in self.hardware_actors)
        worst = max(len(c) for c in caches) + _MAX_INSERTS * firings
        return all(c.capacity > worst for c in caches)

    def copy_template(self) -> System:
        """A fresh copy of the booted system (unpickled: 5x faster than a deep copy; every
        model object pickles - bound methods and partials, never lambdas)."""
        return pickle.loads(self._frozen)

    def new_world(self) -> VtdWorld:
        return VtdWorld(self)

    def fingerprint(self) -> str:
        """The scenario, its actors and bounds, and the model's code (``model_digest``)."""
        text = repr((self.describe, sorted(self.by_name), sorted(self.bounds.items()),
                     model_digest()))
        return f"{self.name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@functools.cache
def model_digest() -> str:
    """A digest of the model's code - hardware, devices, driver, the VMM, the machine builder,
    checker - since which steps an operation takes and what each does live there: a schedule
    saved under other code (a
    descriptor copied in two stores instead of one, say) would replay a different
    interleaving, so it must not pass for this model's."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    files = [p for package in ("hardware", "devices", "driver", "virtualization", "checker")
             for p in sorted((root / package).rglob("*.py"))]
    # the one machine builder the checker boots through
    files += [root / "simulation" / "machine.py", root / "simulation" / "system.py"]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
