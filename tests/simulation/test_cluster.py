"""`simulation.cluster`: a LocalCluster's workers are forked copies of the client on Linux
and run without Dask's dashboard-only periodic work."""

from __future__ import annotations

import sys

import pytest

from vtdsim.simulation import cluster


def _seen_by_worker() -> tuple[object, object, object]:
    """What a worker sees: the mark the client set before the cluster started (only a forked
    worker has it), and two of the settings ``local_cluster_config`` gives it."""
    import dask

    return (getattr(cluster, "_client_mark", None),
            dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.admin.tick.interval"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux only")
def test_local_workers_are_forked_and_quiet(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(cluster, "_client_mark", "set in the client", raising=False)
    with cluster.client(None, workers=2) as connected:
        seen = connected.run(_seen_by_worker)
    assert len(seen) == 2
    assert set(seen.values()) == {("set in the client", False, "1s")}


def test_fork_only_on_linux():
    method = "distributed.worker.multiprocessing-method"
    assert cluster.local_cluster_config("linux")[method] == "fork"
    assert method not in cluster.local_cluster_config("darwin")
    assert cluster.local_cluster_config("darwin") == cluster.LOCAL


def _nap(seconds: float) -> int:
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def test_a_queued_task_goes_to_the_first_free_worker():
    """Greedy list scheduling: while one worker runs a long task, every other task runs on the
    other one (Dask's default saturation would hand the busy worker a second task to wait
    behind the long one)."""
    pytest.importorskip("distributed")
    pids = cluster.dask_map(_nap, [1.5] + [0.05] * 9, workers=2)
    assert pids[0] not in pids[1:] and len(set(pids[1:])) == 1


def _duration(seconds: float) -> float:
    return seconds


def test_tasks_go_longest_first_by_their_cost_and_come_back_in_input_order():
    """The long task comes last in the input: by its cost it starts first, and the short ones
    all run on the other worker; in input order they would be shared out first and the long
    one would start last, on whichever worker freed."""
    pytest.importorskip("distributed")
    durations = [0.05] * 9 + [1.5]
    pids = cluster.dask_map(_nap, durations, workers=2, cost=_duration)
    assert pids[-1] not in pids[:-1] and len(set(pids[:-1])) == 1
    assert cluster.dask_map(abs, [-3, 1, -2, 5, 0], workers=2, cost=abs) == [3, 1, 2, 5, 0]
