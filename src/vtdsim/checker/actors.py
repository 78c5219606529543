"""The actors of a VT-d world: driver threads stepping the driver's generators, and the bounded
hardware freedoms (cache fills and evictions, the async invalidation queue, device DMA and ATS
prefetches), each with the precise footprint DPOR needs (VT-d spec 6.1: hardware may fill or
evict any cache entry at any moment; 6.5.2: the queue is processed in order).

Abstract locations (``world.Footprint``):

* ``("mem", line)`` a 64-byte line as the CPU cache holds it, ``("dram", line)`` its DRAM copy
  (what a non-snooped walk reads; clflush, wbinvd, snooped device writes and write-buffer drains
  change it); ``("status", addr)`` a 32-bit word of a queue's status page; ``("page", pfn)``
  every line of a page that was freed once (a stale walk may read a recycled page-table page);
* ``("qslot", unit, offset)`` a queue slot published by an IQT write;
* what classifies a DMA (``verdict_locations``: owners, maps, members, the lazy window),
  ``("finished", thread)``,
  ``("pgtable",)`` (see below);
* ``("reg", unit, "IQT"|"IQH"|"FSTS"|"OTHER")`` (FSTS: the queue-error bits IQE/ICE/ITE, what
  the driver's ``qi_check_fault`` and the queue engine look at), ``("reg", unit, "FAULT")``:
  fault recording (FRCDs, FSTS.PPF/PFO/FRI, FECTL.IP), written by queue errors and read by no
  code and no property (no fault handler is modelled) - a faulting DMA's record is left out;
* ``("cc", unit, sid)``, ``("pc", unit, sid)``, ``("tlb", unit, level, index)``, ``("psc", unit,
  level, index)`` (one per key level and index: a large-page or paging-structure entry is
  shared by the IOVA pages it covers), ``("atc", sid, page)``: cache contents over the
  scenario's bounded universe of IOVA pages; ``("fill", "cc"|"psc", ...)`` their shadows
  (``changed_locations``);
* ``("lock", name)``, ``("alloc",)`` (the page allocator), ``("data",)`` (data-page contents
  reached by DMA, whose host address is unknown before the step), ``("drv",)``.

``("drv",)`` stands for the driver's own bookkeeping, which its generators change between
steps without a step (domain lists, flush-queue counters, the iotlb_sync_map flag).  A thread
transition touches it when it begins or ends an operation, when its step is a lock, an
allocator or an annotation step, and whenever the thread holds no lock: bookkeeping the driver
changes inside a critical section is ordered by the lock, everything else is treated as shared.
Two exceptions keep DPOR's reduction (every ``drv`` step of one thread races with every one of
another): a transition whose code runs while the thread holds a *confined* lock
(``CONFINED_LOCKS``: sections that touch only state reached under that same lock) touches only
the lock; a page-table walker read (``WALKER_STEPS``) runs only walker code up to the walker's
next step (checked after the step) and reads ``("pgtable",)``, the page-table fields that only
an ``enforce_cache_coherency`` op changes (its transitions write it).

On a VM platform an assigned device's freedoms act on the host unit (its endpoint's unit;
its cache locations carry unit index 1, ``vtd_world.HOST_UNIT``).

Not modelled: stale walks through a *live* table reached from a stale cached pointer (the dry
walk of current memory gives the lines read; a recycled page is covered by ``("page", pfn)``),
several guest units (the driver's unit 0 only), the host unit's fault recording as its own
location (a faulting DMA writes unit 0's), DMA from CPUs other than through threads' ops.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from vtdsim.checker import continuations as cont
from vtdsim.checker import verdict_locations as vl
from vtdsim.checker.properties import describe_fault
from vtdsim.checker.world import Footprint, StepRecord
from vtdsim.driver import steps as st
from vtdsim.errors import ModelError
from vtdsim.hardware.descriptors import decode, validate
from vtdsim.hardware.memory import LINE_SIZE

DRV = ("drv",)
ALLOC = ("alloc",)
DATA = ("data",)
PGTABLE = ("pgtable",)
# Critical sections that read and write only state every other access also reaches under the
# same lock, or constants fixed at probe: the queue's slots and counters (qi->q_lock, dmar.c;
# driver/qi.py), a domain's cache-tag list (domain->cache_lock, cache.c; driver/cache_tag.py),
# the GCMD shadow (iommu->register_lock; driver/intel_iommu.py).
CONFINED_LOCKS = (".q_lock", ".cache_lock", ".register_lock")
# iommu->lock sections (by the Lock's ``why``) that only program table entries: they read the
# domain's DID (written under iommu->lock), its page-table root and probe-time device fields.
CONFINED_SECTIONS = frozenset({"domain_context_mapping_one"})
# pfn_to_dma_pte's reads never end the walker (the next level, a table install or the leaf's
# cmpxchg follows); between them only DomainPageTable code runs, reading its fields.
WALKER_STEPS = frozenset({"pfn_to_dma_pte"})
_WALKER_MODULE = "vtdsim.driver.pgtable"
PGTABLE_WRITERS = frozenset({"enforce_cache_coherency"})  # sets pgtable.force_snoop
_EMPTY = frozenset()
_MEMORY_STEPS = (st.CpuWrite, st.CpuCmpxchg, st.CpuZero, st.CpuRead, st.Clflush,
                 st.ClflushRange, st.Wbinvd, st.MmioWrite, st.MmioRead, st.WaitQword,
                 st.WaitRegister)
_REG_NAMES = {0x88: "IQT", 0x80: "IQH", 0x34: "FSTS"}


def line(addr: int, grain: int = LINE_SIZE) -> tuple:
    """The CPU view of the cell (a line, or a qword: ``Universe.grain``) holding ``addr``."""
    return ("mem", addr & ~(grain - 1))


def lines(addr: int, size: int, grain: int = LINE_SIZE) -> set:
    first = addr & ~(grain - 1)
    return {("mem", a) for a in range(first, addr + size, grain)}


def dram_line(addr: int, grain: int = LINE_SIZE) -> tuple:
    """The DRAM copy of a cell: what non-snooped walks read, changed by clflush, wbinvd and
    snooped device writes (``("mem", cell)`` is the CPU view)."""
    return ("dram", addr & ~(grain - 1))


def whole_lines(addrs, grain: int) -> set:
    """Both views of every cell of the lines starting at ``addrs`` (a write-back, a drain)."""
    return {(view, a) for line in addrs for a in range(line, line + LINE_SIZE, grain)
            for view in ("mem", "dram")}


def reg(unit: int, offset: int) -> tuple:
    return ("reg", unit, _REG_NAMES.get(offset, "OTHER"))


def finished_location(thread: str) -> tuple:
    """Written by every transition that may finish ``thread`` (its last op, no lock held
    after the step): what a DMA gated on the thread's end guards on."""
    return ("finished", thread)


