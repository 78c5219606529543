"""Stateless exploration of a World's interleavings: the strategies and what they return.

One entry point, ``explore(model, strategy=..., ...)``, in the style of loom's ``model()``:

* ``"dfs"``        every interleaving, depth first (the baseline; CHESS/VeriSoft without
                   reduction).
* ``"dpor"``       source-set DPOR with sleep sets (Abdulla, Aronis, Jonsson, Sagonas POPL'14,
                   "Optimal Dynamic Partial Order Reduction", Source-DPOR) - see ``dpor.py``.
* ``"preemption"`` iterative preemption bounding, fewest preemptions first (Musuvathi &
                   Qadeer PLDI'07, "Iterative context bounding for systematic testing").
* ``"bfs"``        breadth first over schedule prefixes, one per Mazurkiewicz trace (the
                   Anisimov-Knuth lexicographic normal form): the shortest counterexample.
* ``"random"``     seeded uniform random walk.
* ``"pct"``        probabilistic concurrency testing with bug depth ``pct_depth`` (Burckhardt,
                   Kothari, Musuvathi, Nagarakatte ASPLOS'10).

The first four are exhaustive when no budget (``max_executions``, ``max_seconds``,
``max_depth``, ``max_preemptions``) cuts them, and then agree on every verdict.

Not done: state caching (the engine never hashes a world), parallel exploration, optimal-DPOR
wakeup trees, preemption-bounded DPOR (bounded POR of Coons et al. OOPSLA'13).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vtdsim.checker.dpor import TreeSearch
from vtdsim.checker.world import DEADLOCK, Footprint, Model, StepRecord, Violation, World
from vtdsim.checker.world import end_of_execution as _end_violations
from vtdsim.errors import BadInput

HOLDS = "holds"
VIOLATED = "violated"
NOT_REACHED = "not reached within bounds"
STRATEGIES = ("dfs", "dpor", "preemption", "bfs", "random", "pct")
SAMPLING = ("random", "pct")  # never exhaustive: they stop at the first violation by default


@dataclass(frozen=True)
class Counterexample:
    """The first execution found violating ``prop``: the schedule up to the violation."""

    prop: str
    message: str
    schedule: tuple[str, ...]
    records: tuple[StepRecord, ...]


@dataclass
class PropertyResult:
    name: str
    verdict: str = NOT_REACHED
    violating: int = 0  # executions (or BFS prefixes) in which it was violated
    counterexample: Counterexample | None = None


@dataclass
class Result:
    """What one exploration established; ``bounds`` holds the strategy's and the world's."""

    model: str
    strategy: str
    properties: dict[str, PropertyResult]
    executions: int
    steps: int
    states: int
    sleep_blocked: int
    seconds: float
    exhaustive: bool
    limit: str | None
    bounds: dict = field(default_factory=dict)

    @property
    def violated(self) -> bool:
        return any(p.verdict == VIOLATED for p in self.properties.values())

    @property
    def counterexample(self) -> Counterexample | None:
        """The first counterexample found (in exploration order)."""
        found = [p.counterexample for p in self.properties.values() if p.counterexample]
        return found[0] if found else None

    def verdicts(self) -> dict[str, str]:
        return {name: p.verdict for name, p in self.properties.items()}

    @property
    def executions_per_second(self) -> float:
        return self.executions / self.seconds if self.seconds > 0 else float("inf")


class Meter:
    """Counts work across a whole exploration and says when a budget is spent."""

    def __init__(self, max_executions: int | None, max_seconds: float | None):
        self.max_executions = max_executions
        self.max_seconds = max_seconds
        self.start = time.perf_counter()
        self.executions = self.steps = self.states = self.sleep_blocked = self.cut = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> str | None:
        if self.max_executions is not None and self.executions >= self.max_executions:
            return f"max_executions={self.max_executions} reached"
        if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
            return f"max_seconds={self.max_seconds} reached"
        return None


class Tally:
    """Per-property findings of one exploration (one bound, for iterative strategies)."""

    def __init__(self, model: Model, meter: Meter):
        names = (*model.properties, DEADLOCK)
        self.props = {name: PropertyResult(name) for name in dict.fromkeys(names)}
        self.meter = meter
        self.world_bounds: dict | None = None

    def found(self) -> bool:
        return any(p.counterexample for p in self.props.values())

    def hit(self, violation: Violation, execution: Execution) -> None:
        prop = self.props.setdefault(violation.prop, PropertyResult(violation.prop))
        if prop.counterexample is None:
            prop.counterexample = Counterexample(
                violation.prop,
                violation.message,
                tuple(execution.schedule),
                tuple(execution.records),
            )

    def close(self, execution: Execution) -> None:
        for name in execution.hit:
            self.props[name].violating += 1

    def result(self, model: Model, strategy: str, limit: str | None, bounds: dict) -> Result:
        exhaustive = limit is None
        for prop in self.props.values():
            if prop.counterexample:
                prop.verdict = VIOLATED
            elif exhaustive:
                prop.verdict = HOLDS
        m = self.meter
        return Result(
            model=model.name,
            strategy=strategy,
            properties=self.props,
            executions=m.executions,
            steps=m.steps,
            states=m.states,
            sleep_blocked=m.sleep_blocked,
            seconds=m.elapsed(),
            exhaustive=exhaustive,
            limit=limit,
            bounds={**bounds, **(self.world_bounds or {})},
        )


class Execution:
    """One run from a fresh world: the schedule so far, its records, the properties it hit."""

    __slots__ = ("world", "schedule", "records", "hit", "tally")

    def __init__(self, model: Model, tally: Tally):
        self.world: World = model.new_world()
        self.schedule: list[str] = []
        self.records: list[StepRecord] = []
        self.hit: set[str] = set()
        self.tally = tally
        if tally.world_bounds is None:
            tally.world_bounds = dict(self.world.describe_bounds())

    def step(self, actor: str) -> None:
        self.schedule.append(actor)
        self.records.append(self.world.step(actor))
        self.tally.meter.steps += 1
        self._note(self.world.violations())

    def _note(self, violations: list[Violation]) -> None:
        for v in violations:
            if v.prop not in self.hit:
                self.hit.add(v.prop)
                self.tally.hit(v, self)

    def finish(self, kind: str = "complete") -> None:
        """End the execution: ``complete`` (nothing enabled), ``sleep-blocked``, ``cut``
        (max_depth) or ``prefix`` (BFS)."""
        meter = self.tally.meter
        if kind == "complete":
            self._note(_end_violations(self.world))
            meter.executions += 1
        elif kind == "sleep-blocked":
            meter.sleep_blocked += 1
        elif kind == "cut":
            meter.cut += 1
            meter.executions += 1
        if kind in ("complete", "cut"):
            self.tally.close(self)


Observer = Callable[[World], None]


@dataclass
class _Run:
    """Everything a strategy needs: the model, the budgets, where findings go."""

    model: Model
    meter: Meter
    max_depth: int
    seed: int
    stop_at_first: bool
    observe: Observer | None
    tally: Tally = field(init=False)

    def __post_init__(self) -> None:
        self.tally = Tally(self.model, self.meter)

    def execution(self) -> Execution:
        return Execution(self.model, self.tally)

    def complete(self, ex: Execution) -> None:
        if self.observe is not None:
            self.observe(ex.world)
        ex.finish("complete")

    def stop(self) -> str | None:
        if self.stop_at_first and self.tally.found():
            return f"stopped at the first violation, after {self.meter.executions} executions"
        return self.meter.spent()

    def depth_limit(self) -> str | None:
        return f"max_depth={self.max_depth} reached" if self.meter.cut else None


def _tree(run: _Run, mode: str, bound: int | None = None) -> tuple[str | None, TreeSearch]:
    search = TreeSearch(run, mode=mode, max_depth=run.max_depth, preemption_bound=bound)
    return search.search() or run.depth_limit(), search


def _exhaustive(run: _Run, mode: str) -> tuple[str | None, dict]:
    limit, _ = _tree(run, mode)
    return limit, {}


def _preemption(run: _Run, max_preemptions: int | None) -> tuple[str | None, dict]:
    """CHESS's iterative context bounding: bound 0, 1, 2 ... until a bug or no pruning."""
    bound = 0
    while True:
        run.tally = Tally(run.model, run.meter)
        limit, search = _tree(run, "dfs", bound)
        if limit or run.tally.found():
            return limit or (f"preemptions<={bound}" if search.pruned else None), _pb(bound)
        if not search.pruned:
            return None, _pb(bound)
        if max_preemptions is not None and bound >= max_preemptions:
            return f"max_preemptions={max_preemptions} reached", _pb(bound)
        bound += 1


