"""The worker-process reader yields exactly what the producer yields, in order, and reports a
malformed line the way the in-process parser does."""

from __future__ import annotations

import pytest

from vtdsim.errors import BadInput, ModelError
from vtdsim.traces.prefetch import prefetched
from vtdsim.traces.qemu_log import read_qemu_log


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