def fault_location(unit: int) -> tuple:
    """Fault recording of ``unit`` (FRCDs, FSTS.PPF/PFO/FRI, FECTL.IP)."""
    return ("reg", unit, "FAULT")


def fp(reads=(), writes=(), guard=()) -> Footprint:
    writes = frozenset(writes)
    return Footprint(frozenset(reads) | writes | frozenset(guard), writes, frozenset(guard))


# -- describing steps ---------------------------------------------------------------------------
def describe_step(step: st.Step) -> str:
    """One short line per step, as the counterexample table shows it."""
    name = type(step).__name__
    text = _STEP_TEXT.get(type(step), lambda s: name)(step)
    return f"{text} ({step.why})" if step.why else text


_STEP_TEXT: dict[type, Callable[[Any], str]] = {
    st.CpuWrite: lambda s: f"write [{s.addr:#x}]={s.value:#x}",
    st.CpuCmpxchg: lambda s: f"cmpxchg [{s.addr:#x}] {s.expected:#x}->{s.new:#x}",
    st.CpuZero: lambda s: f"zero [{s.addr:#x}]+{s.size:#x}",
    st.CpuRead: lambda s: f"read [{s.addr:#x}]",
    st.Clflush: lambda s: f"clflush {s.addr:#x}",
    st.ClflushRange: lambda s: f"clflush {s.addr:#x}+{s.size:#x}",
    st.Wbinvd: lambda s: "wbinvd",
    st.MmioWrite: lambda s: f"mmio {_REG_NAMES.get(s.offset, hex(s.offset))}={s.value:#x}",
    st.MmioRead: lambda s: f"mmio read {_REG_NAMES.get(s.offset, hex(s.offset))}",
    st.WaitQword: lambda s: f"wait [{s.addr:#x}]=={s.value:#x}",
    st.WaitRegister: lambda s: f"wait reg {s.offset:#x}",
    st.Lock: lambda s: f"lock {s.name}",
    st.Unlock: lambda s: f"unlock {s.name}",
    st.FreePage: lambda s: f"free {s.what or 'page'} {s.addr:#x}",
    st.AllocPage: lambda s: f"alloc {s.what or 'page'}",
    st.ReuseIova: lambda s: f"reuse iova {s.iova:#x}+{s.size:#x}",
    st.Annotate: lambda s: f"{s.event}",
}


def chain_label(step: st.Step, skipped: bool) -> str | None:
    """The causal-chain label of a thread step that matters to the properties, else None."""
    if skipped:
        return f"skip {type(step).__name__}"
    if isinstance(step, st.FreePage):
        return f"free {step.addr:#x}"
    if isinstance(step, st.MmioWrite) and step.offset == 0x88:
        return "submit (IQT)"
    if isinstance(step, st.MmioWrite) and step.why == "iommu_flush_write_buffer":
        return "GCMD.WBF (write-buffer flush)"
    if isinstance(step, st.WaitQword):
        return "wait done"
    if isinstance(step, st.Wbinvd):
        return "wbinvd"
    if isinstance(step, st.CpuRead) and step.why == "CPU":  # the scenario's cpu_read op
        return f"CPU read [{step.addr:#x}]"
    if isinstance(step, st.CpuCmpxchg) and step.why == "__domain_mapping":
        return f"set PTE [{step.addr:#x}]"
    if (isinstance(step, st.CpuWrite) and step.why in _CONTEXT_WRITERS and step.value & 1
            and not step.addr % 16):  # qword 0 (Present) of a 128-bit context entry
        return f"context present [{step.addr:#x}]"
    if isinstance(step, st.CpuWrite) and step.value == 0 and step.why != "qi_submit_sync":
        return f"clear [{step.addr:#x}]"  # (a descriptor's zero qword is no clear)
    return None


_CONTEXT_WRITERS = frozenset({"domain_context_mapping_one", "device_pasid_table_setup"})


