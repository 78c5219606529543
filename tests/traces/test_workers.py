"""The worker processes: a producer's records arrive exactly as produced, in order; a
consumer's result is what it returns in-process; a malformed line is reported the way the
in-process parser does; a consumer's failure reaches the feeder at its next hand-over."""

from __future__ import annotations

import pytest

from vtdsim.errors import BadInput, ModelError
from vtdsim.traces.qemu_log import read_qemu_log
from vtdsim.traces.workers import _CHUNK, Offloaded, prefetched


def _numbers(n: int):
    return iter(range(n))


def _bad_after(n: int):
    yield from range(n)
    raise BadInput("not a QEMU trace line", where="qemu.log:7")


def _broken():
    yield 1
    raise ZeroDivisionError("boom")


def test_records_arrive_in_order_across_chunks():
    assert list(prefetched(_numbers, 10_000)) == list(range(10_000))


def test_empty_producer():
    assert list(prefetched(_numbers, 0)) == []


def test_bad_input_keeps_message_and_location():
    out = []
    with pytest.raises(BadInput) as err:
        out.extend(prefetched(_bad_after, 5000))
    assert out == list(range(5000))  # everything before the bad line was delivered
    assert err.value.where == "qemu.log:7"
    assert str(err.value) == "qemu.log:7: not a QEMU trace line"


def test_other_failure_is_a_model_error_naming_it():
    with pytest.raises(ModelError, match="ZeroDivisionError: boom"):
        list(prefetched(_broken))


def test_closing_early_stops_the_worker():
    records = prefetched(_numbers, 10**7)
    assert next(records) == 0
    records.close()  # must return promptly: the worker is terminated, not drained


def test_parsed_qemu_log_equals_in_process(tmp_path):
    log = tmp_path / "qemu.log"
    log.write_text("vtd_inv_qi_tail write tail 2\n"
                   "vtd_inv_desc invalidate desc type iotlb high 0x0 low 0x12\n"
                   "vtd_something_else whatever\n")
    assert list(prefetched(_qemu_events, str(log))) == list(read_qemu_log(log))


def _qemu_events(path: str):
    return read_qemu_log(path)


# -- a consumer in a worker ------------------------------------------------------------------------
def _total(items, scale: int) -> int:
    return scale * sum(items)


def _first_two(items) -> list:
    return [next(items), next(items)]


def _rejects_at(items, n: int) -> None:
    for i, _ in enumerate(items):
        if i == n:
            raise BadInput("vtd_inv_desc text does not match", where="qemu.log:9")


def test_offloaded_returns_what_the_consumer_returns():
    with Offloaded(_total, 3) as worker:
        for i in range(3 * _CHUNK + 5):
            worker.put(i)
        assert worker.result() == _total(range(3 * _CHUNK + 5), 3)


def test_a_consumer_that_stops_early_does_not_block_the_feeder():
    with Offloaded(_first_two) as worker:
        for i in range(20 * _CHUNK):  # more than the bounded queue holds
            worker.put(i)
        assert worker.result() == [0, 1]


def test_a_consumer_failure_is_raised_at_the_next_hand_over():
    with pytest.raises(BadInput) as err, Offloaded(_rejects_at, 10) as worker:
        for i in range(10**7):  # stops long before: the failure is seen while feeding
            worker.put(i)
    assert str(err.value) == "qemu.log:9: vtd_inv_desc text does not match"


def test_a_consumer_failure_is_raised_by_result():
    with pytest.raises(BadInput, match="qemu.log:9"), Offloaded(_rejects_at, 1) as worker:
        worker.put(0)
        worker.put(1)
        worker.result()
