"""Run litmus scenarios (files or folders of ``.toml``) and compare the verdicts with the
expectations they state (herd7's "Observation ... Never/Sometimes/Always" plus a verdict
check per property).

Each scenario: boot once, explore, shrink each counterexample (fewest steps, then fewest
preemptions) and print it as the causal chain plus the table, then the summary; lazy mode's
exposure (pages a DMA reached after their free, before the flush queue flushed them) is
printed as an observation, not a violation.  Each *observation* (``properties.OBSERVATIONS``:
``lazy_exposure``, ``no_snoop_stale_read``) seen is printed with the shrunk chain of one
execution and how many showed it; ``[expect]`` may state it as ``"observed"`` or ``"never"``.
A verdict is *unexpected* when it differs from the expected one, or when a property without
expectation is violated (an observation without expectation never is); a bounded search that
did not reach a violation (an observation) counts as agreeing with ``holds`` (``never``).

Folder runs go on Dask distributed when asked (``Options.scheduler``/``workers``): one task per
scenario file, submitted longest first by ``schedule_length`` (a cheap estimate), results
printed in file order, so the output equals a serial run's (timings apart).  A single
scenario's DPOR tree is not split: Source-DPOR adds backtrack points to ancestors - the root's
above all - from races found deep in earlier subtrees, and a subtree's sleep set holds the
siblings explored before it, so subtrees explored apart would be explored with other sleep and
backtrack sets than the serial run's (more executions, other counts) or need a coordinator
trading races with the workers.  The library does not need it: its longest file takes 17% of
the serial time, so files alone fill two workers to within a task of half the total.

Not provided: HTML reports, expectations on executions counts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vtdsim.checker.boot import build_model
from vtdsim.checker.explore import NOT_REACHED, VIOLATED, Counterexample, Result, explore
from vtdsim.checker.litmus_report import (
    Report,
    scenario_line,
    timing_section,
    unexpected_detail,
)
from vtdsim.checker.properties import OBSERVATIONS
from vtdsim.checker.report import causal_chain, counterexample_table, summary
from vtdsim.checker.scenario import Scenario, load
from vtdsim.checker.schedule import Schedule, ScheduleMismatch, replay, run_schedule, save
from vtdsim.checker.shrink import shrink
from vtdsim.checker.vtd_world import VtdModel
from vtdsim.errors import BadInput, SpecRuleBroken


@dataclass
class Options:
    strategy: str = "dpor"
    seed: int = 0
    max_executions: int | None = None
    max_seconds: float | None = None
    save_dir: Path | None = None
    width: int = 120
    verbosity: int = 1  # 0: the summary line only; 1: a line per scenario; 2: everything
    pattern: str = ""  # run only scenario files whose name contains it
    exitfirst: bool = False  # stop after the first scenario with an unexpected verdict
    # Dask distributed: a scheduler address, or "local"/None with ``workers`` set (a
    # LocalCluster); one task per scenario file (``run_library``).
    scheduler: str | None = None
    workers: int | None = None

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None or self.workers is not None


@dataclass(frozen=True)
class Verdict:
    """One property's (or observation's) verdict against the scenario's expectation."""

    name: str
    verdict: str
    wanted: str | None
    agrees: bool

    def text(self) -> str:
        return f"{self.name}: {self.verdict}" + (f" (expected {self.wanted})"
                                                 if self.wanted else " (no expectation)")

    def short(self) -> str:
        """``prop=verdict``, with ``!(expected X)`` when it disagrees."""
        verdict = self.verdict.replace("not reached within bounds", "not-reached")
        mark = "" if self.agrees else f"!(expected {self.wanted or 'holds'})"
        return f"{self.name}={verdict}{mark}"


@dataclass
class Outcome:
    """One scenario's run: the result, the shrunk counterexamples, the verdict comparison."""

    scenario: Scenario
    result: Result
    counterexamples: list[Counterexample] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # "prop: verdict"
    unexpected: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    exposure: tuple[int, int] = (0, 0)  # (longest window in steps, pages reached)
    observed: dict[str, Observed] = field(default_factory=dict)  # properties.OBSERVATIONS