# -- mutations ----------------------------------------------------------------------------------
QI_DONE = 2  # enum desc_status in dmar.c


def skipped(step: st.Step, skip: tuple[str, ...]) -> bool:
    """Is ``step`` removed by the mutation ``skip`` (step kinds, or "qi_wait": the status
    read and wait of ``qi_submit_sync``, so the submission returns without waiting)?"""
    if not skip:
        return False
    if type(step).__name__ in skip:
        return True
    waits = isinstance(step, st.CpuRead | st.WaitQword) and step.why == "qi_submit_sync"
    return waits and "qi_wait" in skip


def skip_reply(step: st.Step) -> Any:
    """What a skipped step answers: a wait (or qi's status read) reports completion."""
    if isinstance(step, st.CpuRead):
        return QI_DONE
    return step.value if isinstance(step, st.WaitQword | st.WaitRegister) else None


# -- driver threads -----------------------------------------------------------------------------
OpFactory = Callable[[Any], Generator]  # (system) -> the op's generator


@dataclass
class ThreadState:
    """Where one thread is: the op it runs, its generator and the step it will apply next."""

    ops: list  # [(label, factory, op)]
    index: int = 0
    gen: Generator | None = None
    pending: st.Step | None = None
    done: bool = False
    locks: set = field(default_factory=set)
    acquired: Counter = field(default_factory=Counter)  # lock name -> acquisitions so far
    released: Counter = field(default_factory=Counter)  # lock name -> releases so far
    sections: dict = field(default_factory=dict)  # held lock -> the Lock step's ``why``
    ended: bool = False  # the last transition ended an op
    # What the driver code of the last transition touched (continuations.Recorder), when it
    # was recorded: PURE_LEVEL no bookkeeping, READ_LEVEL read only; None: not recorded.
    level: int | None = None


