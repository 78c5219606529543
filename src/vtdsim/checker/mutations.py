"""Seeded-bug transformations of the driver's step streams (the vocabulary of ``mutants.py``):
a rule matches a step by its type, its ``why`` and the driver functions on its call stack, then
drops it, alters it, delays it, reverses a run of stores, ends a critical section early, or
rewrites a queued descriptor.

The call stack of a step is read from the chain of ``yield from`` delegations of the op's
generator (``gi_yieldfrom``), innermost last: each Linux-named driver function the step comes
from (``iommu_flush_iotlb_psi``, ``domain_context_mapping_one`` ...) is on it, so a rule can
name the protocol it breaks without any change to the driver.

Queued descriptors are seen whole: ``qi_submit_sync`` copies each into its slot with one
16- or 32-byte ``CpuWrite``, which is decoded and offered to the descriptor rules; they may
replace the descriptor by a no-op wait (fence only: the flush is gone, the submission and its
wait stay, so the queue's accounting is untouched) or change its fields.

Not covered: moving a step *earlier* than its generator yields it (``EarlyUnlock`` injects a
release instead of moving the driver's own, whose code runs where the driver has it),
bookkeeping the driver changes without a step (a delayed step's effect on the
driver's own data structures happens at once), and the boot (``init_hw``), which never runs
through a mutated op.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

from vtdsim.checker.actors import skip_reply
from vtdsim.driver import steps as st
from vtdsim.hardware.bitfield import join_qwords, split_qwords
from vtdsim.hardware.descriptors import decode, encode

Stack = tuple[str, ...]
QI_WHY = "qi_submit_sync"
# A fence-only wait (FN=1, no status write, no interrupt) performs nothing; SW=IF=FN=0 is
# rejected (QEMU vtd_process_wait_desc), which would turn a dropped flush into an IQE.
NOOP_WAIT = encode("inv_wait", fn=1)


def call_stack(gen: Generator) -> Stack:
    """The functions of the ``yield from`` chain, outermost first."""
    names = []
    while gen is not None:
        code = getattr(gen, "gi_code", None)
        if code is not None:
            names.append(code.co_name)
        gen = getattr(gen, "gi_yieldfrom", None)
    return tuple(names)


@dataclass(frozen=True)
class Match:
    """Which steps a rule applies to: step classes (any when empty), exact ``why``, a function
    that must be on the call stack, and a predicate on the step."""

    kinds: tuple[type, ...] = ()
    why: str = ""
    within: str = ""
    where: Callable[[st.Step], bool] | None = None

    def __call__(self, step: st.Step, stack: Stack) -> bool:
        return ((not self.kinds or isinstance(step, self.kinds))
                and (not self.why or step.why == self.why)
                and (not self.within or self.within in stack)
                and (self.where is None or self.where(step)))


# -- rules on single steps ----------------------------------------------------------------------
class Rule:
    """A step rule: ``rewrite`` returns the steps to yield instead of ``step`` (``None`` to
    leave it alone); ``after`` returns steps to inject once ``step`` has been applied."""

    def rewrite(self, step: st.Step, stack: Stack) -> list[st.Step] | None:
        return None

    def after(self, step: st.Step, stack: Stack) -> list[st.Step]:
        return []

    def at_end(self) -> list[st.Step]:
        return []


@dataclass
class Drop(Rule):
    """The matching steps never happen (a read or wait answers as if it completed)."""

    match: Match

    def rewrite(self, step, stack):
        return [] if self.match(step, stack) else None


@dataclass
class Alter(Rule):
    """The matching steps are replaced by ``change(step)``."""

    match: Match
    change: Callable[[st.Step], st.Step]

    def rewrite(self, step, stack):
        return [self.change(step)] if self.match(step, stack) else None


@dataclass
class Delay(Rule):
    """The matching steps (whose reply is ``None``: stores, flushes, frees) are held back and
    applied right after the first later step matching ``until`` (at the op's end if none)."""

    match: Match
    until: Match
    held: list = field(default_factory=list)

    def rewrite(self, step, stack):
        if self.match(step, stack):
            self.held.append(step)
            return []
        return None

    def after(self, step, stack):
        if self.held and self.until(step, stack):
            return self.at_end()
        return []

    def at_end(self):
        released, self.held = self.held, []
        return released


@dataclass
class EarlyUnlock(Rule):
    """The lock taken by a step matching ``lock`` is released just before the first later
    step matching ``at`` (an ``Unlock`` is injected), and the driver's own release of it is
    dropped: the critical section ends early.  If the driver releases the lock before any
    ``at`` step, nothing changes."""

    lock: Match
    at: Match
    name: str = ""  # the lock held, once a matching Lock went by
    released: bool = False
    retaken: int = 0  # sections on the same lock the driver opens after the early release

    def rewrite(self, step, stack):
        if isinstance(step, st.Lock) and not self.name and self.lock(step, stack):
            self.name = step.name
            return None
        if not (self.name and isinstance(step, st.Lock | st.Unlock) and step.name == self.name):
            return self._release_at(step, stack)
        if isinstance(step, st.Lock):
            self.retaken += 1
            return None
        if self.retaken:  # the Unlock of a section opened after the early release
            self.retaken -= 1
            return None
        dropped = self.released
        self.name, self.released = "", False
        return [] if dropped else None

    def _release_at(self, step, stack):
        if self.name and not self.released and self.at(step, stack):
            self.released = True
            return [st.Unlock(name=self.name, why=f"{step.why} (released early)"), step]
        return None


@dataclass
class ReverseRun(Rule):
    """A run of consecutive matching steps (stores: their reply is ``None``) is applied in
    reverse order, once the first non-matching step shows where the run ends."""

    match: Match
    held: list = field(default_factory=list)

    def rewrite(self, step, stack):
        if self.match(step, stack):
            self.held.append(step)
            return []
        if self.held:
            return [*self.at_end(), step]
        return None

    def at_end(self):
        released, self.held = self.held[::-1], []
        return released


# -- rules on queued descriptors -----------------------------------------------------------------
@dataclass
class DescriptorRule:
    """A descriptor of type ``label`` submitted from within ``within`` (and satisfying
    ``where(fields)``) is dropped (``change`` None: a no-op wait takes its slot) or re-encoded
    with ``change(fields)``."""

    label: str
    within: str = ""
    where: Callable[[dict], bool] | None = None
    change: Callable[[dict], dict] | None = None

    def apply(self, qws: tuple[int, ...], stack: Stack) -> tuple[int, ...] | None:
        desc = decode(list(qws) + [0] * (4 - len(qws)))
        if desc.label != self.label or (self.within and self.within not in stack):
            return None
        if self.where is not None and not self.where(desc.fields):
            return None
        new = NOOP_WAIT if self.change is None else encode(desc.label,
                                                           **self.change(dict(desc.fields)))
        return tuple(new[: len(qws)])


# -- the stream ----------------------------------------------------------------------------------
def _is_desc_write(step: st.Step) -> bool:
    return type(step) is st.CpuWrite and step.why == QI_WHY and step.size in (16, 32)


@dataclass
class Mutation:
    """A set of rules applied to every op generator the factory wraps."""

    rules: tuple[Rule, ...] = ()
    descriptors: tuple[DescriptorRule, ...] = ()

    def fresh(self) -> Mutation:
        """Rules hold per-op state (held steps, a lock name): one copy per generator."""
        import copy

        return copy.deepcopy(self)

    def wrap(self, gen: Generator) -> Generator:
        return _mutated(gen, self.fresh())


def _mutated(gen: Generator, mutation: Mutation) -> Generator[st.Step, Any, Any]:
    reply = None
    try:
        while True:
            step = gen.send(reply)
            stack = call_stack(gen)
            if _is_desc_write(step) and mutation.descriptors:
                step = _rewrite_descriptor(step, stack, mutation)
            reply = yield from _emit_step(step, stack, mutation)
    except StopIteration as stop:
        for rule in mutation.rules:
            yield from rule.at_end()
        return stop.value


def _rewrite_descriptor(write: st.CpuWrite, stack: Stack, mutation: Mutation) -> st.CpuWrite:
    """The slot's store with the descriptor the first matching rule makes of it."""
    qws = split_qwords(write.value, write.size // 8)
    for rule in mutation.descriptors:
        new = rule.apply(qws, stack)
        if new is not None:
            return replace(write, value=join_qwords(new))
    return write


def _emit_step(step: st.Step, stack: Stack, mutation: Mutation):
    """Yield ``step`` as the rules rewrite it; the driver gets the reply of ``step`` itself if
    it is still yielded, else of its last replacement of the same type, else the completion
    answer of a dropped read or wait."""
    replacement = None
    for rule in mutation.rules:
        replacement = rule.rewrite(step, stack)
        if replacement is not None:
            break
    if replacement is None:
        replacement = [step]
    reply, answered = skip_reply(step), False
    for new in replacement:
        got = yield new
        if new is step or (not answered and type(new) is type(step)):
            reply, answered = got, new is step
    for rule in mutation.rules:
        yield from rule.after(step, stack)
    return reply