@dataclass
class Observed:
    """An observation (``properties.OBSERVATIONS``) over all executions: how many showed it,
    the first one's message and schedule, and that schedule shrunk to a chain."""

    name: str
    executions: int = 0
    message: str = ""
    schedule: tuple[str, ...] = ()
    example: Counterexample | None = None


def collect(paths: list[str | Path]) -> list[Path]:
    """Scenario files named directly or found (sorted) in the folders given; a folder
    without any is bad input (a run that checks nothing must not look like a pass)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.glob("*.toml") if p.is_file())
            if not inside:
                raise BadInput("no scenario files (*.toml) in this folder", str(path))
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise BadInput("no such scenario file or folder", str(path))
    return found


def run_scenario(sc: Scenario, opts: Options, tick: Callable[[int], None] | None = None
                 ) -> Outcome:
    """Explore ``sc``; ``tick(executions)`` after each execution (a progress display)."""
    model = build_model(sc)
    windows, seen = _ExposureTally(), _ObservationTally()
    done = [0]

    def observe(world) -> None:
        windows.observe(world)
        seen.observe(world)
        if tick is not None:
            done[0] += 1
            tick(done[0])

    result = explore(model, opts.strategy, seed=opts.seed, max_executions=opts.max_executions,
                     max_seconds=opts.max_seconds, observe=observe)
    outcome = Outcome(sc, result, exposure=windows.totals(), observed=seen.found)
    for prop in result.properties.values():
        if prop.counterexample is not None:
            outcome.counterexamples.append(_shrunk(model, prop.counterexample, opts))
    for obs in outcome.observed.values():
        obs.example = _observation_chain(model, obs)
    _compare(outcome)
    return outcome


class _ObservationTally:
    """Observations (``Monitor.observed``) over all executions, with the first schedule."""

    def __init__(self):
        self.found: dict[str, Observed] = {}

    def observe(self, world) -> None:
        for name, message in world.monitor.observed.items():
            obs = self.found.get(name)
            if obs is None:
                obs = self.found[name] = Observed(name, 0, message, tuple(world.schedule))
            obs.executions += 1


def _observation_chain(model: VtdModel, obs: Observed) -> Counterexample:
    """The first schedule that showed ``obs``, shrunk on a copy of the model whose worlds flag
    it as a violation (``Monitor.watch``) - the same shrinker as for counterexamples."""
    watching = copy.copy(model)
    watching.watch = frozenset({obs.name})
    schedule = shrink(watching, Schedule(model.name, model.fingerprint(), obs.schedule,
                                         obs.name, obs.message))
    records = run_schedule(watching, schedule.actors).records
    return Counterexample(obs.name, schedule.message, schedule.actors, tuple(records))


class _ExposureTally:
    """Lazy windows seen over all executions (``Monitor.exposure``)."""

    def __init__(self):
        self.longest = 0
        self.pages: set[int] = set()

    def observe(self, world) -> None:
        for window in world.monitor.exposure.values():
            self.longest = max(self.longest, window.steps)
            self.pages.add(window.page)

    def totals(self) -> tuple[int, int]:
        return self.longest, len(self.pages)


def _shrunk(model: VtdModel, cex: Counterexample, opts: Options) -> Counterexample:
    schedule = shrink(model, Schedule.of(model, cex, model.bounds))
    if opts.save_dir is not None:
        opts.save_dir.mkdir(parents=True, exist_ok=True)
        save(schedule, opts.save_dir / f"{model.name}.{cex.prop}.json")
    records = run_schedule(model, schedule.actors).records
    return Counterexample(cex.prop, schedule.message, schedule.actors, tuple(records))


def _compare(outcome: Outcome) -> None:
    expect = outcome.scenario.expect
    for name, prop in outcome.result.properties.items():
        wanted = expect.get(name)
        verdict = prop.verdict
        if wanted is None:
            agrees = verdict != VIOLATED
        else:
            agrees = verdict == wanted or (wanted == "holds" and verdict == NOT_REACHED)
        _note(outcome, Verdict(name, verdict, wanted, agrees))
    for name in OBSERVATIONS:
        wanted = expect.get(name)
        if wanted is None:
            continue  # an observation is never unexpected unless stated
        seen = "observed" if name in outcome.observed else "never"
        bounded = wanted == "never" and not outcome.result.exhaustive
        _note(outcome, Verdict(name, seen, wanted, seen == wanted or bounded))
    unknown = sorted(set(expect) - set(outcome.result.properties) - set(OBSERVATIONS))
    outcome.unexpected += [f"{name}: no such property" for name in unknown]


def _note(outcome: Outcome, verdict: Verdict) -> None:
    outcome.verdicts.append(verdict)
    if not verdict.agrees:
        outcome.unexpected.append(verdict.text())
    elif verdict.wanted is not None:
        outcome.expected.append(verdict.text().removesuffix(" (no expectation)"))


def render_outcome(outcome: Outcome, width: int = 120) -> str:
    sc = outcome.scenario
    parts = [f"== {sc.where()}" + (f": {sc.doc}" if sc.doc else "")]
    for cex in outcome.counterexamples:
        parts.append(causal_chain(cex) + "\n\n" + counterexample_table(cex, width))
    parts.append(summary(outcome.result, sc.name, timed=False))
    longest, pages = outcome.exposure
    if pages:
        parts.append(f"Exposure {sc.name} lazy window: up to {longest} steps, {pages} page(s) "
                     "reached after their free (lazy mode, not a violation)")
    for obs in outcome.observed.values():
        if obs.example is not None:
            parts.append(causal_chain(obs.example, "shows") + "\n\n"
                         + counterexample_table(obs.example, width))
        parts.append(f"Observed {sc.name}.{obs.name} in {obs.executions} of "
                     f"{outcome.result.executions} executions: {obs.message} (an observation, "
                     "not a violation of a promised property)")
    parts += [f"UNEXPECTED {line}" for line in outcome.unexpected]
    return "\n\n".join(parts)


def run_paths(paths: list[str | Path], opts: Options,
              echo: Callable[[str], None] = print) -> tuple[int, int]:
    """Run every scenario; returns (as expected, unexpected) verdict counts."""
    return run_library(paths, opts, echo).counts()


def run_library(paths: list[str | Path], opts: Options, echo: Callable[[str], None] = print,
                progress: Progress | None = None) -> Report:
    """Run the scenarios one by one: a bad file is reported and skipped, Ctrl-C ends the run
    with what was explored; then the summary line and the timing section."""
    report, start = Report(), time.perf_counter()
    progress = progress or Progress()
    files = collect(paths)
    chosen = [p for p in files if opts.pattern in p.stem]
    if not chosen:  # a run that checks nothing must not look like a pass
        raise BadInput(f"no scenario file's name contains {opts.pattern!r}", "-k")
    report.skipped = len(files) - len(chosen)
    pad = max((len(p.stem) for p in chosen), default=0)  # names are usually the stems
    outcomes = _distributed(chosen, opts) if opts.distributed else None
    for i, path in enumerate(chosen):
        try:
            outcome = _run_one(path, opts, progress) if outcomes is None else _unpack(outcomes[i])
        except BadInput as err:
            report.bad.append((str(path), str(err)))
            echo(f"{'BAD INPUT':<10} {err}")
            continue
        except KeyboardInterrupt:
            report.interrupted = (str(path), progress.executions)
            echo(f"{'STOPPED':<10} {path.stem}: interrupted after {progress.executions} "
                 "executions (Ctrl-C; not exhaustive)")
            break
        report.outcomes.append(outcome)
        _echo_outcome(outcome, opts, echo, pad)
        if opts.exitfirst and outcome.unexpected:
            break
    report.seconds = time.perf_counter() - start
    if opts.verbosity:
        echo(timing_section(report, report.seconds, opts.width))
    echo(report.summary_line())
    return report


def _distributed(paths: list[Path], opts: Options) -> list[tuple[str, object]]:
    """Every scenario on Dask, in file order (``simulation.cluster.dask_map``)."""
    from vtdsim.simulation.cluster import dask_map

    scheduler = None if opts.scheduler in (None, "local") else opts.scheduler
    tasks = [(str(p), opts) for p in paths]
    return dask_map(run_task, tasks, scheduler, opts.workers or 2, cost=schedule_length)


def schedule_length(task: tuple[str, Options]) -> int:
    """A scenario file's cost estimate, for longest-first submission: the steps of its first
    depth-first execution (boot and one execution, ~10 ms).  An exploration's cost is its
    executions times their length, and executions grow with the steps that race; on the
    library the 8 longest schedules (the seed001 context flips, 110-160 steps) hold 4 of the
    5 longest explorations (rank correlation with the per-file time 0.6, measured).  A file
    that does not load or boot costs 0: its task reports it."""
    try:
        model = build_model(load(task[0]))
        return explore(model, "dfs", max_executions=1).steps
    except (BadInput, SpecRuleBroken):
        return 0


def run_task(task: tuple[str, Options]) -> tuple[str, object]:
    """One scenario file on a worker: ``("ok", Outcome)`` or ``("bad", (message, where))``
    (exceptions are not shipped back: a BadInput's fields would not survive pickling)."""
    path, opts = task
    try:
        return "ok", _run_one(Path(path), opts, Progress())
    except BadInput as err:
        return "bad", (str(err), path)


def _unpack(result: tuple[str, object]) -> Outcome:
    kind, value = result
    if kind == "bad":
        raise BadInput(value[0])  # the worker's whole line, its file named already
    return value


def _run_one(path: Path, opts: Options, progress: Progress) -> Outcome:
    """One scenario; what stops it (a value only a run can judge, a rule the scenario makes
    the driver break) becomes a BadInput naming the file."""
    sc = load(path)
    progress.start(sc.name)
    try:
        return run_scenario(sc, opts, progress.tick)
    except BadInput as err:
        if err.where:
            raise
        raise BadInput(str(err), str(path)) from None
    except SpecRuleBroken as err:
        raise BadInput(f"the scenario makes the driver break a rule: {err}", str(path)) from None
    finally:
        progress.stop()


def _echo_outcome(outcome: Outcome, opts: Options, echo: Callable[[str], None],
                  pad: int = 0) -> None:
    if opts.verbosity >= 2:
        echo(render_outcome(outcome, opts.width))
    elif opts.verbosity == 1:
        echo(scenario_line(outcome, pad))
        if outcome.unexpected:
            echo(unexpected_detail(outcome, opts.width))


class Progress:
    """What a run reports while it explores (nothing here; the CLI shows it on a terminal)."""

    def __init__(self):
        self.executions = 0

    def start(self, name: str) -> None:
        self.executions = 0

    def tick(self, executions: int) -> None:
        self.executions = executions

    def stop(self) -> None:
        pass


def replay_file(scenario_path: str | Path, schedule_path: str | Path,
                echo: Callable[[str], None] = print, width: int = 120) -> None:
    """Re-run a saved counterexample on its scenario and print it."""
    from vtdsim.checker.schedule import load as load_schedule

    model = build_model(load(scenario_path))
    schedule = load_schedule(schedule_path)
    try:
        result = replay(model, schedule)
    except ScheduleMismatch as err:  # name the file, not only the model
        detail = str(err).removeprefix(f"{err.where}: ") if err.where else str(err)
        raise BadInput(f"does not replay on {scenario_path}: {detail}",
                       str(schedule_path)) from None
    cex = Counterexample(schedule.prop, result.messages[schedule.prop], schedule.actors,
                         tuple(result.records))
    echo(causal_chain(cex) + "\n\n" + counterexample_table(cex, width))
