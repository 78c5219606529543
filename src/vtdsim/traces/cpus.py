"""Replay's CPUs: each recorded (CPU, context) stream runs its driver call as a thread of its
own, and a stream enters ``qi_submit_sync`` when the recording shows that stream taking the
invalidation queue (drivers/iommu/intel/dmar.c ``qi_submit_sync``, Linux 6.1 and 6.12).

Why: ``qi_submit_sync`` prints ``qi_submit`` under ``qi->q_lock``, right before its IQT write,
so the trace's ``qi_submit`` lines are the order in which CPUs took the queue.  Between a
call's ``unmap`` line (``__iommu_unmap``) and its ``iotlb_sync``, or between a scatter-list's
last ``map`` line and its ``iotlb_sync_map``, the CPU can stall for milliseconds (a vCPU the
host did not run: 14 ms in legacy-nocm-par-strict) while the other CPU submits.  Which CPU wins
the queue is a race the model cannot predict, so it reads *when* each stream took the queue -
a ``SubmitMark``: the line's CPU, context and task, never its descriptor words - and decides
*what* the stream submits by itself.

The rules, each from how 6.1 runs a call:

* A stream is one CPU's task (by pid), or one CPU's softirq, hard-IRQ or NMI context: an
  interrupt runs to completion before what it interrupted resumes, and interrupts of one
  context do not nest on a CPU, so that is the unit of sequential execution (``calls.stream_key``).
* A call runs on its stream from its line on; its steps up to its first entry into the queue
  lock run at once (page-table work touches no other stream's state that descriptors show).
* A stream takes the queue lock for a new submission only once the recording has shown more
  ``qi_submit`` lines on the stream than the model has submitted descriptors there since the
  call began: each descriptor is one line (6.1 and 6.12 print one per descriptor, the wait excluded:
  a 6.12 batch of n descriptors is n lines before its one IQT write).
  The re-take after spinning on the wait status (``qi_submit_sync``'s unlock/relax/lock loop)
  belongs to the submission already under way and does not wait.  Once a call has submitted,
  it takes no other lock either before its next line: what follows a flush is the next flush
  (6.1 ``iommu_flush_iotlb_psi`` takes ``domain->lock`` for the device-TLB flush after the
  IOTLB one), and the recording shows when the stream got there.
* A lock whose holder is a stream waiting for its next line without one does not block: the
  recording shows that stream had not reached the lock yet, so the stream that wants it
  takes it too (the holder's hold counts from later).  Any other holder makes the stream
  wait behind it, and a stream forced on forces such a holder on first.
* A stream's call must have finished when the stream's next call starts, and every call has
  finished at the end of the trace: a call still waiting then is run on (the model submitted
  where the recording shows none; the comparison reports it).
* Work of a context but of no known CPU - the flush-queue timer's callback, a softirq on
  whichever CPU the timer wheel chose - waits (``defer``) until a ``qi_submit`` line of that
  context no call of its stream explains, no earlier than the time it gives, and then runs as
  a call of that line's stream, the line its first: its further submissions wait for the
  stream's further lines like any call's (6.1's flush of an ATS domain is two
  ``qi_submit_sync`` calls, two lines).  What still waits at the end of the trace never ran.

Not modelled: a task migrating CPUs inside one call, the order of two streams' page-table
writes (no descriptor shows it), ``iec_inv`` lines (interrupt remapping takes the queue too;
those lines never release a stream - the model makes no such submission).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from vtdsim.driver.steps import Lock, Unlock, WaitQword

_LOCK_STOPS = frozenset({Lock, WaitQword})
_STOPS = _LOCK_STOPS | {Unlock}

StreamKey = tuple


class _Stream:
    """One stream's call in progress: its generator, the step it waits at (unapplied), the
    reply its last step got; and the stream's lines and descriptors
    counted since the call began."""

    __slots__ = ("key", "gen", "step", "reply", "origin", "after_spin", "marks", "descs",
                 "mark_us")

    def __init__(self, key: StreamKey):
        self.key = key
        self.gen: Generator | None = None
        self.step = None
        self.reply: Any = None
        self.origin = ""
        self.after_spin = False
        self.marks = 0
        self.descs = 0
        self.mark_us = 0  # the trace time of its last line


Submitted = Callable[[str], int]


class CpuStreams:
    """Runs calls on streams through ``executor``.  ``submitted(origin)`` is called whenever a
    stream stops at a lock or returns: the caller takes the IQT writes made since (all that
    stream's) with their origin and says how many descriptors they held.  ``queue_lock`` is
    the name of the invalidation queue's lock.  ``returned()`` is called when a call returns
    with lines of its stream it did not explain, before those lines are taken as other
    work's (``_surplus``): the caller defers what the call set up (the flush-queue timer)."""

    def __init__(self, executor, queue_lock: str, submitted: Submitted,
                 returned: Callable[[], None] | None = None):
        self.executor = executor
        self.queue_lock = queue_lock
        self.submitted = submitted
        self.returned = returned
        self.streams: dict[StreamKey, _Stream] = {}
        self.waiting: dict[StreamKey, _Stream] = {}  # insertion order: the order they stopped
        self.holder: dict[str, _Stream] = {}  # lock -> the stream that took it last
        self.shared: dict[str, list[_Stream]] = {}  # lock -> streams it is lent to (_take)
        self.unmatched_marks = 0  # qi_submit lines of a stream with no call waiting
        # context -> (earliest trace time in us, generator factory, origin)
        self.deferred: dict[str, tuple[int, Callable[[], Generator], str]] = {}

    # -- the three inputs ----------------------------------------------------------------------
    def start(self, key: StreamKey, gen: Generator, origin: str, marks: int = 0,
              marks_us: int = 0) -> None:
        """A call begins on ``key``: the stream's previous call has finished by now;
        ``marks`` of the stream's lines that follow at once come with it, the last at
        ``marks_us``."""
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = _Stream(key)
        elif stream.gen is not None:
            self._force(stream)
        stream.gen, stream.step, stream.reply, stream.origin = gen, None, None, origin
        stream.marks, stream.descs, stream.mark_us = marks, 0, marks_us
        stream.after_spin = False
        self._advance(stream, forced=False)
        self._retry(stream)

    def mark(self, key: StreamKey, ts_us: int) -> None:
        """The recording shows ``key`` submitting one descriptor at ``ts_us``."""
        stream = self.streams.get(key)
        if stream is None or stream.gen is None:
            self._unexplained(key, ts_us)
            return
        stream.marks += 1
        stream.mark_us = ts_us
        if key in self.waiting:
            self._advance(stream, forced=False)
            self._retry(stream)

    def _unexplained(self, key: StreamKey, ts_us: int, lines: int = 1) -> None:
        """``lines`` lines of ``key`` no call of the stream explains, the last at ``ts_us``:
        deferred work of its context starts there as the stream's call if its time has come
        (``defer``); otherwise they are counted apart."""
        work = self.deferred.get(key[1])
        if work is None or ts_us < work[0]:
            self.unmatched_marks += lines
            return
        del self.deferred[key[1]]
        self.start(key, work[1](), work[2], lines, ts_us)

    def _surplus(self, stream: _Stream) -> None:
        """The stream's call returned with lines of the stream it did not explain (a lazy
        unmap submits nothing; 6.12 traces show the flush-queue timer's softirq right after
        an unmap in the same CPU's softirq, nothing between): those are other work's."""
        if self.returned is not None:
            self.returned()
        lines, stream.marks = stream.marks - stream.descs, stream.descs
        self._unexplained(stream.key, stream.mark_us, lines)

    def defer(self, context: str, not_before_us: int, start: Callable[[], Generator],
              origin: str) -> None:
        """Run ``start()`` at the first unexplained ``qi_submit`` line of ``context`` from
        ``not_before_us`` on (one such work per context at a time)."""
        self.deferred[context] = (not_before_us, start, origin)

    def finish(self) -> None:
        """The trace has ended: every call still waiting runs on, in the order they stopped."""
        while self.waiting:
            self._force(next(iter(self.waiting.values())))

    # -- running a stream ------------------------------------------------------------------------
    def _advance(self, stream: _Stream, forced: bool) -> None:
        """Run ``stream`` until it waits (a queue entry the recording has not reached, or a
        lock another stream holds) or its call returns; ``forced`` waits for nothing.  Only
        locks stop the run (and releases while a lock is shared: ``_take``)."""
        self.waiting.pop(stream.key, None)
        executor = self.executor
        while True:
            step = stream.step
            if step is None:
                stops = _STOPS if self.shared else _LOCK_STOPS
                step, _ = executor.run_until(stream.gen, stream.reply, stops)
                if step is None:
                    stream.gen = None
                    break
                stream.step = step
            kind = type(step)
            if kind is Lock:
                # What the stream submitted so far is its own: hand it over, count it.
                stream.descs += self.submitted(stream.origin)
                if self._must_wait(stream, step, forced):
                    self.waiting[stream.key] = stream
                    return
                self._take(stream, step)
                stream.after_spin = False
            elif kind is Unlock:
                self._release(stream, step)
            else:
                stream.after_spin = True
                stream.reply = executor.apply(step)
            stream.step = None
        stream.descs += self.submitted(stream.origin)
        if stream.marks > stream.descs:
            self._surplus(stream)

    def _must_wait(self, stream: _Stream, step: Lock, forced: bool) -> bool:
        if not forced and not self._may_enter(stream):
            return True
        if step.name in self.executor.held:
            for holder in self._blocking(step.name):
                if not forced:
                    return True
                self._force(holder)
        return False

    def _may_enter(self, stream: _Stream) -> bool:
        """May the lock ``stream`` stopped at be taken, as far as the recording goes?  Not the
        queue's before the recording shows the stream's next descriptor, nor any other while
        the stream waits for that descriptor after submitting in this call: past its first
        submission a call is on its way to the next (6.1 ``iommu_flush_iotlb_psi`` takes
        ``domain->lock`` for the device-TLB flush after the IOTLB one)."""
        if stream.after_spin or stream.marks > stream.descs:
            return True
        return stream.step.name != self.queue_lock and stream.descs == 0

    def _owners(self, lock: str) -> list[_Stream]:
        """The streams holding ``lock`` (the executor's lock table knows it is held, not by
        whom): the one that took it, and those it was lent to."""
        if lock not in self.executor.held:
            return []
        first = self.holder.get(lock)
        return ([first] if first is not None else []) + self.shared.get(lock, [])

    def _blocking(self, lock: str) -> list[_Stream]:
        """The holders of ``lock`` that the recording shows as having it: a holder waiting for
        its next descriptor with no mark had not reached the lock yet (it takes it after the
        stream the recording shows first), so it does not block."""
        return [h for h in self._owners(lock) if h.gen is not None
                and (h.key not in self.waiting or self._may_enter(h))]

    def _take(self, stream: _Stream, step: Lock) -> None:
        if step.name in self.executor.held:
            # Lent: the executor's table keeps one hold; releases stop the runs until it ends.
            self.shared.setdefault(step.name, []).append(stream)
        else:
            self.executor.apply(step)
            self.holder[step.name] = stream

    def _release(self, stream: _Stream, step: Unlock) -> None:
        others = self.shared.get(step.name)
        if not others:
            self.executor.apply(step)
            return
        if stream in others:
            others.remove(stream)
        elif self.holder.get(step.name) is stream:
            self.holder[step.name] = others.pop(0)  # the executor's hold passes on
        else:
            self.executor.apply(step)  # not ours: the executor reports the driver bug
            return
        if not others:
            del self.shared[step.name]

    def _force(self, stream: _Stream) -> None:
        self._advance(stream, forced=True)

    def _retry(self, moved: _Stream) -> None:
        """Streams waiting for a lock may go once its holder (``moved``) has moved on."""
        waiting = self.waiting
        progressed = len(waiting) > 1 or (len(waiting) == 1 and moved.key not in waiting)
        while progressed:
            progressed = False
            for stream in list(waiting.values()):
                if not self._may_enter(stream) or self._blocking(stream.step.name):
                    continue
                self._advance(stream, forced=False)
                progressed = True
