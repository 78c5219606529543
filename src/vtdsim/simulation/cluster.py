"""Independent tasks on Dask distributed: a scheduler at an address, or a LocalCluster of
worker processes (one thread each: the model is pure Python, the GIL would serialise threads).

Results come back in the order of the inputs (``Client.gather`` keeps the futures' order), so
a caller that prints them in that order prints what a serial run prints.

Not provided: retries, progress, or shared state between tasks (each gets its inputs pickled).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def client(scheduler: str | None = None, workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` on ``scheduler`` (an address), or on a LocalCluster of
    ``workers`` processes torn down on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as connected:
            yield connected
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as connected:
        yield connected


def dask_map(func: Callable, items: Sequence, scheduler: str | None = None,
             workers: int = 2) -> list:
    """``[func(x) for x in items]``, each call one Dask task."""
    with client(scheduler, workers) as connected:
        return connected.gather(connected.map(func, list(items), pure=False))