class Thread:
    """A driver thread: its operations run one after the other, one step per transition.
    ``gates`` (scenario ``LockGate``s) hold its start or its n-th acquisition of a lock until
    another thread has released that lock often enough (litmus cases that pin an order)."""

    optional = False

    def __init__(self, name: str, ops: list, gates: tuple = ()):
        self.name = name
        self.ops = ops
        self.gates = gates  # scenario.LockGate: this thread's nth Lock waits for releases

    def state(self, world) -> ThreadState:
        return world.threads[self.name]

    def live(self, world) -> bool:
        return not self.state(world).done

    def ready(self, world) -> bool:
        s = self.state(world)
        if s.pending is None:
            return s.index > 0 or self._gates_open(world, s, None)
        return world.stepper.ready(s.pending, self._skipped(s)) and self._gates_open(
            world, s, s.pending)

    def _gates(self, s: ThreadState, step: st.Step | None) -> list:
        """The gates on this transition: ``nth`` 0 holds the thread's start (``step`` None),
        ``nth`` n its n-th acquisition of the gate's lock."""
        if step is None:
            return [g for g in self.gates if g.nth == 0] if s.index == 0 else []
        if not isinstance(step, st.Lock):
            return []
        nth = s.acquired[step.name] + 1
        return [g for g in self.gates if g.lock == step.name and g.nth == nth]

    def _gates_open(self, world, s: ThreadState, step: st.Step | None) -> bool:
        """A gate opens once the other thread has released its lock often enough; releases
        write ``("lock", name)``, which the gated transition guards on (DPOR stays sound)."""
        return all(world.threads[g.thread].released[g.lock] >= g.released
                   for g in self._gates(s, step))

    def footprint(self, world) -> Footprint:
        base, ending = self.footprint_parts(world)
        if ending is None:
            return base
        return fp(base.reads | ending.reads, base.writes | ending.writes, base.guard)

    def footprint_parts(self, world) -> tuple[Footprint, Footprint | None]:
        """The transition's footprint, and what it adds if it ends the op (None: it cannot).
        ``footprint`` is their union; after the step the world knows whether the op ended
        (``ThreadState.ended``) and reports the exact one (``VtdWorld.taken``)."""
        base = self._footprint(world)
        if DRV in base.writes:  # the driver code may touch anything: named fields, tables
            base = fp(base.reads | {PGTABLE}, base.writes | cont.FIELDS, base.guard)
        s = self.state(world)
        op = s.ops[s.index][2]
        # The flush queue's counters (they change inside the timer's flush) and an op's start
        # (the ledger forgets an unmapped IOVA, grants a mapped page, marks a device moving)
        # change what decides a DMA's verdict (verdict_locations).
        system = world.system
        if op.kind == "fq_timer":
            base = fp(base.reads, base.writes | {vl.LAZY}, base.guard)
        if s.pending is None:
            base = fp(base.reads, base.writes | vl.op_begin(op, system), base.guard)
        if not _may_end_op(s):
            return base, None
        # What the monitor does when an op ends (properties.Monitor.op_done / op_begin of the
        # next op): note mapped IOVAs and domain members, check a strict unmap's caches.
        after = s.ops[s.index + 1][2] if s.index + 1 < len(s.ops) else None
        writes = vl.op_end(op) | (vl.op_begin(after, system) if after is not None else set())
        if after is None:
            writes.add(finished_location(self.name))
        return base, fp(world.universe.unmap_check(op), writes)

    def _footprint(self, world) -> Footprint:
        s = self.state(world)
        if s.pending is None:
            held = {("lock", g.lock) for g in self._gates(s, None)}
            return fp(held, {DRV}, held)
        step = s.pending
        base = world.stepper.footprint(step) if not self._skipped(s) else fp()
        if s.ops[s.index][2].kind in PGTABLE_WRITERS:
            return fp(base.reads, base.writes | {DRV, PGTABLE}, base.guard)
        if _walker_step(step):
            return fp(base.reads | {PGTABLE}, base.writes, base.guard)
        if self._touches_driver(s, step):
            return fp(base.reads, base.writes | {DRV}, base.guard)
        return base

    @staticmethod
    def _touches_driver(s: ThreadState, step: st.Step) -> bool:
        held = _held_after(s, step)
        if any(_confined(name, why) for name, why in held.items()):
            return False  # the code up to the next step runs inside a confined section
        return not isinstance(step, _MEMORY_STEPS) or not s.locks

    @staticmethod
    def _skipped(s: ThreadState) -> bool:
        return s.pending is not None and skipped(s.pending, s.ops[s.index][2].skip)

    def step(self, world) -> StepRecord:
        s = self.state(world)
        s.ended, s.level = False, None
        if s.pending is None:
            return self._begin(world, s, "")
        step, skipped = s.pending, self._skipped(s)
        op = s.ops[s.index][2]
        if type(step) is st.AllocPage and op.kind in vl.NON_ALLOCATING_OPS:
            raise ModelError(f"{op.kind} allocated a page: verdict_locations.NON_ALLOCATING_OPS "
                             "claims a footprint that does not hold")
        reply = skip_reply(step) if skipped else world.stepper.apply(step, self.name)
        self._track_locks(s, step, skipped)
        text = ("(skipped) " if skipped else "") + describe_step(step)
        label = chain_label(step, skipped)
        if world.stepper.exit_work:  # a VM exit whose work reached VFIO / iommufd / an ATC
            text = f"{text} [{world.stepper.exit_work}]"
            label = f"{label or describe_step(step)} [{world.stepper.exit_work}]"
        if isinstance(step, st.AllocPage) and isinstance(reply, int):
            text = f"{text} -> {reply:#x}"
            if reply in world.recycled:  # a page freed before changes hands: name it
                label = f"alloc {step.what or 'page'} {reply:#x} (a freed page reused)"
        world.monitor.thread_step(self.name, step, reply, skipped, s.ops[s.index][2])
        walker = _outer_walker(s.gen) if _walker_step(step) else None
        try:
            s.pending = self._resume(s, reply, op.kind in PGTABLE_WRITERS
                                     or not self._touches_driver(s, step))
        except StopIteration as stop:
            _check_walker(walker, None, step)
            return self._end(world, s, text, stop.value, label)
        _check_walker(walker, s.gen, step)
        return StepRecord(self.name, text, {"key": bool(label), "chain": label or text})

    @staticmethod
    def _track_locks(s: ThreadState, step: st.Step, skipped: bool) -> None:
        if skipped:
            return
        if isinstance(step, st.Lock):
            s.locks.add(step.name)
            s.sections[step.name] = step.why
            s.acquired[step.name] += 1
        elif isinstance(step, st.Unlock):
            s.locks.discard(step.name)
            s.sections.pop(step.name, None)
            s.released[step.name] += 1

    @staticmethod
    def _resume(s: ThreadState, reply: Any, unrecorded: bool) -> st.Step:
        """Run the driver up to its next step; unless ``unrecorded``, note what that code
        touched (``ThreadState.level``, the highest over the transition's resumptions)."""
        if unrecorded:
            s.level = cont.WRITE_LEVEL
            return s.gen.send(reply)
        with cont.Recorder() as seen:
            try:
                return s.gen.send(reply)
            finally:
                s.level = max(seen.level, s.level or 0)

    def _begin(self, world, s: ThreadState, before: str) -> StepRecord:
        """Start the next op (its code up to the first step runs now)."""
        label, factory, op = s.ops[s.index]
        world.monitor.op_begin(self.name, op)
        with cont.Recorder() as seen:
            s.gen = factory(world.system)
        s.level = max(seen.level, s.level or 0)
        if op.kind in PGTABLE_WRITERS:
            s.level = cont.WRITE_LEVEL
        try:
            s.pending = self._resume(s, None, op.kind in PGTABLE_WRITERS)
        except StopIteration as stop:
            return self._end(world, s, f"{before}begin {label}", stop.value, None)
        text = f"{before}begin {label}"
        return StepRecord(self.name, text, {"chain": label})

    def _end(self, world, s: ThreadState, text: str, value: Any, label: str | None):
        op_label, _, op = s.ops[s.index]
        s.ended = True
        world.monitor.op_done(self.name, op, value)
        s.gen, s.pending = None, None
        s.index += 1
        text = f"{text}; {op_label} done"
        if s.index >= len(s.ops):
            s.done = True
            return StepRecord(self.name, text, {"key": bool(label), "chain": label or text})
        record = self._begin(world, s, f"{text}; ")
        return StepRecord(self.name, record.text, {"key": bool(label),
                                                   "chain": label or record.text})


def _may_end_op(s: ThreadState) -> bool:
    """The transition may end the current op: an op never ends inside a critical section,
    a walker step never ends one (checked); a begin may (an op without steps)."""
    step = s.pending
    return step is None or (not _walker_step(step) and not _held_after(s, step))


