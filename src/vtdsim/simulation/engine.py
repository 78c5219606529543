"""Discrete-event time over the one model (SimPy): driver operations run as the steps they
yield, each charged; spinlocks with contention; the unit's invalidation hardware busy for each
batch a queue-tail write publishes; DMA translations paying the walk reads the unit made.

A driver operation runs inside a SimPy process through ``run_op`` (``yield from``): every step
is applied to the model by the direct executor's own handlers (``DirectExecutor.apply``: one
set of step semantics) and charged from the constants table.  Time is handed to SimPy only at
the points where another actor can tell the difference - a lock taken or released, a wait on
the hardware, an IQT write, the end of the operation - so the charges of the steps in between
are summed and paid at once (the SimPy process overhead is per synchronisation point, not per
step), with an event only when another is due before the payment ends (``elapse_alone``).
Locks are FIFO spinlocks: a waiter spins (its CPU stays busy) until the holder releases, then
pays a cache-line hand-off (``lock_handoff_ns``).  An IQT write asks the platform
(``platforms.py``) what it costs; on bare metal the unit (``qi_mode="async"``) then performs
one descriptor per ``descriptor_ns`` in its own process, and a CPU polling a status
(``WaitQword``/``WaitRegister``) spins until the hardware has written it.  A DMA translation
(``translate``) costs one IOTLB lookup plus one walk read per structure read the unit's walk
made (root/context/PASID entries, paging-structure-cache misses), each priced as the caller
says (``walk_read_ns``: an LLC or a DRAM read for a hardware unit, by whether its walks snoop;
the VMM's read for an emulated one), one after the other: each read needs the last.

Not modelled: the order of effects inside one batch of steps (they are applied at the batch's
start and paid for at its end: device DMA cannot see a half-made batch earlier than a
synchronisation point), several page walkers in the unit racing one another, CPU caches' effect
on the driver's own loads and stores (one cost per step), interrupts and preemption.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Generator
from typing import Any

import simpy
from simpy.events import URGENT

from vtdsim.driver import steps as st
from vtdsim.errors import ModelError
from vtdsim.simulation.platforms import DESC_KEYS

LINE = 64
PAGE = 4096
WAIT_KEY = "desc:inv_wait"  # the only descriptor that writes memory a CPU polls (6.5.2.8)


class SimLock:
    """A FIFO spinlock in simulated time: the holder, and the SimPy events of its waiters."""

    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = False
        self.waiters: deque[simpy.Event] = deque()


class TimedMachine:
    """A booted ``System`` under a SimPy clock, with the costs of ``constants`` and
    ``platform``."""

    lookahead = True  # ``elapse_alone`` may skip events (False: one event per wait, as before)
    hardware_sleeps = True  # ``_start_hardware`` wakes one process (False: one per publication)

    def __init__(self, system, constants, platform, start_ns: float = 0.0, *,
                 dma_unit=None, walk_read_ns: float | None = None):
        self.env = simpy.Environment(initial_time=start_ns)
        self.system, self.constants, self.platform = system, constants, platform
        self.unit = system.unit
        # the unit translating the devices' DMA (a host's, for a device assigned to a guest)
        self.dma_unit = dma_unit or system.unit
        self.executor = system.executor
        self.stats = self.unit.stats
        mem = constants.ns("cpu_mem_op_cycles")
        # Steps with a fixed charge and no synchronisation: applied and summed.
        self.cost: dict[type, float] = {
            st.CpuWrite: mem, st.CpuCmpxchg: mem, st.CpuRead: mem, st.AllocPage: mem,
            st.FreePage: mem, st.Clflush: constants.ns("clflush_cycles"),
            st.Wbinvd: constants.ns("wbinvd_ns"), st.ReuseIova: 0.0, st.Annotate: 0.0,
        }
        # The hot loop's table: step class -> (the executor's handler, charge), prepared once
        # so a step costs one lookup (``run_op``); the executor still counts every step.
        self._handlers, self._applied = self.executor.dispatch()
        self._fixed = {kind: (self._handlers[kind], ns) for kind, ns in self.cost.items()}
        # Synchronisation steps: step class -> how one runs when it need not wait.
        self._sync_now = {
            st.MmioWrite: self._mmio_write_now, st.MmioRead: self._mmio_read_now,
            st.WaitQword: self._wait_qword_now, st.WaitRegister: self._poll_now,
        }
        self._qword_satisfied = self.executor.wait_qword_satisfied
        self._on_lock, self._on_unlock = self._handlers[st.Lock], self._handlers[st.Unlock]
        self._on_mmio_write = self._handlers[st.MmioWrite]
        self._on_mmio_read = self._handlers[st.MmioRead]
        self.zero_page_ns = constants.ns("cpu_zero_page_cycles")
        self.clflush_ns = constants.ns("clflush_cycles")
        self.lock_ns = constants.ns("lock_cycles")
        self.handoff_ns = constants.ns("lock_handoff_ns")
        self.hit_ns = constants.ns("iotlb_hit_ns")
        self.dram_ns = constants.ns("dram_read_ns") if walk_read_ns is None else walk_read_ns
        self.locks: dict[str, SimLock] = {}
        self.lock_wait_ns: Counter[str] = Counter()  # time spent spinning, by lock
        self._hw = None  # the invalidation hardware's process while it has work
        self._hw_process = None  # the same process, once started (``_start_hardware``)
        self._hw_idle: simpy.Event | None = None  # its wake-up while it sleeps (none to do)
        self._waiters: list[simpy.Event] = []  # CPUs polling a status the hardware will write
        self.iqt_writes = 0
        keys = frozenset(platform.iqt_keys)
        self._desc_keys_only = keys if keys <= frozenset(DESC_KEYS) else frozenset()
        self._desc_done: dict[str, tuple[float, bool]] = {}  # ``_descriptor_done``'s memo
        self.iqt_offset = self.unit.regs.by_name["IQT"].offset
        # What ``run_op`` binds for its loop, once: the step classes, tables and handlers.
        # A ``CpuRead`` - nearly half of all steps: every page-table walk's - is the executor's
        # ``_cpu_read`` written out, its load with the step's fields: one call fewer each.  An
        # ``Annotate`` (the trace events: several per operation) is the executor's
        # ``_annotate`` written out: passed to each of its listeners (the list itself, live).
        self._run_op_bound = (
            self.env, self.executor.apply, self._fixed.get, self._applied, self._sync_now.get,
            st.CpuRead, self.executor.memory.cpu_load, self.cost[st.CpuRead],
            st.Annotate, self.executor.listeners,
            st.Lock, st.Unlock, self._on_lock, self._on_unlock, self.lock_ns)

    @property
    def now(self) -> float:
        return self.env.now

    # -- driver operations ------------------------------------------------------------------------
    def run_op(self, gen: Generator, pending: float = 0.0) -> Generator[simpy.Event, Any, Any]:
        """Run driver operation ``gen`` in the calling SimPy process; its return value.
        ``pending``: CPU time the caller spent just before (paid with the op's first batch)."""
        (env, apply, fixed, applied, sync_now, cpu_read, load, read_ns, annotate, listeners,
         lock, unlock, on_lock, on_unlock, lock_ns) = self._run_op_bound
        send, reply = gen.send, None
        # A lock taken at once, or an unlock: the executor's handler, the engine's spinlock
        # (``_take``/``release``, bound per operation: a ``LockWatch`` wraps them before the
        # run starts).
        take, release = self._take, self.release
        # The ``CpuRead``s applied since they were last counted: a run of them (a walk) is
        # counted in one go, before any other step - before anything but their loads runs,
        # so whatever reads the counts (between steps, or once the op raised) finds them all.
        reads = 0
        try:
            while True:
                try:
                    step = send(reply)
                except StopIteration as stop:
                    result = stop.value
                    break
                kind = type(step)
                if kind is cpu_read:
                    reads += 1
                    reply = load(step.addr, step.size)
                    pending += read_ns
                    continue
                if reads:
                    applied[cpu_read] += reads
                    reads = 0
                if kind is annotate:  # no charge
                    applied[kind] += 1
                    for listener in listeners:
                        listener(step)
                    reply = None
                    continue
                entry = fixed(kind)
                if entry is not None:
                    handler, ns = entry
                    applied[kind] += 1
                    reply = handler(step)
                    pending += ns
                    continue
                now = sync_now(kind)  # a synchronisation step (None: a lock, a bulk or an unknown)
                if now is None and (kind is st.CpuZero or kind is st.ClflushRange):
                    reply = apply(step)
                    pending += self._bulk_ns(step)
                    continue
                if pending and not self.elapse_alone(pending):
                    yield env.timeout(pending)
                if kind is lock:  # a spinlock: ``iommu->lock``, ``qi->q_lock``, a cache lock ...
                    if take(step.name):
                        applied[kind] += 1
                        reply, pending = on_lock(step), lock_ns
                    else:  # another CPU holds it: spin for it
                        reply, pending = yield from self._queue_for_lock(step)
                    continue
                if kind is unlock:
                    applied[kind] += 1
                    reply, pending = on_unlock(step), 0.0
                    release(step.name)
                    continue
                # unknown kinds: the executor names the bad step
                done = now(step) if now is not None else (apply(step), 0.0)
                while done is None:
                    # A poll whose condition was just found false: block until the hardware makes
                    # it true (or stops the queue with an error software must clear: the
                    # executor then returns unsatisfied), asking its ``_sync_now`` handler once
                    # per wake-up (a register poll's ``ready`` reads the register: a counted
                    # MMIO access).  Here, not in a generator of its own: one fewer per wait.
                    if self._hw is None:
                        raise ModelError(f"{step!r} can never complete: the unit is idle")
                    event = env.event()
                    self._waiters.append(event)
                    yield event
                    done = now(step)
                reply, pending = done
        finally:
            if reads:
                applied[cpu_read] += reads
        if pending and not self.elapse_alone(pending):
            yield env.timeout(pending)
        return result

    def elapse_alone(self, ns: float) -> bool:
        """Let ``ns`` pass for the running process without a SimPy event, when no other event
        is due by then: a timeout would be the next event popped (it would sort after any
        event at the same instant), so nothing could run in between and every later event
        keeps its order - the result is identical, one event cheaper.  False (nothing done)
        otherwise: the caller yields the timeout.  ``lookahead = False`` turns it off (the
        test comparing both)."""
        env = self.env
        due = env._now + ns  # what ``Timeout`` schedules at (SimPy's clock, ``env.now``)
        queue = env._queue  # (time, priority, id, event), a heap: ``env.peek()`` is its head
        if (queue and queue[0][0] <= due) or not self.lookahead:
            return False
        env._now = due  # as ``env.step`` sets it when it pops the timeout
        return True

    def _bulk_ns(self, step) -> float:
        if type(step) is st.CpuZero:
            return self.zero_page_ns * step.size / PAGE
        first = step.addr & ~(LINE - 1)
        return self.clflush_ns * max(1, -(-(step.addr + step.size - first) // LINE))

    # A step another actor can observe (time is paid up before it), when it completes without
    # waiting: its reply and the time it takes itself, which the caller carries on to the next
    # synchronisation point (so an MMIO access adds no event).  None when it must wait
    # (``run_op``'s poll loop): a poll the hardware has not satisfied yet.  One method per
    # step class (the ``_sync_now`` table; locks are ``run_op``'s own), no generator: nearly
    # every such step completes at once.  Each counts the step as ``DirectExecutor.apply``
    # does.
    def _mmio_write_now(self, step) -> tuple[Any, float]:
        if step.offset == self.iqt_offset:
            return None, self._iqt_write(step)
        self._applied[st.MmioWrite] += 1
        return self._on_mmio_write(step), self.platform.mmio_write_ns(step.offset)

    def _mmio_read_now(self, step) -> tuple[Any, float]:
        self._applied[st.MmioRead] += 1
        return self._on_mmio_read(step), self.platform.mmio_read_ns(step.offset)

    def _poll_now(self, step) -> tuple[Any, float] | None:
        return (self.executor.apply(step), 0.0) if self.executor.ready(step) else None

    def _wait_qword_now(self, step) -> tuple[Any, float] | None:
        """``_poll_now`` of a ``WaitQword``: a satisfied one (the commonest case: the wait
        of every ``qi_submit_sync`` once the hardware wrote its status) is answered with
        one load; anything else (not satisfied, a queue error pending) the general way."""
        value = self._qword_satisfied(step)
        return (value, 0.0) if value is not None else self._poll_now(step)

    def _queue_for_lock(self, step) -> Generator[simpy.Event, Any, tuple[Any, float]]:
        """A lock another CPU holds: spin until it is handed over; (reply, time) as
        ``run_op`` takes a free one."""
        yield from self._queue_for(step.name)
        return self.executor.apply(step), self.lock_ns

    def _iqt_write(self, step) -> float:
        """Publish the queue; the CPU time of the write.  Bare metal: the hardware starts once
        the posted write arrives.  A synchronous platform: the queue is drained now."""
        platform = self.platform
        self.iqt_writes += 1
        if not platform.synchronous:
            self._applied[st.MmioWrite] += 1  # ``executor.apply``, its handler looked up once
            self._on_mmio_write(step)
            cpu_ns = platform.iqt_write({}).cpu_ns
            if self._hw is None:
                self._start_hardware(cpu_ns)
            return cpu_ns
        before = platform.counters(self)
        self.executor.apply(step)
        while self.unit.qi_step():
            pass
        after = platform.counters(self)
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        charge = platform.iqt_write(delta)
        self._wake_waiters()
        return charge.cpu_ns + charge.busy_ns

    def _start_hardware(self, delay: float) -> None:
        """Set the idle invalidation hardware going, its first descriptor ``delay`` from now.
        The first time, its SimPy process (``_invalidation_hardware``); after that the same
        process, asleep on ``_hw_idle`` since it ran out of work, woken as a new process
        would start - by an URGENT event now (SimPy's ``Initialize``: same time, priority
        and place in the event order) - so no process is made and ended (a ``StopIteration``
        and an event that wakes nobody) per publication.  ``hardware_sleeps = False``: one
        process per publication, as before (the test comparing both)."""
        wake = self._hw_idle
        if wake is None:
            self._hw = self._hw_process = self.env.process(self._invalidation_hardware(delay))
            return
        self._hw, self._hw_idle = self._hw_process, None
        wake._ok, wake._value = True, delay  # ``Event.succeed(delay)`` ...
        self.env.schedule(wake, URGENT)  # ... at ``Initialize``'s priority

    def _invalidation_hardware(self, delay: float) -> Generator[simpy.Event, Any, None]:
        """The unit fetches and performs one descriptor at a time (spec 6.5.2), each taking
        the platform's ``descriptor_ns``, the first after ``delay`` (the posted IQT write's
        flight).  A descriptor's effect is made when it is fetched and its time paid after;
        pollers re-check only after a descriptor that writes memory (an invalidation wait's
        status) or when the queue stops (done, or an error software must clear).  Then it
        sleeps until the next publication (``_start_hardware``) hands it the next ``delay``.

        Each step's answer - its hardware time, and whether it wrote a status a CPU polls -
        comes from ``_descriptor_step``, or, when the platform's ``iqt_keys`` are all
        descriptor counters, from the counter of the descriptor performed alone
        (``queue.performed``: a step moves at most that one), remembered per counter
        (``_descriptor_done``): no snapshot of the keys, no call."""
        unit, env, remembered = self.unit, self.env, self._desc_done
        queue = unit.queue if self._desc_keys_only else None
        while True:
            while True:
                if queue is None:
                    done = self._descriptor_step(unit)
                    if done is None:
                        break
                elif queue.step():  # ``unit.qi_step``, one call fewer
                    done = (remembered.get(queue.performed)
                            or self._descriptor_done(queue.performed))
                else:
                    break
                busy = delay + done[0]
                if not self.elapse_alone(busy):
                    yield env.timeout(busy)
                delay = 0.0
                if done[1] and self._waiters:
                    # Woken pollers run before the next descriptor is fetched (zero-time yield).
                    self._wake_waiters()
                    yield env.timeout(0)
            self._hw = None
            if self._waiters:  # those woken after a status write are gone
                self._wake_waiters()
            if not self.hardware_sleeps:
                return
            self._hw_idle = env.event()
            delay = yield self._hw_idle

    def _descriptor_step(self, unit) -> tuple[float, bool] | None:
        """One ``qi_step``: None if the unit did nothing, else its hardware time - the
        platform's ``descriptor_ns`` of the ``iqt_keys`` that moved (a snapshot of them
        around the step) - and whether it wrote a status a CPU polls (``WAIT_KEY`` moved)."""
        keys, stats = self.platform.iqt_keys, self.stats
        before = [stats[k] for k in keys]
        if not unit.qi_step():
            return None
        delta = {k: stats[k] - b for k, b in zip(keys, before, strict=True) if stats[k] != b}
        return self.platform.descriptor_ns(delta), WAIT_KEY in delta

    def _descriptor_done(self, counter: str) -> tuple[float, bool]:
        """``_descriptor_step``'s answer for a step that moved descriptor counter ``counter``
        alone (of keys that are all descriptor counters), remembered: ``descriptor_ns`` is a
        pure function of the delta (a platform's prices are fixed when it is built)."""
        delta = {counter: 1} if counter in self._desc_keys_only else {}
        done = self._desc_done[counter] = (self.platform.descriptor_ns(delta), WAIT_KEY in delta)
        return done

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.succeed()

    # -- locks -------------------------------------------------------------------------------------
    def acquire(self, name: str) -> Generator[simpy.Event, Any, None]:
        if not self._take(name):
            yield from self._queue_for(name)

    def _take(self, name: str) -> bool:
        """Take lock ``name`` if it is free."""
        lock = self.locks.get(name)
        if lock is None:
            lock = self.locks[name] = SimLock()
        if lock.held:
            return False
        lock.held = True
        return True

    def _queue_for(self, name: str) -> Generator[simpy.Event, Any, None]:
        """Spin (FIFO) until the holder of ``name`` hands it over."""
        lock, start, event = self.locks[name], self.env.now, self.env.event()
        lock.waiters.append(event)
        yield event  # the holder handed the lock over: the line moves to this core
        if not self.elapse_alone(self.handoff_ns):
            yield self.env.timeout(self.handoff_ns)
        self.lock_wait_ns[name] += self.env.now - start

    def release(self, name: str) -> None:
        lock = self.locks[name]
        if lock.waiters:
            lock.waiters.popleft().succeed()  # held stays True: ownership passes
        else:
            lock.held = False

    def hold(self, name: str, ns: float) -> Generator[simpy.Event, Any, None]:
        """Take lock ``name``, work ``ns`` under it, release (bookkeeping that is not a
        driver step, e.g. the IOVA rbtree)."""
        yield from self.acquire(name)
        if not self.elapse_alone(ns + self.lock_ns):
            yield self.env.timeout(ns + self.lock_ns)
        self.release(name)

    # -- DMA ---------------------------------------------------------------------------------------
    def translate(self, sid: int, iova: int, write: bool):
        """One untranslated request through the DMA's unit: (result, latency ns).  A cache
        hit (``translate_cached``) reads nothing: no walk-read counters to compare."""
        entry = self.dma_unit.translate_cached(sid, iova, write)
        if entry is not None:
            return entry, self.hit_ns
        return self.translate_miss(sid, iova, write)

    def translate_miss(self, sid: int, iova: int, write: bool):
        """``translate`` once ``translate_cached`` has answered None (which changed
        nothing): the full request flow, priced by the walk reads it made."""
        unit = self.dma_unit
        stats = unit.stats
        before = stats["walk_reads"]
        result = unit.translate_missed(sid, iova, write)
        return result, self.hit_ns + (stats["walk_reads"] - before) * self.dram_ns
