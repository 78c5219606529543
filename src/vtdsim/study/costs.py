"""The simulator's side of a seed: timed runs through ``simulation.run.simulate`` with the
constants table, each result turned into figures that name the run (workload, unit, profile,
policy, platform, I/Os, seed).

A run on a vIOMMU platform (``emulated``/``shadow``/``nested``) goes through the same API; a
build whose simulation layer does not register that platform yet answers with a BadInput, which
becomes a figure marked "not yet modelled on this platform" - never a number of our own.

Not provided: runs outside ``simulation.run.WORKLOADS``; arithmetic on a figure is ``derived``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtdsim.errors import BadInput
from vtdsim.simulation import constants as constants_table
from vtdsim.simulation.platforms import VIRTUAL_PLATFORMS
from vtdsim.simulation.run import make_params, simulate
from vtdsim.simulation.workloads.common import Mode
from vtdsim.study.evidence import NOT_MODELLED, Figure, missing


@dataclass(frozen=True)
class Run:
    """One timed run: the workload, its mode and its parameters."""

    workload: str
    unit: str
    profile: str = "mainline"
    policy: str = "strict"
    platform: str = "bare"
    ats: bool = False
    params: tuple[tuple[str, object], ...] = ()  # workload parameters (hashable)
    ios: int | None = None  # the run's own length (context-flush: changes), else the study's

    def command(self, ios: int, seed: int) -> str:
        """The equivalent ``vtdsim simulate`` command line (what a reader re-runs)."""
        ios = self.ios or ios
        extra = "".join(f" --{k.replace('_', '-')} {v}" for k, v in sorted(self.params))
        ats = " --ats" if self.ats else ""
        return (f"vtdsim simulate {self.workload} --unit {self.unit} --profile {self.profile}"
                f" --policy {self.policy} --platform {self.platform}{ats}{extra}"
                f" --ios {ios} --seed {seed}")


class Costs:
    """Runs the study's timed runs once each (a run is cached by its definition)."""

    def __init__(self, ios: int, seed: int):
        self.ios, self.seed = ios, seed
        self.table = constants_table.load(None)
        self._done: dict[Run, dict | str] = {}
        self.wall: dict[str, float] = {}

    def result(self, run: Run) -> dict | str:
        """The result dict, or the reason the platform cannot run it (a marker)."""
        if run not in self._done:
            self._done[run] = self._simulate(run)
        return self._done[run]

    def _simulate(self, run: Run) -> dict | str:
        mode = Mode(policy=run.policy, profile=run.profile, platform=run.platform,
                    unit=run.unit, seed=self.seed, ios=run.ios or self.ios, ats=run.ats)
        try:
            result = simulate(run.workload, mode, make_params(run.workload, **dict(run.params)),
                              self.table)
        except BadInput as err:
            if run.platform in VIRTUAL_PLATFORMS:
                return f"{NOT_MODELLED} ({err})"
            raise
        self.wall[run.command(self.ios, self.seed)] = result.pop("timing")["wall_s"]
        return result

    def figure(self, run: Run, key: str, label: str, unit: str, side: str) -> Figure:
        """``key`` of ``run``'s result as a figure (or the marker when the platform is not
        modelled yet)."""
        detail = run.command(self.ios, self.seed)
        result = self.result(run)
        if isinstance(result, str):  # the marker, with the simulator's reason
            return missing(label, unit, "model run", detail, result, side)
        return Figure(label, float(result[key]), unit, "model run", f"{detail} -> {key}", side)

    def constant(self, name: str) -> float:
        return self.table.ns(name)

    def constant_source(self, name: str) -> str:
        c = self.table.table[name]
        return f"constants.toml {name} = {c.value:g} {c.unit} ({c.confidence}: {c.source})"