def _held_after(s: ThreadState, step: st.Step) -> dict:
    """The locks (name -> the Lock's ``why``) the thread holds once ``step`` is applied."""
    held = dict(s.sections)
    if skipped(step, s.ops[s.index][2].skip):
        return held
    if isinstance(step, st.Lock):
        held[step.name] = step.why
    elif isinstance(step, st.Unlock):
        held.pop(step.name, None)
    return held


def _confined(lock: str, why: str) -> bool:
    return lock.endswith(CONFINED_LOCKS) or why in CONFINED_SECTIONS


def _walker_step(step: st.Step) -> bool:
    return type(step) is st.CpuRead and step.why in WALKER_STEPS


def _outer_walker(gen: Generator | None) -> Generator | None:
    """The outermost page-table generator in ``gen``'s ``yield from`` chain."""
    while gen is not None:
        frame = gen.gi_frame
        if frame is not None and frame.f_globals.get("__name__") == _WALKER_MODULE:
            return gen
        gen = gen.gi_yieldfrom
    return None


def _check_walker(walker: Generator | None, gen: Generator | None, step: st.Step) -> None:
    """A walker step's footprint claimed that only walker code runs until the next step: the
    walker generator must still be suspended in the thread's chain (it neither returned nor
    was left), or the footprint was wrong."""
    if walker is None:
        return
    while gen is not None:
        if gen is walker:
            return
        gen = gen.gi_yieldfrom
    raise ModelError(f"after {describe_step(step)} the thread left the page-table walker: "
                     "WALKER_STEPS claims a footprint that does not hold")


# -- hardware freedoms --------------------------------------------------------------------------
class Bounded:
    """A freedom firing at most ``times`` times per execution (its count lives in the world)."""

    optional = True

    def __init__(self, name: str, times: int):
        self.name = name
        self.times = times

    def live(self, world) -> bool:
        return world.fired[self.name] < self.times

    def fire(self, world) -> None:
        world.fired[self.name] += 1


class QueueEngine:
    """``hw:qi``: the unit fetches and performs the descriptor at IQH (async mode)."""

    optional = False

    def __init__(self, name: str, unit: int):
        self.name = name
        self.unit = unit

    def live(self, world) -> bool:
        return world.system.unit(self.unit).queue.pending() > 0

    def ready(self, world) -> bool:
        return True

    def footprint(self, world) -> Footprint:
        return slot_footprint(world, self.unit, world.system.unit(self.unit).queue.head)

    def taken(self, world, base: Footprint) -> Footprint:
        """The descriptor invalidated only the entries it removed: every other cache location
        it may change it only read (whether an entry was there decided what it did)."""
        kept = {loc for loc in base.writes if loc[0] not in _CACHE_KINDS}
        return Footprint(base.reads, frozenset(kept | world.hw_written), base.guard)

    def step(self, world) -> StepRecord:
        unit = world.system.unit(self.unit)
        desc = _peek(unit, unit.queue.base + unit.queue.head)
        before = unit_contents(world, self.unit)
        unit.qi_step()
        world.hw_written = removed_locations(world, self.unit, before,
                                             unit_contents(world, self.unit))
        text = desc.describe() if desc is not None else "fetch"
        return StepRecord(self.name, text, {"key": desc is not None and desc.type != 5,
                                            "chain": f"hw {desc.label if desc else 'qi'}"})


_CACHE_KINDS = frozenset({"cc", "pc", "tlb", "psc", "atc"})


def unit_contents(world, u: int) -> tuple:
    """The caches of unit ``u`` and the device-TLBs of the endpoints behind it."""
    unit = world.system.unit(u)
    caches = tuple(dict(getattr(unit, name).items()) for name in CACHE_FAMILIES)
    atcs = tuple((ep.sid, dict(ep.device_tlb.items()))
                 for _, ep in sorted(world.system.endpoints.items()) if ep.unit is unit)
    return caches, atcs


def removed_locations(world, u: int, before: tuple, after: tuple) -> set:
    """The cache locations whose entries an invalidation changed."""
    found = set()
    for name, old, new in zip(CACHE_FAMILIES, before[0], after[0], strict=True):
        for key in old.keys() | new.keys():
            if old.get(key) != new.get(key):
                found.add(world.universe.key_location(name, key, u))
    for (sid, old), (_, new) in zip(before[1], after[1], strict=True):
        if old != new:
            found |= {("atc", sid, p) for p in world.universe.pages}
    return found


def slot_footprint(world, u: int, offset: int) -> Footprint:
    """Fetching and performing the descriptor at queue offset ``offset`` of unit ``u``: by the
    queue engine (async) or inside the IQT write that publishes it (sync, QEMU's way)."""
    unit = world.system.unit(u)
    queue = unit.queue
    addr = queue.base + offset
    desc = _peek(unit, addr)
    # Fetching needs the slot published by an IQT write and no IQE/ITE pending (6.5.2.10).
    guard = {("qslot", u, offset), reg(u, 0x34)}
    grain = world.universe.grain
    slot = lines(addr, queue.width, grain) | {dram_line(a, grain)
                                               for a in range(addr, addr + queue.width, 8)}
    reads = guard | {reg(u, 0x80)} | slot
    writes = {reg(u, 0x80)} | world.universe.invalidated(u, desc)
    if desc is None or validate(desc, unit.caps, queue.wide) or desc.type in (3, 8):
        # IQE (a bad slot), or ITE/ICE (an ATS invalidation the device may not complete;
        # the abort then moves IQH to IQT).
        reads.add(reg(u, 0x88))
        writes |= {reg(u, 0x34), fault_location(u)}
    if desc is None or desc.type != 5:
        # Any invalidation drains the write buffer (spec 6.8): posted lines become visible.
        writes |= {loc for loc in whole_lines(unit.memory.posted_lines(), grain)
                   if loc[0] == "dram"}
    return fp(reads, writes, guard)


