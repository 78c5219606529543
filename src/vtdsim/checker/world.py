"""The abstract world the interleaving checker explores: actors, footprints, steps, properties.

This is the contract between the exploration engine (``explore``, ``dpor``) and anything it
explores: the VT-d adapter, the toy models of the tests.  The engine is stateless in the sense
of VeriSoft/CHESS (Godefroid POPL'97, Musuvathi et al. OSDI'08): it never copies a world, it
builds a fresh one with ``model.new_world()`` for every execution and replays a schedule (a
list of actor names) into it.  Hence:

* ``new_world()`` is **deterministic**: the same schedule always yields the same steps.
* An **actor** has a stable string name ("T0:unmap", "hw:fill iotlb dev1@0x1000", "hw:qi",
  "dev1:dma@0x1000") and at any moment at most ONE next transition: it is a deterministic
  program.  Nondeterministic hardware (cache fills, evictions, the queue engine) is modelled
  as separate actors, each bounded ("fires at most k times"), so every execution is finite
  and classic DPOR applies.  An execution ends when no actor is enabled.
* ``footprint(actor)`` gives the abstract locations the actor's NEXT transition reads and
  writes (``("mem", line)``, ``("iotlb", key)``, ``("lock", name)``, ``("reg", unit, off)``).
  Two transitions are *dependent* iff they belong to the same actor or one writes what the
  other reads or writes.  Soundness of the reductions rests on three duties of the world:
  (1) a footprint covers everything the transition's effect depends on or changes;
  (2) whatever can enable or disable a transition is in its footprint's ``guard`` - a lock
  acquire guards on, reads and writes ``("lock", name)`` and the release writes it; a wait
  guards on and reads the location it polls;
  (3) ``footprint`` answers for blocked actors too (their pending transition), see ``blocked``.
* **Properties** are named.  ``violations()`` is checked after every step and may return the
  same violation again later; the engine keeps the first occurrence per execution.  When no
  actor is enabled, ``deadlocked()`` decides the property ``deadlock_free`` (``DEADLOCK``);
  otherwise ``final_checks()`` runs on the final state.
* ``optional(actor)``: the actor's steps are freedoms (a hardware fill or eviction) that a
  counterexample may omit; the shrinker removes them, never a thread's step.  Since an
  optional actor may still fire at the very end of any execution, ``final_checks`` must not
  fail merely because a freedom fired last.

Not provided here: state hashing or cloning (the engine is stateless), fairness or liveness
beyond deadlock, weak-memory transitions (the world models its own memory order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

DEADLOCK = "deadlock_free"


@dataclass(frozen=True, slots=True)
class Footprint:
    """The abstract locations one transition reads and writes.

    ``guard`` (a subset of ``reads``) names the locations whose values decide whether the
    transition is enabled: the lock location of an acquire, the polled location of a wait.
    DPOR needs it to tell a reversible race from one where the earlier step enabled the later
    (a release and the acquire it let through); leaving it empty on a blocking transition
    makes DPOR unsound.
    """

    reads: frozenset = frozenset()
    writes: frozenset = frozenset()
    guard: frozenset = frozenset()

    def conflicts(self, other: Footprint) -> bool:
        """True when one of the two writes what the other reads or writes."""
        mine = self.writes
        if mine and not (mine.isdisjoint(other.writes) and mine.isdisjoint(other.reads)):
            return True
        theirs = other.writes
        return bool(theirs) and not theirs.isdisjoint(self.reads)


def dependent(actor_a: str, fp_a: Footprint, actor_b: str, fp_b: Footprint) -> bool:
    """Mazurkiewicz dependency: same actor, or conflicting footprints."""
    return actor_a == actor_b or fp_a.conflicts(fp_b)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What one step did, as the counterexample shows it.

    ``detail`` is free-form for the world; two keys mean something to the report: ``key``
    (bool) marks the step as part of the causal chain, ``chain`` (str) is the short label used
    in that chain (``text`` otherwise).
    """

    actor: str
    text: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> bool:
        return bool(self.detail.get("key"))

    @property
    def chain(self) -> str:
        return str(self.detail.get("chain", self.text))


@dataclass(frozen=True, slots=True)
class Violation:
    """A named property that does not hold, and why (``name=0xvalue`` style)."""

    prop: str
    message: str


class World(Protocol):
    """One execution's state; built fresh by ``Model.new_world`` and driven by the engine."""

    def enabled(self) -> list[str]:
        """Actors whose next transition can run now, in a deterministic order."""

    def blocked(self) -> list[str]:
        """Actors that have a next transition which cannot run now (a held lock, a wait)."""

    def footprint(self, actor: str) -> Footprint:
        """Footprint of ``actor``'s next transition (enabled or blocked)."""

    def step(self, actor: str) -> StepRecord:
        """Run ``actor``'s next transition; it must be enabled."""

    def violations(self) -> list[Violation]:
        """Properties violated so far (checked after every step)."""

    def finished(self) -> bool:
        """Every thread ran to completion (optional actors do not count)."""

    def deadlocked(self) -> bool:
        """Nothing is enabled while some thread has not finished."""

    def final_checks(self) -> list[Violation]:
        """Properties of the final state, checked when nothing is enabled and no deadlock."""

    def describe_bounds(self) -> dict:
        """The bounds built into this world (threads, hardware firings ...), for the report."""

    def optional(self, actor: str) -> bool:
        """True when ``actor``'s steps are freedoms a counterexample may omit."""

    # Optional: ``taken() -> Footprint``, the exact footprint of the transition ``step`` just
    # ran - a subset of what ``footprint`` predicted (which must cover every way the transition
    # can go); DPOR then races the event with what it really touched.


class Model(Protocol):
    """A factory of identical worlds plus what the report and schedule files need."""

    name: str
    properties: tuple[str, ...]

    def new_world(self) -> World: ...

    def fingerprint(self) -> str:
        """Changes whenever the model changes in a way that invalidates saved schedules."""


def end_of_execution(world: World) -> list[Violation]:
    """The violations decided when no actor is enabled: a deadlock, or the final checks."""
    if world.deadlocked():
        stuck = ", ".join(world.blocked()) or "none"
        return [Violation(DEADLOCK, f"no actor can move; blocked: {stuck}")]
    return list(world.final_checks())
