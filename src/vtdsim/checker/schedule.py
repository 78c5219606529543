"""Schedule files: a counterexample saved as the actor sequence that reproduces it, and replay.

A schedule file is JSON (loom's "replay from a saved schedule", in a versioned, diffable
form)::

    {"format": "vtdsim-schedule", "version": 1, "model": "...", "fingerprint": "...",
     "bounds": {...}, "schedule": ["T0:unmap", "hw:fill ...", ...],
     "expect": {"prop": "dma_after_free", "message": "..."}}

``replay`` re-runs it on a fresh world and fails loudly - naming the first step that diverged
- when the model changed: a different fingerprint, an actor not enabled where the schedule
says, or the expected property not violated at the end.

Not done: migrating old schedules to a changed model (a changed model means a new search).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from vtdsim.checker.explore import Counterexample
from vtdsim.checker.world import Model, StepRecord, World, end_of_execution
from vtdsim.errors import BadInput
from vtdsim.validation import parse_json, read_text, validate

FORMAT = "vtdsim-schedule"
VERSION = 1


class ScheduleMismatch(BadInput):
    """The schedule does not replay on this model (the model changed, or the file is wrong)."""


@dataclass(frozen=True)
class Schedule:
    model: str
    fingerprint: str
    actors: tuple[str, ...]
    prop: str
    message: str = ""
    bounds: dict = field(default_factory=dict)

    @classmethod
    def of(cls, model: Model, cex: Counterexample, bounds: dict | None = None) -> Schedule:
        return cls(
            model.name,
            model.fingerprint(),
            tuple(cex.schedule),
            cex.prop,
            cex.message,
            dict(bounds or {}),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "model": self.model,
                "fingerprint": self.fingerprint,
                "bounds": self.bounds,
                "schedule": list(self.actors),
                "expect": {"prop": self.prop, "message": self.message},
            },
            indent=1,
            sort_keys=True,
        )


def save(schedule: Schedule, path: str | Path) -> None:
    try:
        Path(path).write_text(schedule.to_json() + "\n")
    except OSError as err:
        raise BadInput(f"cannot write schedule: {err.strerror or err}", str(path)) from None


class _Expect(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prop: Annotated[str, Field(min_length=1)]
    message: str = ""


class _ScheduleFile(BaseModel):
    """A schedule file's declared shape (validation.validate reports the first error)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal[FORMAT]  # type: ignore[valid-type]
    version: Literal[VERSION]  # type: ignore[valid-type]
    model: Annotated[str, Field(min_length=1)]
    fingerprint: Annotated[str, Field(min_length=1)]
    bounds: dict[str, int | str] = {}
    schedule: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    expect: _Expect


def load(path: str | Path) -> Schedule:
    """A saved schedule; BadInput ``file:line: key: message`` when malformed."""
    where = str(path)
    text = read_text(path, "schedule")
    data = validate(_ScheduleFile, parse_json(text, where), where)
    return Schedule(data.model, data.fingerprint, tuple(data.schedule), data.expect.prop,
                    data.expect.message, dict(data.bounds))


@dataclass
class Replay:
    """What running a schedule did: the records, when each property was first violated
    (number of steps taken; ``len(records)`` for end-of-execution checks), the preemptions."""

    world: World
    records: list[StepRecord]
    first_hit: dict[str, int]
    messages: dict[str, str]
    preempted: list[bool]  # per step: did it preempt an actor that could have continued

    def preemptions(self, steps: int | None = None) -> int:
        return sum(self.preempted[:steps])


def run_schedule(model: Model, actors: tuple[str, ...] | list[str]) -> Replay:
    """Run ``actors`` on a fresh world; ScheduleMismatch at the first actor not enabled."""
    world = model.new_world()
    replay = Replay(world, [], {}, {}, [])
    previous = None
    for index, actor in enumerate(actors):
        enabled = world.enabled()
        if actor not in enabled:
            raise ScheduleMismatch(
                f"step {index + 1}: actor {actor!r} is not enabled (enabled: "
                f"{', '.join(enabled) or 'none'})",
                model.name,
            )
        replay.preempted.append(previous is not None and previous != actor and previous in enabled)
        replay.records.append(world.step(actor))
        _note(replay, world.violations(), index + 1)
        previous = actor
    if not world.enabled():
        _note(replay, end_of_execution(world), len(actors))
    return replay


def _note(replay: Replay, violations: list, steps: int) -> None:
    for v in violations:
        if v.prop not in replay.first_hit:
            replay.first_hit[v.prop] = steps
            replay.messages[v.prop] = v.message


def replay(model: Model, schedule: Schedule) -> Replay:
    """Re-run ``schedule`` exactly and check it still violates its property."""
    if schedule.fingerprint != model.fingerprint():
        raise ScheduleMismatch(
            f"model fingerprint={model.fingerprint()!r} but the schedule was saved for "
            f"{schedule.fingerprint!r}: the model changed",
            schedule.model,
        )
    result = run_schedule(model, schedule.actors)
    if schedule.prop not in result.first_hit:
        seen = ", ".join(sorted(result.first_hit)) or "none"
        raise ScheduleMismatch(
            f"replayed all {len(schedule.actors)} steps but {schedule.prop} was not violated "
            f"(violated: {seen})",
            schedule.model,
        )
    return result