def _peek(unit, addr: int):
    """The descriptor at ``addr`` as the unit would fetch it (a snooped read, no side effect)."""
    width = unit.queue.width
    raw = unit.memory.dma_read(addr, width, snoop=True)
    try:
        return decode([int.from_bytes(raw[i : i + 8], "little") for i in range(0, width, 8)])
    except Exception:  # noqa: BLE001 - a garbage slot: the unit raises IQE, footprint is coarse
        return None


class CacheFill(Bounded):
    """``hw:fill <cache> <dev>@<iova>``: insert the entries a walk of current memory gives
    (for a request with ``pasid``, the walk through that PASID's entry)."""

    def __init__(self, name: str, times: int, device: str, iova: int, cache: str,
                 pasid: int | None = None, negative: bool = False):
        super().__init__(name, times)
        self.device, self.iova, self.cache, self.pasid = device, iova, cache, pasid
        self.negative = negative  # only not-present entries (caching mode, spec 6.1)

    def _fills(self, world) -> list:
        walk = world.walk(self.device, self.iova, self.pasid)
        return [f for f in walk.fills if f.cache == self.cache
                and not (self.negative and getattr(f.entry, "present", True))]

    def ready(self, world) -> bool:
        return bool(self._fills(world))

    def footprint(self, world) -> Footprint:
        """Reads the walk's memory; writes the keys it fills (all of the IOVA's keys while
        blocked: a later walk may fill any)."""
        walk = world.walk(self.device, self.iova, self.pasid)
        fills = self._fills(world)
        unit = world.universe.unit_of(self.device)
        cache = ({world.universe.key_location(f.cache, f.key, unit) for f in fills} if fills
                 else world.universe.cache_locations(self.device, self.iova, self.cache))
        return fp(walk.reads, cache | walk.ad_writes, walk.reads)

    def step(self, world) -> StepRecord:
        walk = world.walk(self.device, self.iova, self.pasid)
        fills = self._fills(world)
        ep = world.system.endpoint(self.device)
        for f in fills:
            ep.unit.apply_fill(f)
        self.fire(world)
        # The dry walk read the context entry from memory, whatever the context cache holds.
        via = next((f.entry.raw for f in walk.fills if f.cache == "context_cache"), None)
        world.monitor.hardware_step(ep.sid, via)
        entry = fills[-1].entry
        hpa = getattr(entry, "hpa", None)
        shown = f" -> {hpa:#x}" if isinstance(hpa, int) and getattr(entry, "present", True) \
            else (" (not present)" if not getattr(entry, "present", True) else "")
        text = f"fill {self.cache} {self.device}@{self.iova:#x}{shown}"
        return StepRecord(self.name, text, {"key": True, "chain": text,
                                            "setup": world.system.setup_causes(walk.addrs)})


class CacheEvict(Bounded):
    """``hw:evict <cache> <dev>@<iova>``: drop a cached entry covering the IOVA (spec 6.1);
    with ``pasid``, only entries tagged with that PASID (PASID cache, IOTLB)."""

    def __init__(self, name: str, times: int, device: str, iova: int, cache: str,
                 pasid: int | None = None):
        super().__init__(name, times)
        self.device, self.iova, self.cache, self.pasid = device, iova, cache, pasid

    def _keys(self, world) -> list:
        unit = world.system.endpoint(self.device).unit
        sid = world.system.endpoint(self.device).sid
        return [k for name, k in unit.cached()
                if name == self.cache and covers(name, k, sid, self.iova)
                and (self.pasid is None or _pasid_of(name, k) in (None, self.pasid))]

    def ready(self, world) -> bool:
        return bool(self._keys(world))

    def footprint(self, world) -> Footprint:
        cache = world.universe.cache_locations(self.device, self.iova, self.cache)
        return fp(cache, cache, cache)

    def step(self, world) -> StepRecord:
        unit = world.system.endpoint(self.device).unit
        for key in self._keys(world):
            unit.evict(self.cache, key)
        self.fire(world)
        return StepRecord(self.name, f"evict {self.cache} {self.device}@{self.iova:#x}")


def _pasid_of(cache: str, key: Any) -> int | None:
    """The PASID a cache key is tagged with (caches/*.py key shapes), None for the context
    cache."""
    if cache == "context_cache":
        return None
    return key[1]


def covers(cache: str, key: Any, sid: int, iova: int) -> bool:
    """Does the cache key ``key`` cover (``sid``, ``iova``)?  Key shapes: caches/*.py."""
    page = iova >> 12
    if cache == "context_cache":
        return key == sid
    if cache == "pasid_cache":
        return key[0] == sid
    if cache == "iotlb":
        return key[3] == page >> 9 * (key[2] - 1)
    return key[4] == iova >> (12 + 9 * key[3])


CACHE_FAMILIES = ("context_cache", "pasid_cache", "iotlb", "pscache")


