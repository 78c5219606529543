"""Counterexample shrinking: fewest steps, then fewest preemptions, revalidated by replay.

Greedy and deterministic, in the spirit of delta debugging (Zeller & Hildebrandt TSE'02) and
CHESS's preference for few preemptions: a candidate schedule is kept iff it replays, violates
the same property, and is smaller in (steps, preemptions) once cut at the first violation.
Candidates, tried until none helps:

1. drop every step of one optional (hardware) actor;
2. drop one optional step;
3. reorder: let a preempted actor continue (pull its next step up to the preemption), or push
   a step to the end (where the cut at the violation removes it if it did not matter).

A thread's step is never dropped on its own - that would be an execution the program cannot
have - but reordering may push it past the violation.

Not done: minimality guarantees (the result is 1-minimal only for single drops and moves).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import NamedTuple

from vtdsim.checker.schedule import Schedule, ScheduleMismatch, run_schedule
from vtdsim.checker.world import Model

Actors = tuple[str, ...]


class _Found(NamedTuple):
    """A candidate that still violates the property, cut at the violation."""

    steps: int
    preemptions: int
    actors: Actors
    preempted: list[bool]
    message: str

    def size(self) -> tuple[int, int]:
        return self.steps, self.preemptions


def shrink(model: Model, schedule: Schedule, max_replays: int = 5000) -> Schedule:
    """A schedule violating ``schedule.prop`` that is no larger in (steps, preemptions)."""
    best = _measure(model, schedule.actors, schedule.prop)
    if best is None:
        raise ScheduleMismatch(f"the schedule does not violate {schedule.prop}", schedule.model)
    optional = _optional_actors(model, schedule.actors)
    replays = 0
    improved = True
    while improved and replays < max_replays:
        improved = False
        for candidate in _candidates(best.actors, optional, best.preempted):
            replays += 1
            found = _measure(model, candidate, schedule.prop)
            if found is not None and found.size() < best.size():
                best, improved = found, True
                break
            if replays >= max_replays:
                break
    return replace(schedule, actors=best.actors, message=best.message)


def _measure(model: Model, actors: Actors, prop: str) -> _Found | None:
    """None when the candidate does not replay or does not violate ``prop``."""
    try:
        result = run_schedule(model, actors)
    except ScheduleMismatch:
        return None
    if prop not in result.first_hit:
        return None
    steps = result.first_hit[prop]
    return _Found(
        steps,
        result.preemptions(steps),
        tuple(actors[:steps]),
        result.preempted[:steps],
        result.messages[prop],
    )


def _optional_actors(model: Model, actors: Actors) -> list[str]:
    world = model.new_world()
    return [a for a in dict.fromkeys(actors) if world.optional(a)]


def _candidates(actors: Actors, optional: list[str], preempted: list[bool]) -> Iterator[Actors]:
    for actor in optional:
        yield tuple(a for a in actors if a != actor)
    for i in range(len(actors) - 1, -1, -1):
        if actors[i] in optional:
            yield actors[:i] + actors[i + 1 :]
    yield from _reorderings(actors, preempted)


def _reorderings(actors: Actors, preempted: list[bool]) -> Iterator[Actors]:
    for i, was_preemption in enumerate(preempted):
        if not was_preemption:
            continue
        victim = actors[i - 1]
        later = [j for j in range(i + 1, len(actors)) if actors[j] == victim]
        if later:
            j = later[0]
            yield actors[:i] + (victim,) + actors[i:j] + actors[j + 1 :]
    for i in range(len(actors) - 1):
        yield actors[:i] + actors[i + 1 :] + (actors[i],)
