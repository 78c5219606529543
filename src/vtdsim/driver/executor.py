"""The direct executor: runs one driver operation straight through on a ``Platform``, applying
every step it yields (the atomic runner of the step vocabulary in ``driver/steps.py``; the
checker is the interleaving one).

Semantics of the steps it applies:

* CPU memory steps go to ``PhysicalMemory`` (the CPU view); ``Clflush``/``ClflushRange`` write
  lines back; ``Wbinvd`` does so for every line only when ``platform.wbinvd_works``.
* MMIO steps go to ``platform.units[i]``.
* ``WaitQword``/``WaitRegister``: if the condition already holds the step completes; otherwise
  units in ``qi_mode="async"`` are stepped (``unit.qi_step()``) until it holds.  A direct run
  cannot block, so when no unit can make progress the wait fails with ``ModelError`` naming the
  step - except when a unit's queue is stopped by an error software must clear (FSTS.IQE/ITE/
  ICE): then the step completes *unsatisfied*, exactly as one pass of Linux's polling loop
  would, so that ``qi_submit_sync`` reads FSTS next and runs its error handling
  (``qi_check_fault``).  The value polled is sent back.
* ``Lock``/``Unlock`` keep a table of held locks; taking a held lock cannot complete in a direct
  run (deadlock), and releasing a free one is a driver bug.
* ``AllocPage``/``FreePage`` use ``platform.pages``; ``ReuseIova`` is bookkeeping only;
  ``Annotate`` is passed to each listener.

``executor.steps`` counts applied steps by step-class name (the cost model reads it).

Not modelled: time - steps take none (``platform.now_ns`` moves only when a caller advances it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator
from typing import Any

from vtdsim.driver import steps as st
from vtdsim.errors import ModelError, SpecRuleBroken, hexval

LINE = 64
_FSTS_NAME = "FSTS"
_FSTS_QUEUE_ERRORS = 0x70  # IQE (4), ICE (5), ITE (6): the queue waits for software

Listener = Callable[[st.Annotate], None]
_NO_STOPS: frozenset[type] = frozenset()


def _where(gen: Generator) -> str:
    """``file:line (function)`` of the innermost frame suspended in a ``yield``."""
    while getattr(gen, "gi_yieldfrom", None) is not None:
        gen = gen.gi_yieldfrom
    frame, code = getattr(gen, "gi_frame", None), getattr(gen, "gi_code", None)
    if frame is None or code is None:
        return repr(gen)
    return f"{code.co_filename}:{frame.f_lineno} ({code.co_name})"


class DirectExecutor:
    """Apply every step of a driver generator to ``platform``; return the generator's value."""

    def __init__(self, platform, listeners: list[Listener] | None = None):
        self.platform = platform
        self.memory = platform.memory
        self.held: dict[str, str] = {}  # lock name -> the step's ``why`` that took it
        self.listeners: list[Listener] = list(listeners or [])
        self._handlers: dict[type, Callable[[Any], Any]] = {
            st.CpuWrite: self._cpu_write,
            st.CpuCmpxchg: self._cpu_cmpxchg,
            st.CpuZero: self._cpu_zero,
            st.CpuRead: self._cpu_read,
            st.Clflush: self._clflush,
            st.ClflushRange: self._clflush_range,
            st.Wbinvd: self._wbinvd,
            st.MmioWrite: self._mmio_write,
            st.MmioRead: self._mmio_read,
            st.WaitQword: self._wait_qword,
            st.WaitRegister: self._wait_register,
            st.Lock: self._lock,
            st.Unlock: self._unlock,
            st.AllocPage: self._alloc_page,
            st.FreePage: self._free_page,
            st.ReuseIova: _noop,
            st.Annotate: self._annotate,
        }
        # Applied steps by class: a plain dict holding every class (an exact dict's ``+=`` is
        # the interpreter's fast path; a Counter's is not), so no name lookup per step.
        self._applied: dict[type, int] = dict.fromkeys(self._handlers, 0)

    @property
    def steps(self) -> Counter[str]:
        """Applied steps by step-class name."""
        return Counter({cls.__name__: n for cls, n in self._applied.items() if n})

    def reset_steps(self) -> None:
        for kind in self._applied:  # in place: a runner may hold the table (``dispatch``)
            self._applied[kind] = 0

    def dispatch(self) -> tuple[dict[type, Callable[[Any], Any]], dict[type, int]]:
        """The handler ``apply`` runs per exact step class, and the live per-class count, for
        a runner that dispatches steps itself (the timed engine's hot loop): it must count
        every step it hands a handler, as ``apply`` does.  Read-only tables."""
        return self._handlers, self._applied

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, gen: Generator) -> Any:
        """Drive ``gen`` to completion.  The handler table is keyed by exact step class, so a
        lookup miss is where ``check_step`` runs (a non-Step, or a Step we do not know)."""
        return self.run_until(gen, None, _NO_STOPS)[1]

    def run_until(self, gen: Generator, reply: Any, stops: frozenset[type]
                  ) -> tuple[st.Step | None, Any]:
        """Drive ``gen`` as ``run`` does, sending ``reply`` first, but hand back the first step
        whose class is in ``stops`` unapplied: ``(step, None)``; ``(None, value)`` once ``gen``
        returns.  Replay's CPU streams (traces/cpus.py) decide themselves when such a step
        (a lock) may go, and apply it with ``apply``."""
        handlers, counts, send = self._handlers, self._applied, gen.send
        try:
            while True:
                step = send(reply)
                kind = type(step)
                if kind in stops:
                    return step, None
                try:
                    handler = handlers[kind]
                except KeyError:
                    st.check_step(step, _where(gen))
                    raise ModelError(f"{_where(gen)} yielded {step!r}: no executor handler"
                                     ) from None
                counts[kind] += 1
                reply = handler(step)
        except StopIteration as stop:
            return None, stop.value

    # -- one step at a time (the checker's entry points) ----------------------------------------
    def apply(self, step: st.Step) -> Any:
        """Apply one step and return what ``send`` gives back.  The interleaving checker calls
        this (after ``ready``) so that both runners share one set of step semantics."""
        handler = self._handlers.get(type(step))
        if handler is None:
            st.check_step(step, "a checker actor")
            raise ModelError(f"{step!r}: no executor handler")
        self._applied[type(step)] += 1
        return handler(step)

    def ready(self, step: st.Step) -> bool:
        """Can ``step`` complete now without any other actor moving?  A lock must be free; a
        wait's condition must hold, or its unit's queue be stopped by an error software must
        clear (then the poll returns unsatisfied, as in ``_wait``).  Everything else: yes."""
        if type(step) is st.Lock:
            return step.name not in self.held
        if type(step) is st.WaitQword:
            current = self.memory.cpu_load(step.addr, 8)
        elif type(step) is st.WaitRegister:
            current = self.platform.unit(step.unit).mmio_read(step.offset, step.size)
        else:
            return True
        return (current & step.mask) == step.value or self._queue_error_pending()

    def wait_qword_satisfied(self, step: st.WaitQword) -> int | None:
        """``apply`` of a ``WaitQword`` whose condition holds now, as one load: its reply
        (the value polled), the step counted.  None - nothing done - when it does not hold
        (then ``ready``/``apply`` decide: a queue error may let it complete unsatisfied).
        A runner's shortcut for ``ready`` then ``apply``: the load has no effect, so one
        stands for both."""
        current = self.memory.cpu_load(step.addr, 8)
        if current & step.mask != step.value:
            return None
        self._applied[st.WaitQword] += 1
        return current

    # -- CPU memory --------------------------------------------------------------------------------
    def _cpu_write(self, s: st.CpuWrite) -> None:
        if s.size not in st.CPU_WRITE_SIZES:
            raise ModelError(f"CpuWrite of {s.size} bytes at {hexval('addr', s.addr)} ({s.why})")
        self.memory.cpu_store(s.addr, s.value, s.size)

    def _cpu_cmpxchg(self, s: st.CpuCmpxchg) -> int:
        old = self.memory.cpu_load(s.addr, 8)
        if old == s.expected:
            self.memory.cpu_store(s.addr, s.new, 8)
        return old

    def _cpu_zero(self, s: st.CpuZero) -> None:
        self.memory.cpu_write(s.addr, bytes(s.size))

    def _cpu_read(self, s: st.CpuRead) -> int:
        # The timed engine's ``run_op`` makes this same load itself (its commonest step).
        return self.memory.cpu_load(s.addr, s.size)

    def _clflush(self, s: st.Clflush) -> None:
        self.memory.clflush(s.addr)

    def _clflush_range(self, s: st.ClflushRange) -> None:
        clflush = self.memory.clflush
        for line in range(s.addr & ~(LINE - 1), s.addr + s.size, LINE):
            clflush(line)

    def _wbinvd(self, s: st.Wbinvd) -> None:
        if self.platform.wbinvd_works:
            self.memory.wbinvd()

    # -- MMIO ------------------------------------------------------------------------------------
    def _mmio_write(self, s: st.MmioWrite) -> None:
        self.platform.unit(s.unit).mmio_write(s.offset, s.size, s.value)

    def _mmio_read(self, s: st.MmioRead) -> int:
        return self.platform.unit(s.unit).mmio_read(s.offset, s.size)

    # -- waits -----------------------------------------------------------------------------------
    def _wait_qword(self, s: st.WaitQword) -> int:
        return self._wait(s, lambda: self.memory.cpu_load(s.addr, 8), s.mask, s.value)

    def _wait_register(self, s: st.WaitRegister) -> int:
        unit = self.platform.unit(s.unit)
        return self._wait(s, lambda: unit.mmio_read(s.offset, s.size), s.mask, s.value)

    def _wait(self, s: st.Step, poll: Callable[[], int], mask: int, value: int) -> int:
        """Poll; step async units while the condition is false (see the module docstring)."""
        current = poll()
        while (current & mask) != value:
            if not self._hardware_progress():
                if self._queue_error_pending():
                    return current
                raise ModelError(f"{s!r} can never complete: no unit can make progress "
                                 "(a direct run cannot block)")
            current = poll()
        return current

    def _hardware_progress(self) -> bool:
        return any(u.qi_mode == "async" and u.qi_step() for u in self.platform.units)

    def _queue_error_pending(self) -> bool:
        # Peek at FSTS without an MMIO access: the executor, not the driver, is looking (a
        # loop, not ``any`` of a generator: every status poll not yet satisfied asks).
        for unit in self.platform.units:  # noqa: SIM110 (see above)
            if unit.regs.raw[_FSTS_NAME] & _FSTS_QUEUE_ERRORS:
                return True
        return False

    # -- locks -----------------------------------------------------------------------------------
    def _lock(self, s: st.Lock) -> None:
        if s.name in self.held:
            raise ModelError(f"deadlock: {s.name} taken again ({s.why}) while held since "
                             f"{self.held[s.name]!r}; a direct run cannot wait for another thread")
        self.held[s.name] = s.why

    def _unlock(self, s: st.Unlock) -> None:
        if self.held.pop(s.name, None) is None:
            raise SpecRuleBroken(f"unlock of {s.name}, which is not held ({s.why})")

    # -- pages and annotations ---------------------------------------------------------------------
    def _alloc_page(self, s: st.AllocPage) -> int:
        return self.platform.pages.alloc()

    def _free_page(self, s: st.FreePage) -> None:
        self.platform.pages.free(s.addr)

    def _annotate(self, s: st.Annotate) -> None:
        for listener in self.listeners:
            listener(s)



def _noop(step: st.Step) -> None:
    return None


def run(platform, gen: Generator) -> Any:
    """Run one operation on a fresh executor (convenience for tests and scripts)."""
    return DirectExecutor(platform).run(gen)
