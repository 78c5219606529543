"""The invalidation hardware's one SimPy process, asleep between publications and woken by an
URGENT event (``TimedMachine._start_hardware``), changes no figure: every run equals that of
a new process per publication (``hardware_sleeps = False``) - runs where CPUs contend for
locks, the hardware works through a queue while a CPU polls, a flush-queue timer fires, a VMM
processes the queue inside the exit (no hardware process at all), a run stops by time, a
recording's calls are replayed at their timestamps, and with the event skipping off too."""

import pytest
from test_engine_lookahead import RUNS, _run, _timed_recording, same_without

from vtdsim.simulation.engine import TimedMachine


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_sleeping_hardware_process_changes_no_figure(name, monkeypatch):
    same_without("hardware_sleeps", monkeypatch, _run, *RUNS[name])


@pytest.mark.parametrize("policy", ["strict", "lazy"])
def test_a_sleeping_hardware_process_changes_no_figure_of_a_timed_recording(policy,
                                                                           monkeypatch):
    same_without("hardware_sleeps", monkeypatch, _timed_recording, policy)


def test_without_event_skipping_too(monkeypatch):
    monkeypatch.setattr(TimedMachine, "lookahead", False)
    same_without("hardware_sleeps", monkeypatch, _run, *RUNS["nic-rx strict, by time"])


def test_runs_above_do_wake_the_sleeping_process(monkeypatch):
    """The comparison covers wake-ups (else it could not fail), each of one process."""
    woken, processes = [], set()
    original = TimedMachine._start_hardware

    def watching(self, delay):
        woken.append(self._hw_idle is not None)
        original(self, delay)
        processes.add(id(self._hw))

    monkeypatch.setattr(TimedMachine, "_start_hardware", watching)
    _run(*RUNS["nic-rx strict, by time"])
    assert sum(woken) > 10 and len(processes) == 1
