"""Independent tasks on Dask distributed: a scheduler at an address, or a LocalCluster of
worker processes (one thread each: the model is pure Python, the GIL would serialise threads).

Results come back in the order of the inputs (``Client.gather`` keeps the futures' order), so
a caller that prints them in that order prints what a serial run prints.

Not provided: retries, progress, or shared state between tasks (each gets its inputs pickled).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# Dask settings for a LocalCluster on a machine with as many cores as workers.  The first four
# stop periodic work done for a dashboard and for long-lived clusters, on the cores the tasks
# need: measured with two workers each running a task that sleeps, the client process
# (scheduler, nannies) used 3.4% of a core and each worker 1.6% with Dask's defaults, 0.9% and
# 0.2% with these.
LOCAL = {
    # the event loop's blocked-loop check (default every 20 ms, in every process)
    "distributed.admin.tick.interval": "1s",
    # memory sampled for the nanny's limit and the worker's spilling (default 100 ms)
    "distributed.worker.memory.monitor-interval": "1s",
    # CPU/memory/network history for the dashboard (default 500 ms)
    "distributed.admin.system-monitor.interval": "5s",
    # the statistical profiler: a sample of the running task every 10 ms, taking the GIL
    # from it, for a dashboard these clusters do not serve
    "distributed.worker.profile.enabled": False,
    # One task per worker thread at a time, the others queued at the scheduler for whichever
    # worker frees first (greedy list scheduling).  Dask's 1.1 sends a single-thread worker
    # two, so a long task can wait behind another on a busy worker while the other idles.
    "distributed.scheduler.worker-saturation": 1.0,
}


def local_cluster_config(platform: str = sys.platform) -> dict[str, Any]:
    """Dask settings while a LocalCluster starts (a scheduler at an address has its workers
    configured where they run): ``LOCAL``, and on Linux forked workers.

    A forked worker is a copy of this process, vtdsim and distributed already imported;
    Dask's default (spawn) starts fresh interpreters that import both again and tear down
    slower: measured on the 2-core machine (loaded), two spawned workers took 2.7-5.1 s to
    start and 0.7-1.4 s to stop, two forked ones 0.3 s and 0.05-0.2 s - seconds a library
    of ~30 s per worker pays in full.  Elsewhere (macOS) fork is unsafe with the system
    frameworks, so spawn stays.
    """
    config: dict[str, Any] = dict(LOCAL)
    if platform.startswith("linux"):
        config["distributed.worker.multiprocessing-method"] = "fork"
    return config


@contextmanager
def client(scheduler: str | None = None, workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` on ``scheduler`` (an address), or on a LocalCluster of
    ``workers`` processes (``local_cluster_config``) torn down on exit."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as connected:
            yield connected
        return
    with dask.config.set(local_cluster_config()):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        connected = Client(cluster)
    with cluster, connected:
        yield connected


def dask_map(func: Callable, items: Sequence, scheduler: str | None = None,
             workers: int = 2, cost: Callable[[Any], float] | None = None) -> list:
    """``[func(x) for x in items]``, each call one Dask task.  With ``cost`` (an estimate of
    ``func(x)``'s run time, cheap next to it), the tasks are submitted longest first - ties in
    input order - and each worker takes the next when it frees (``LOCAL``): a long task
    started last would run alone at the end while the other workers idle.  The estimates are
    computed on the cluster, one task per worker thread."""
    items = list(items)
    with client(scheduler, workers) as connected:
        order = list(range(len(items)))
        if cost is not None:
            costs = _costs(connected, cost, items)
            order.sort(key=lambda i: (-costs[i], i))
        done = connected.gather(connected.map(func, [items[i] for i in order], pure=False))
    results: list = [None] * len(items)
    for i, result in zip(order, done, strict=True):
        results[i] = result
    return results


def _costs(connected: Any, cost: Callable[[Any], float], items: list) -> list[float]:
    """``[cost(x) for x in items]`` in as many tasks as the cluster has threads."""
    slots = max(1, sum(connected.nthreads().values()))
    chunks = [items[k::slots] for k in range(slots)]
    per_chunk = connected.gather(connected.map(_cost_chunk, [cost] * slots, chunks,
                                               pure=False))
    costs: list[float] = [0.0] * len(items)
    for k, values in enumerate(per_chunk):
        costs[k::slots] = values
    return costs


def _cost_chunk(cost: Callable[[Any], float], chunk: list) -> list[float]:
    return [cost(x) for x in chunk]
