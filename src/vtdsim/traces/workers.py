"""Parse a log in a worker process while the model runs: the second core reads and parses
QEMU's trace log (most of a recording's lines) and hands the parsed records over in order.

``prefetched(produce, *args)`` runs ``produce(*args)`` (a top-level function returning an
iterable of picklable records) in a child process and yields its records in the same order.
Records travel in chunks through a bounded queue, so at most ``_QUEUE_CHUNKS`` chunks wait
between the two processes: memory stays flat however long the log is, and a slow consumer
stops the producer instead of buffering the whole file.  A ``BadInput`` in the worker (a
malformed line) is raised again here with its message and ``file:line``; any other exception
is re-raised as a ``ModelError`` naming it.  Closing the iterator early stops the worker.

Not modelled: nothing - this is plumbing; the records are exactly what ``produce`` yields in
the calling process (the tests compare both).
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vtdsim.errors import BadInput, ModelError

_CHUNK = 2048  # records per transfer: large enough that pickling, not locking, dominates
_QUEUE_CHUNKS = 8
_DONE, _RECORDS, _BAD_INPUT, _FAILED = range(4)


def _context():
    """fork where the platform has it (the worker inherits the imported model, no re-import);
    elsewhere the default start method."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _work(queue, produce: Callable[..., Iterable[Any]], args: tuple) -> None:
    chunk: list = []
    try:
        for record in produce(*args):
            chunk.append(record)
            if len(chunk) == _CHUNK:
                queue.put((_RECORDS, chunk))
                chunk = []
        queue.put((_RECORDS, chunk))
        queue.put((_DONE, None))
    except BadInput as exc:
        queue.put((_RECORDS, chunk))  # what came before the bad line still counts
        text, where = str(exc), exc.where
        queue.put((_BAD_INPUT, (text.removeprefix(f"{where}: ") if where else text, where)))
    except Exception:  # noqa: BLE001 - the worker reports every failure to the consumer
        queue.put((_RECORDS, chunk))
        queue.put((_FAILED, traceback.format_exc(limit=-3)))


def prefetched(produce: Callable[..., Iterable[Any]], *args: Any) -> Iterator[Any]:
    """``produce(*args)``'s records, produced in a worker process (see the module docstring)."""
    ctx = _context()
    queue = ctx.Queue(maxsize=_QUEUE_CHUNKS)
    worker = ctx.Process(target=_work, args=(queue, produce, args), daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = queue.get()
            if kind == _RECORDS:
                yield from payload
            elif kind == _DONE:
                return
            elif kind == _BAD_INPUT:
                message, where = payload
                raise BadInput(message, where=where)
            else:
                raise ModelError(f"log worker failed: {payload.strip().splitlines()[-1]}")
    finally:
        if worker.is_alive():
            worker.terminate()
        worker.join()
        queue.close()
