"""The timed engine's event skipping changes no figure.  ``TimedMachine.elapse_alone`` lets an
actor's time pass without a SimPy event when no other event is due by then; every figure must
equal that of one event per wait, on runs where CPUs contend for locks, the hardware works
through a queue while a CPU polls, a flush-queue timer fires, a VMM processes the queue inside
the exit, a run stops by time, and a recording's calls are replayed at their timestamps."""

from pathlib import Path

import pytest

from vtdsim.simulation import constants
from vtdsim.simulation.engine import TimedMachine
from vtdsim.simulation.run import Mode, make_params, simulate
from vtdsim.traces.timed import simulate_trace

TABLE = constants.load()
EXAMPLE = Path(__file__).parents[2] / "examples" / "legacy-cm-default"
RUNS = {
    "nic-rx strict, by time": ("nic-rx", {"duration_ns": 300_000}, {}),
    "nic-rx lazy, two flows (flush-queue timer)": ("nic-rx", {"ios": 1500, "policy": "lazy"},
                                                   {"flows": 2}),
    "nic-rx 6.1, ATS": ("nic-rx", {"ios": 600, "profile": "linux-6.1", "ats": True},
                        {"ring": 64, "pages_per_desc": 4}),
    "nvme, two jobs (lock contention)": ("nvme", {"ios": 600}, {"jobs": 2, "qd": 8}),
    "nvme, nested vIOMMU, side core": ("nvme", {"ios": 300, "platform": "nested",
                                               "exits": "sidecore"}, {"qd": 8}),
    "nic-rx, emulated vIOMMU": ("nic-rx", {"ios": 300, "platform": "emulated"}, {"ring": 64}),
    "dma-window": ("dma-window", {"ios": 1500}, {}),
    "context-flush (a watched lock)": ("context-flush", {"ios": 300}, {}),
}


def _run(workload: str, mode: dict, params: dict) -> dict:
    result = simulate(workload, Mode(**{"policy": "strict"} | mode),
                      make_params(workload, **params), TABLE)
    result.pop("timing")
    return result


def _timed_recording(policy: str) -> dict:
    """The bundled recording's calls replayed at their timestamps (``simulate_trace``)."""
    result = simulate_trace(EXAMPLE, TABLE, policy=policy)
    result.pop("timing")
    return result


def same_without(switch: str, monkeypatch, run, *args) -> None:
    """``run(*args)`` gives the same figures with ``TimedMachine.<switch>`` turned off (a
    shortcut of the engine's, each compared with the way it replaced)."""
    fast = run(*args)
    monkeypatch.setattr(TimedMachine, switch, False)
    assert fast == run(*args)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_skipping_events_changes_no_figure(name, monkeypatch):
    same_without("lookahead", monkeypatch, _run, *RUNS[name])


@pytest.mark.parametrize("policy", ["strict", "lazy"])
def test_skipping_events_changes_no_figure_of_a_timed_recording(policy, monkeypatch):
    same_without("lookahead", monkeypatch, _timed_recording, policy)


def test_runs_above_do_skip_events(monkeypatch):
    """The comparison covers skipped waits (else it could not fail)."""
    skipped = []
    original = TimedMachine.elapse_alone

    def counting(self, ns):
        done = original(self, ns)
        skipped.append(done)
        return done

    monkeypatch.setattr(TimedMachine, "elapse_alone", counting)
    _run(*RUNS["nic-rx strict, by time"])
    assert sum(skipped) > 100 and not all(skipped)
