"""Per-acquisition statistics of one spinlock of a ``TimedMachine`` (Linux's iommu->lock for
seed 001): how long each holder kept it and how long each acquirer spun for it, by the role
of the SimPy process that took it.

The watch wraps the machine's ``_take``/``_queue_for`` (a free lock taken at once, a taken one
waited for) and ``release`` (the engine's FIFO spinlocks are left as they are: the watch only
reads the clock around them).  A wait is measured from the request to the moment the lock is
owned (the cache-line hand-off included, as the engine charges it); a hold from then to the
release.  ``reset`` starts the figures again (a run's warm-up).

Not modelled: holds of the lock by code run outside the engine (set-up through
``System.run``), nested holds of the same lock (a spinlock is not recursive).
"""

from __future__ import annotations

from collections.abc import Callable

from vtdsim.simulation.metrics import Histogram


class LockWatch:
    """Hold and wait histograms of lock ``name`` on ``machine``, keyed by
    ``role_of(process)`` of the SimPy process that took it."""

    def __init__(self, machine, name: str, role_of: Callable[[object], str]):
        self.machine, self.name, self.role_of = machine, name, role_of
        self.env = machine.env
        self._take, self._queue_for = machine._take, machine._queue_for
        self._release = machine.release
        machine._take, machine._queue_for = self.take, self.queue_for
        machine.release = self.release
        self._since: float | None = None
        self._holder = ""
        self.reset()

    def reset(self) -> None:
        self.hold: dict[str, Histogram] = {}
        self.wait: dict[str, Histogram] = {}
        self.waited: dict[str, int] = {}  # acquisitions that found the lock taken
        self.held_ns = 0.0  # total time held, every role

    def take(self, name: str) -> bool:
        taken = self._take(name)
        if taken and name == self.name:
            self._owned(self.env.now, busy=False)
        return taken

    def queue_for(self, name: str):
        if name != self.name:
            return (yield from self._queue_for(name))
        start = self.env.now
        yield from self._queue_for(name)
        self._owned(start, busy=True)

    def _owned(self, start: float, busy: bool) -> None:
        role = self.role_of(self.env.active_process)
        self.wait.setdefault(role, Histogram()).add(self.env.now - start)
        self.waited[role] = self.waited.get(role, 0) + int(busy)
        self._since, self._holder = self.env.now, role

    def release(self, name: str) -> None:
        if name == self.name and self._since is not None:
            held = self.env.now - self._since
            self.hold.setdefault(self._holder, Histogram()).add(held)
            self.held_ns += held
            self._since = None
        self._release(name)

    def figures(self, role: str) -> tuple[Histogram, Histogram, int]:
        """(holds, waits, acquisitions that waited) of ``role`` (empty when it never took
        the lock)."""
        return (self.hold.get(role, Histogram()), self.wait.get(role, Histogram()),
                self.waited.get(role, 0))
