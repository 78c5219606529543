"""Worker processes for replay, so that both cores work: the model runs in this process while
others read and parse the logs and compare the recording with what the model submits.

``prefetched(produce, *args)`` runs ``produce(*args)`` (a top-level function returning an
iterable of picklable records) in a child process and yields its records in the same order.
``Offloaded(consume, *args)`` is the other direction: ``consume(items, *args)`` runs in a child
process over the items this process hands it with ``put``; ``result()`` returns what it
returned.  Records travel in chunks through bounded queues, so at most ``_QUEUE_CHUNKS`` chunks
wait between two processes: memory stays flat however long the log is, and the slower side
holds the other back instead of buffering the whole file.

A ``BadInput`` in a worker (a malformed line) is raised again here with its message and
``file:line``; any other exception is re-raised as a ``ModelError`` naming it.  An offloaded
consumer's failure is raised at the next chunk handed over, not only at ``result()``.  Closing
a ``prefetched`` iterator early, or leaving an ``Offloaded`` block, stops the worker.

Not modelled: nothing - this is plumbing; what a worker yields or returns is exactly what the
function gives in the calling process (the tests compare both).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue as queue_module
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


def _failure(exc: BaseException) -> tuple[int, Any]:
    """How a worker reports an exception: a ``BadInput`` by its message and location, anything
    else by the end of its traceback."""
    if isinstance(exc, BadInput):
        text, where = str(exc), exc.where
        return _BAD_INPUT, (text.removeprefix(f"{where}: ") if where else text, where)
    return _FAILED, "".join(traceback.format_exception(exc, limit=-3))


def _raise(kind: int, payload: Any) -> None:
    if kind == _BAD_INPUT:
        message, where = payload
        raise BadInput(message, where=where)
    raise ModelError(f"replay worker failed: {payload.strip().splitlines()[-1]}")


def _stop(worker) -> None:
    if worker.is_alive():
        worker.terminate()
    worker.join()


# -- a producer in a worker ------------------------------------------------------------------------
def _produce(queue, produce: Callable[..., Iterable[Any]], args: tuple) -> None:
    chunk: list = []
    try:
        for record in produce(*args):
            chunk.append(record)
            if len(chunk) == _CHUNK:
                queue.put((_RECORDS, chunk))
                chunk = []
        queue.put((_RECORDS, chunk))
        queue.put((_DONE, None))
    except Exception as exc:  # noqa: BLE001 - the worker reports every failure to the consumer
        queue.put((_RECORDS, chunk))  # what came before the bad line still counts
        queue.put(_failure(exc))


def prefetched(produce: Callable[..., Iterable[Any]], *args: Any) -> Iterator[Any]:
    """``produce(*args)``'s records, produced in a worker process (see the module docstring)."""
    ctx = _context()
    queue = ctx.Queue(maxsize=_QUEUE_CHUNKS)
    worker = ctx.Process(target=_produce, args=(queue, produce, args), daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = queue.get()
            if kind == _RECORDS:
                yield from payload
            elif kind == _DONE:
                return
            else:
                _raise(kind, payload)
    finally:
        _stop(worker)
        queue.close()


# -- a consumer in a worker ------------------------------------------------------------------------
def _fed(feed) -> Iterator[Any]:
    while True:
        kind, payload = feed.get()
        if kind == _DONE:
            return
        yield from payload


def _consume(feed, back, consume: Callable[..., Any], args: tuple) -> None:
    items = _fed(feed)
    try:
        back.put((_DONE, consume(items, *args)))
    except Exception as exc:  # noqa: BLE001 - the worker reports every failure to the feeder
        back.put(_failure(exc))
    for _ in items:
        pass  # take what the feeder still sends, so that it never blocks on a full queue


class Offloaded:
    """``consume(items, *args)`` in a worker process over the items given to ``put``; use as a
    context manager (leaving the block stops the worker) and end with ``result()``."""

    def __init__(self, consume: Callable[..., Any], *args: Any):
        ctx = _context()
        self._feed = ctx.Queue(maxsize=_QUEUE_CHUNKS)
        self._back = ctx.Queue(maxsize=1)
        self._chunk: list = []
        self._reply: tuple[int, Any] | None = None  # the consumer's answer, once it came
        self._worker = ctx.Process(target=_consume, args=(self._feed, self._back, consume, args),
                                   daemon=True)
        self._worker.start()

    def __enter__(self) -> Offloaded:
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self._worker)
        for q in (self._feed, self._back):
            q.close()

    def put(self, item: Any) -> None:
        self._chunk.append(item)
        if len(self._chunk) == _CHUNK:
            self._send()

    def _send(self) -> None:
        """Hand over the chunk - unless the consumer has failed already: then raise that."""
        if self._reply is None:
            with contextlib.suppress(queue_module.Empty):
                self._reply = self._back.get_nowait()
        if self._reply is not None and self._reply[0] != _DONE:
            _raise(*self._reply)
        self._feed.put((_RECORDS, self._chunk))
        self._chunk = []

    def result(self) -> Any:
        """Hand over the rest, wait for the consumer, return its value."""
        self._send()
        self._feed.put((_DONE, None))
        kind, payload = self._reply or self._back.get()
        if kind != _DONE:
            _raise(kind, payload)
        return payload