def _pb(bound: int) -> dict:
    return {"preemptions": bound}


def _walk(run: _Run, choose: Callable[[list[str], int], str]) -> None:
    """One execution choosing with ``choose(enabled, depth)``."""
    ex = run.execution()
    while enabled := ex.world.enabled():
        if len(ex.schedule) >= run.max_depth:
            ex.finish("cut")
            return
        ex.step(choose(enabled, len(ex.schedule)))
    run.complete(ex)


def _sample(run: _Run, one_execution: Callable[[], None]) -> tuple[str, dict]:
    """Repeat ``one_execution`` until a budget (or the first violation) stops it."""
    if run.meter.max_executions is None and run.meter.max_seconds is None:
        run.meter.max_executions = 1000  # sampling never exhausts: always bounded
    while not (limit := run.stop()):
        one_execution()
    return limit, {"seed": run.seed}


def _random(run: _Run) -> tuple[str, dict]:
    rng = random.Random(run.seed)
    return _sample(run, lambda: _walk(run, lambda enabled, _depth: rng.choice(enabled)))


class _Pct:
    """PCT's scheduler: random distinct priorities, d-1 random priority-change points; the
    highest-priority enabled actor runs.  Finds any bug of depth d with probability at
    least 1/(n k^(d-1)) per execution (n actors, k steps)."""

    def __init__(self, rng: random.Random, depth: int, length: int):
        self.rng = rng
        self.depth = depth
        points = rng.sample(range(length), min(depth - 1, length))
        self.changes = {step: i + 1 for i, step in enumerate(points)}  # step -> low priority
        self.priority: dict[str, float] = {}

    def choose(self, enabled: list[str], depth: int) -> str:
        for actor in enabled:  # actors appear dynamically: give each a fresh high priority
            if actor not in self.priority:
                self.priority[actor] = self.depth + self.rng.random()
        actor = max(enabled, key=self.priority.__getitem__)
        if depth in self.changes:  # the change point demotes whoever would run, then re-pick
            self.priority[actor] = self.changes[depth]
            actor = max(enabled, key=self.priority.__getitem__)
        return actor


