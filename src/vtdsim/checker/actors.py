"""The actors of a VT-d world: driver threads stepping the driver's generators, and the bounded
hardware freedoms (cache fills and evictions, the async invalidation queue, device DMA and ATS
prefetches), each with the precise footprint DPOR needs (VT-d spec 6.1: hardware may fill or
evict any cache entry at any moment; 6.5.2: the queue is processed in order).

Abstract locations (``world.Footprint``):

* ``("mem", line)`` a 64-byte line (CPU view and DRAM together); ``("page", pfn)`` every line of
  a page that was freed once (a stale walk may read a recycled page-table page);
* ``("reg", unit, "IQT"|"IQH"|"FSTS"|"OTHER")``;
* ``("cc", unit, sid)``, ``("pc", unit, sid)``, ``("tlb", unit, page)``, ``("psc", unit, page)``,
  ``("atc", sid, page)``: cache contents, per IOVA page of the scenario's bounded universe;
* ``("lock", name)``, ``("alloc",)`` (the page allocator), ``("data",)`` (data-page contents
  reached by DMA, whose host address is unknown before the step), ``("drv",)``.

``("drv",)`` stands for the driver's own bookkeeping, which its generators change between
steps without a step (domain lists, flush-queue counters, the iotlb_sync_map flag).  A thread
transition touches it when it begins or ends an operation, when its step is a lock, an
allocator or an annotation step, and whenever the thread holds no lock: bookkeeping the driver
changes inside a critical section is ordered by the lock, everything else is treated as shared.

Not modelled: stale walks through a *live* table reached from a stale cached pointer (the dry
walk of current memory gives the lines read; a recycled page is covered by ``("page", pfn)``),
several units (unit 0 only), DMA from CPUs other than through threads' ops.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from vtdsim.checker.world import Footprint, StepRecord
from vtdsim.driver import steps as st
from vtdsim.hardware.descriptors import decode
from vtdsim.hardware.memory import LINE_SIZE

DRV = ("drv",)
ALLOC = ("alloc",)
DATA = ("data",)
_EMPTY = frozenset()
_MEMORY_STEPS = (st.CpuWrite, st.CpuCmpxchg, st.CpuZero, st.CpuRead, st.Clflush,
                 st.ClflushRange, st.Wbinvd, st.MmioWrite, st.MmioRead, st.WaitQword,
                 st.WaitRegister)
_REG_NAMES = {0x88: "IQT", 0x80: "IQH", 0x34: "FSTS"}


def line(addr: int) -> tuple:
    return ("mem", addr & ~(LINE_SIZE - 1))


def lines(addr: int, size: int) -> set:
    first = addr & ~(LINE_SIZE - 1)
    return {("mem", a) for a in range(first, addr + size, LINE_SIZE)}


def reg(unit: int, offset: int) -> tuple:
    return ("reg", unit, _REG_NAMES.get(offset, "OTHER"))


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
    if isinstance(step, st.WaitQword):
        return "wait done"
    if isinstance(step, st.CpuWrite) and step.value == 0:
        return f"clear [{step.addr:#x}]"
    return None


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


class Thread:
    """A driver thread: its operations run one after the other, one step per transition."""

    optional = False

    def __init__(self, name: str, ops: list):
        self.name = name
        self.ops = ops

    def state(self, world) -> ThreadState:
        return world.threads[self.name]

    def live(self, world) -> bool:
        return not self.state(world).done

    def ready(self, world) -> bool:
        s = self.state(world)
        return s.pending is None or world.stepper.ready(s.pending, self._skipped(s))

    def footprint(self, world) -> Footprint:
        s = self.state(world)
        if s.pending is None:
            return fp(writes={DRV})
        step = s.pending
        base = world.stepper.footprint(step) if not self._skipped(s) else fp()
        if self._touches_driver(s, step):
            return fp(base.reads, base.writes | {DRV}, base.guard)
        return base

    @staticmethod
    def _touches_driver(s: ThreadState, step: st.Step) -> bool:
        return not isinstance(step, _MEMORY_STEPS) or not s.locks

    @staticmethod
    def _skipped(s: ThreadState) -> bool:
        return s.pending is not None and skipped(s.pending, s.ops[s.index][2].skip)

    def step(self, world) -> StepRecord:
        s = self.state(world)
        if s.pending is None:
            return self._begin(world, s, "")
        step, skipped = s.pending, self._skipped(s)
        reply = skip_reply(step) if skipped else world.stepper.apply(step, self.name)
        self._track_locks(s, step, skipped)
        text = ("(skipped) " if skipped else "") + describe_step(step)
        label = chain_label(step, skipped)
        world.monitor.thread_step(self.name, step, reply, skipped)
        try:
            s.pending = s.gen.send(reply)
        except StopIteration as stop:
            return self._end(world, s, text, stop.value, label)
        return StepRecord(self.name, text, {"key": bool(label), "chain": label or text})

    @staticmethod
    def _track_locks(s: ThreadState, step: st.Step, skipped: bool) -> None:
        if skipped:
            return
        if isinstance(step, st.Lock):
            s.locks.add(step.name)
        elif isinstance(step, st.Unlock):
            s.locks.discard(step.name)

    def _begin(self, world, s: ThreadState, before: str) -> StepRecord:
        """Start the next op (its code up to the first step runs now)."""
        label, factory, op = s.ops[s.index]
        world.monitor.op_begin(self.name, op)
        s.gen = factory(world.system)
        try:
            s.pending = s.gen.send(None)
        except StopIteration as stop:
            return self._end(world, s, f"{before}begin {label}", stop.value, None)
        text = f"{before}begin {label}"
        return StepRecord(self.name, text, {"chain": label})

    def _end(self, world, s: ThreadState, text: str, value: Any, label: str | None):
        op_label, _, op = s.ops[s.index]
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
        u = self.unit
        unit = world.system.unit(u)
        queue = unit.queue
        addr = queue.base + queue.head
        reads = {reg(u, 0x88), reg(u, 0x80)} | lines(addr, queue.width)
        writes = {reg(u, 0x80), reg(u, 0x34)}
        return fp(reads, writes | world.universe.invalidated(u, _peek(unit, addr)))

    def step(self, world) -> StepRecord:
        unit = world.system.unit(self.unit)
        desc = _peek(unit, unit.queue.base + unit.queue.head)
        unit.qi_step()
        text = desc.describe() if desc is not None else "fetch"
        return StepRecord(self.name, text, {"key": desc is not None and desc.type != 5,
                                            "chain": f"hw {desc.label if desc else 'qi'}"})


def _peek(unit, addr: int):
    """The descriptor at ``addr`` as the unit would fetch it (a snooped read, no side effect)."""
    width = unit.queue.width
    raw = unit.memory.dma_read(addr, width, snoop=True)
    try:
        return decode([int.from_bytes(raw[i : i + 8], "little") for i in range(0, width, 8)])
    except Exception:  # noqa: BLE001 - a garbage slot: the unit raises IQE, footprint is coarse
        return None


class CacheFill(Bounded):
    """``hw:fill <cache> <dev>@<iova>``: insert the entries a walk of current memory gives."""

    def __init__(self, name: str, times: int, device: str, iova: int, cache: str):
        super().__init__(name, times)
        self.device, self.iova, self.cache = device, iova, cache

    def _fills(self, world) -> list:
        return [f for f in world.walk(self.device, self.iova).fills if f.cache == self.cache]

    def ready(self, world) -> bool:
        return bool(self._fills(world))

    def footprint(self, world) -> Footprint:
        walk = world.walk(self.device, self.iova)
        cache = world.universe.cache_locations(self.device, self.iova, self.cache)
        writes = cache | {line(a) for f in walk.fills for a, _ in f.writes}
        return fp(walk.reads, writes, walk.reads)

    def step(self, world) -> StepRecord:
        fills = self._fills(world)
        unit = world.system.endpoint(self.device).unit
        for f in fills:
            unit.apply_fill(f)
        self.fire(world)
        world.monitor.hardware_step()
        entry = fills[-1].entry
        hpa = getattr(entry, "hpa", None)
        shown = f" -> {hpa:#x}" if isinstance(hpa, int) and getattr(entry, "present", True) \
            else (" (not present)" if not getattr(entry, "present", True) else "")
        text = f"fill {self.cache} {self.device}@{self.iova:#x}{shown}"
        return StepRecord(self.name, text, {"key": True, "chain": text})


class CacheEvict(Bounded):
    """``hw:evict <cache> <dev>@<iova>``: drop a cached entry covering the IOVA (spec 6.1)."""

    def __init__(self, name: str, times: int, device: str, iova: int, cache: str):
        super().__init__(name, times)
        self.device, self.iova, self.cache = device, iova, cache

    def _keys(self, world) -> list:
        unit = world.system.endpoint(self.device).unit
        sid = world.system.endpoint(self.device).sid
        return [k for name, k in unit.cached()
                if name == self.cache and covers(name, k, sid, self.iova)]

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


class Dma(Bounded):
    """``<dev>:dma r|w@<iova>``: the device issues a DMA (through its ATC when ATS is on)."""

    def __init__(self, name: str, times: int, device: str, iova: int, write: bool,
                 no_snoop: bool, pasid: int | None):
        super().__init__(name, times)
        self.device, self.iova, self.write = device, iova, write
        self.no_snoop, self.pasid = no_snoop, pasid

    def ready(self, world) -> bool:
        return True

    def footprint(self, world) -> Footprint:
        walk = world.walk(self.device, self.iova)
        cache = world.universe.device_locations(self.device, self.iova)
        writes = cache | walk.reads | {reg(0, 0x34), DATA}
        return fp(walk.reads | {ALLOC}, writes)

    def step(self, world) -> StepRecord:
        ep = world.system.endpoint(self.device)
        if self.write:
            data = world.next_pattern()
            result = ep.dma_write(self.iova, data, self.pasid, self.no_snoop)
        else:
            result = ep.dma_read(self.iova, 8, self.pasid, self.no_snoop)
        self.fire(world)
        violated = world.monitor.dma(self.device, self.iova, self.write, result, world.clock)
        world.monitor.hardware_step()
        kind = "write" if self.write else "read"
        if result.fault is not None:
            text = f"dma {kind} {self.iova:#x} faults: {result.fault}"
        else:
            text = f"dma {kind} {self.iova:#x} -> {result.hpa:#x}"
        return StepRecord(self.name, text, {"key": True, "chain": text if not violated
                                            else f"{text} ({violated})"})


class AtsPrefetch(Bounded):
    """``<dev>:ats@<iova>``: the device fills its ATC with a Translation Request (ATS)."""

    def __init__(self, name: str, times: int, device: str, iova: int):
        super().__init__(name, times)
        self.device, self.iova = device, iova

    def ready(self, world) -> bool:
        return world.system.endpoint(self.device).ats

    def footprint(self, world) -> Footprint:
        walk = world.walk(self.device, self.iova)
        cache = world.universe.device_locations(self.device, self.iova)
        return fp(walk.reads, cache | walk.reads | {reg(0, 0x34)})

    def step(self, world) -> StepRecord:
        entry = world.system.endpoint(self.device).ats_prefetch(self.iova)
        self.fire(world)
        world.monitor.hardware_step()
        hpa = getattr(entry, "hpa", None)
        got = f" -> {hpa:#x}" if entry and getattr(entry, "read", False) else " (nothing)"
        text = f"ats {self.device}@{self.iova:#x}{got}"
        return StepRecord(self.name, text, {"key": True, "chain": text})