def cache_contents(ep) -> tuple:
    """What a request of endpoint ``ep`` may change: its unit's caches and its device-TLB,
    as (key -> entry) maps (recency apart: ``VtdModel.lru_invisible``)."""
    unit = ep.unit
    caches = tuple(dict(getattr(unit, name).items()) for name in CACHE_FAMILIES)
    return (*caches, dict(ep.device_tlb.items()))


# Caches no property reads as they are - only through what a request gets from them - so an
# entry equal to what a walk of current memory gives changes nothing a reader can tell from an
# empty slot (every reader walks that memory too): the context cache (PasidWatch peeks it for
# the entry a fill went through: the same raw either way) and the paging-structure caches.
_READ_THROUGH = ("context_cache", "pscache")


def changed_locations(world, device: str, iova: int, pasid, before: tuple,
                      after: tuple, walk) -> set:
    """The cache locations a request of (``device``, ``iova``) changed.  An inserted
    context or paging-structure entry equal to the one the walk of memory before the request
    gives is no change (``_READ_THROUGH``) unless some freedom's readiness depends on it
    (an eviction of that cache)."""
    fresh = {(f.cache, f.key): f.entry for f in walk.fills}
    unit = world.universe.unit_of(device)  # the host's caches for an assigned device
    found = set()
    for name, old, new in zip(CACHE_FAMILIES, before, after, strict=False):
        if old == new:
            continue
        through = name in _READ_THROUGH and name not in world.model.evicted_caches
        for key in old.keys() | new.keys():
            if old.get(key) == new.get(key):
                continue
            if through and key not in old and fresh.get((name, key)) == new[key]:
                continue
            found.add(world.universe.key_location(name, key, unit))
    if before[-1] != after[-1]:
        found.add(("atc", world.system.endpoint(device).sid, iova & ~0xFFF))
    return found


def request_taken(world, device: str, iova: int, base: Footprint) -> Footprint:
    """A DMA or ATS request's exact footprint once it ran: it read every cache location of
    its address, but wrote only those whose contents it changed (a hit, or a fill of an entry
    already there, changes none) - sound while no cache can reach its capacity, since then
    the recency a lookup refreshes is never consulted (``VtdModel.lru_invisible``)."""
    if not world.model.lru_invisible:
        return base
    unwritten = world.universe.device_locations(device, iova) - world.hw_written
    return Footprint(base.reads, base.writes - unwritten, base.guard)


class Dma(Bounded):
    """``<dev>:dma r|w@<iova>``: the device issues a DMA (through its ATC when ATS is on)."""

    def __init__(self, name: str, times: int, device: str, iova: int, write: bool,
                 no_snoop: bool, pasid: int | None, after_thread: str = "",
                 expect_fault: bool = False):
        super().__init__(name, times)
        self.device, self.iova, self.write = device, iova, write
        self.no_snoop, self.pasid = no_snoop, pasid
        self.after_thread = after_thread  # the driver starts the device once it returned
        self.expect_fault = expect_fault  # declared to fault: never a spurious_fault

    def ready(self, world) -> bool:
        return not self.after_thread or world.threads[self.after_thread].done

    def footprint(self, world) -> Footprint:
        walk = world.walk(self.device, self.iova, self.pasid)
        cache = world.universe.device_locations(self.device, self.iova)
        # A faulting DMA records the fault (reading the queue-error bits for the event); the
        # fault records themselves are read by no modelled code and no property (no fault
        # handler), so two faults' order changes nothing else: no location for them here.
        writes = cache | walk.ad_writes
        if self.write:  # its page is known only once translated: any data or recycled page
            writes |= {DATA} | {("page", p) for p in world.recycled}
        gate = {finished_location(self.after_thread)} if self.after_thread else set()
        verdict = vl.dma_reads(world, self.device, self.iova, self.pasid)
        shadows = {("fill", *loc) for loc in cache if loc[0] in ("cc", "psc")}
        return fp(walk.reads | verdict | {reg(0, 0x34)} | gate | shadows, writes, gate)

    def taken(self, world, base: Footprint) -> Footprint:
        return request_taken(world, self.device, self.iova, base)

    def step(self, world) -> StepRecord:
        ep = world.system.endpoint(self.device)
        before = cache_contents(ep)
        walked = world.walk(self.device, self.iova, self.pasid)  # memory before the request
        if self.write:
            data = world.next_pattern()
            result = ep.dma_write(self.iova, data, self.pasid, self.no_snoop)
        else:
            result = ep.dma_read(self.iova, 8, self.pasid, self.no_snoop)
        world.hw_written = changed_locations(world, self.device, self.iova, self.pasid,
                                             before, cache_contents(ep), walked)
        self.fire(world)
        violated = world.monitor.dma(self.device, self.iova, self.write, result, world.clock,
                                     self.pasid, self.expect_fault)
        world.monitor.hardware_step(ep.sid)
        kind = "write" if self.write else "read"
        if self.pasid is not None:
            kind = f"{kind} pasid={self.pasid:#x}"
        if result.fault is not None:
            text = f"dma {kind} {self.iova:#x} faults: {describe_fault(result.fault)}"
        else:
            text = f"dma {kind} {self.iova:#x} -> {result.hpa:#x}"
        return StepRecord(self.name, text, {"key": True, "chain": text if not violated
                                            else f"{text} ({violated})",
                                            "setup": world.system.setup_causes(walked.addrs)})