def _pct(run: _Run, depth: int) -> tuple[str, dict]:
    rng = random.Random(run.seed)
    longest = [1]

    def one() -> None:
        scheduler = _Pct(rng, depth, longest[0])
        before = run.meter.steps
        _walk(run, scheduler.choose)
        longest[0] = max(longest[0], run.meter.steps - before)  # k: steps per execution

    limit, bounds = _sample(run, one)
    return limit, {**bounds, "pct_depth": depth}


def _lex_normal(prefix: tuple[tuple[str, Footprint], ...], actor: str, fp: Footprint) -> bool:
    """Anisimov-Knuth: appending ``actor`` keeps the prefix the lexicographically least of its
    trace unless the new step commutes back past an actor that sorts after it."""
    for other, other_fp in reversed(prefix):
        if other == actor or other_fp.conflicts(fp):
            return True
        if other > actor:
            return False
    return True


def _bfs(run: _Run) -> tuple[str | None, dict]:
    """Level by level over trace-normal prefixes.  Violations are checked at every prefix, so
    the first counterexample recorded for each property has the fewest steps possible; the
    search goes on to the end (for complete verdicts) unless ``stop_at_first``."""
    level: list[tuple[tuple[str, Footprint], ...]] = [()]
    depth = 0
    while level:
        following = []
        for prefix in level:
            if limit := run.stop():
                return limit, {"depth": depth}
            following.extend(_bfs_expand(run, prefix))
        depth += 1
        if depth > run.max_depth and following:
            return f"max_depth={run.max_depth} reached", {}
        level = following
    return None, {}


def _bfs_expand(run: _Run, prefix: tuple) -> list[tuple]:
    ex = run.execution()
    for actor, _ in prefix:
        ex.step(actor)
    run.meter.states += 1
    world = ex.world
    enabled = world.enabled()
    if not enabled:
        run.complete(ex)
        return []
    ex.finish("prefix")
    steps = ((a, world.footprint(a)) for a in enabled)
    return [(*prefix, (a, fp)) for a, fp in steps if _lex_normal(prefix, a, fp)]


def explore(
    model: Model,
    strategy: str = "dpor",
    *,
    max_executions: int | None = None,
    max_seconds: float | None = None,
    max_depth: int = 10_000,
    max_preemptions: int | None = None,
    pct_depth: int = 3,
    seed: int = 0,
    stop_at_first: bool | None = None,
    observe: Observer | None = None,
) -> Result:
    """Explore ``model``'s executions with ``strategy`` (one of ``STRATEGIES``).

    ``observe(world)`` is called on the final state of every complete execution (tests use it
    to compare the states different strategies reach).  Sampling strategies default to
    ``max_executions=1000``.  ``stop_at_first`` ends any strategy at its first violation; by
    default the sampling ones (random, pct) stop there - their later executions add no
    verdict a user acts on - and the tree searches go on for complete verdicts.
    """
    if stop_at_first is None:
        stop_at_first = strategy in SAMPLING
    meter = Meter(max_executions, max_seconds)
    run = _Run(model, meter, max_depth, seed, stop_at_first, observe)
    if strategy in ("dfs", "dpor"):
        limit, bounds = _exhaustive(run, strategy)
    elif strategy == "preemption":
        limit, bounds = _preemption(run, max_preemptions)
    elif strategy == "bfs":
        limit, bounds = _bfs(run)
    elif strategy == "random":
        limit, bounds = _random(run)
    elif strategy == "pct":
        limit, bounds = _pct(run, pct_depth)
    else:
        raise BadInput(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
    bounds = {"max_depth": max_depth, **bounds}
    return run.tally.result(model, strategy, limit, bounds)