class AtsPrefetch(Bounded):
    """``<dev>:ats@<iova>``: the device fills its ATC with a Translation Request (ATS), with a
    PASID prefix when ``pasid`` is set."""

    def __init__(self, name: str, times: int, device: str, iova: int, pasid: int | None = None):
        super().__init__(name, times)
        self.device, self.iova, self.pasid = device, iova, pasid

    def ready(self, world) -> bool:
        return world.system.endpoint(self.device).ats

    def footprint(self, world) -> Footprint:
        walk = world.walk(self.device, self.iova, self.pasid)
        cache = world.universe.device_locations(self.device, self.iova)
        # Whether ATS is enabled changes only where an op writes the device's member location
        # (attach, detach, ats_disable): the prefetch waits on it.
        member = {("member", self.device)}
        shadows = {("fill", *loc) for loc in cache if loc[0] in ("cc", "psc")}
        return fp(walk.reads | {reg(0, 0x34)} | shadows, cache | walk.ad_writes, member)

    def taken(self, world, base: Footprint) -> Footprint:
        return request_taken(world, self.device, self.iova, base)

    def step(self, world) -> StepRecord:
        ep = world.system.endpoint(self.device)
        before = cache_contents(ep)
        walked = world.walk(self.device, self.iova, self.pasid)
        entry = ep.ats_prefetch(self.iova, self.pasid)
        world.hw_written = changed_locations(world, self.device, self.iova, self.pasid,
                                             before, cache_contents(ep), walked)
        self.fire(world)
        world.monitor.hardware_step(ep.sid)
        hpa = getattr(entry, "hpa", None)
        got = f" -> {hpa:#x}" if entry and getattr(entry, "read", False) else " (nothing)"
        text = f"ats {self.device}@{self.iova:#x}{got}"
        return StepRecord(self.name, text, {"key": True, "chain": text,
                                            "setup": world.system.setup_causes(walked.addrs)})


class TornFill(Bounded):
    """``hw:torn-fill <cache> <dev>@<iova> (<first> first)``: the unit fetches the multi-qword
    entries of a walk (root, context, PASID entries) in 64-bit pieces at two moments - first
    qword 0, the one with P (``first = "p"``), or the other qwords (``"rest"``) - then reads the
    remaining pieces and fills ``cache`` from the combination (no atomicity wider than a qword
    is promised for these reads).  An invalidation of the cache location in between drops the
    early pieces: a fetch in flight across an invalidation must not leave a stale entry."""

    def __init__(self, name: str, times: int, device: str, iova: int, cache: str,
                 pasid: int | None = None, first: str = "p"):
        super().__init__(name, times)
        self.device, self.iova, self.cache, self.pasid = device, iova, cache, pasid
        self.first = first

    def early(self, world) -> dict | None:
        return world.pieces.get(self.name)

    def location(self) -> tuple:
        return ("torn", self.name)

    def cache_locations(self, world) -> set:
        return world.universe.cache_locations(self.device, self.iova, self.cache)

    def _fills(self, world) -> list:
        ep = world.system.endpoint(self.device)
        fills = ep.unit.possible_fills(ep.sid, self.iova, self.pasid, self.early(world))
        return [f for f in fills if f.cache == self.cache]

    def ready(self, world) -> bool:
        if self.early(world) is None:
            return bool(world.walk(self.device, self.iova, self.pasid).fills)
        return bool(self._fills(world))

    def footprint(self, world) -> Footprint:
        walk = world.walk(self.device, self.iova, self.pasid)
        mine = {self.location()}
        if self.early(world) is None:  # reading the early pieces changes nothing shared
            return fp(walk.reads, mine, walk.reads)
        cache = self.cache_locations(world)
        return fp(walk.reads | mine, cache | mine | walk.ad_writes, walk.reads | mine)

    def step(self, world) -> StepRecord:
        ep = world.system.endpoint(self.device)
        if self.early(world) is None:
            early = world.pieces[self.name] = self._read_early(ep.unit, ep.sid)
            text = f"torn-fill {self.cache} {self.device}@{self.iova:#x}: {self.first} read"
            return StepRecord(self.name, text, {"key": True, "chain": text,
                                                "setup": world.system.setup_causes(early)})
        # The rest is read from memory as a walk now reads it (the walk's addresses).
        rest = world.walk(self.device, self.iova, self.pasid).addrs
        fills = self._fills(world)
        for f in fills:
            ep.unit.apply_fill(f)
        del world.pieces[self.name]
        self.fire(world)
        via = next((f.entry.raw for f in fills if f.cache == "context_cache"), None)
        world.monitor.hardware_step(ep.sid, via)
        text = f"torn-fill {self.cache} {self.device}@{self.iova:#x}: rest read, filled"
        return StepRecord(self.name, text, {"key": True, "chain": text,
                                            "setup": world.system.setup_causes(rest)})

    def _read_early(self, unit, sid: int) -> dict:
        """The early pieces, as the unit reads structures (snooped iff ECAP.C)."""
        found = {}
        for addr, qwords in unit.entry_pieces(sid, self.iova, self.pasid):
            picked = [addr] if self.first == "p" else [addr + 8 * i for i in range(1, qwords)]
            for a in picked:
                found[a] = unit.memory.read_qword(a, snoop=unit.caps.coherent)
        return found
