"""The flush queue (dma-iommu.c): ring capacity, timer arming, counters, release after flush."""

from __future__ import annotations

from vtdsim.driver.flush_queue import IOVA_FQ_SIZE, IOVA_FQ_TIMEOUT_NS, FlushQueue
from vtdsim.driver.steps import Annotate, FreePage, Lock, ReuseIova, Unlock


def drain(gen) -> list:
    """Run a generator that needs no step results, collecting its steps."""
    steps = []
    try:
        step = next(gen)
        while True:
            steps.append(step)
            step = gen.send(None)
    except StopIteration:
        return steps


def make_fq(ncpus=2):
    released = []

    def flush():
        yield Annotate(event="flush_iotlb_all")

    fq = FlushQueue("dom1", ncpus, flush, lambda pfn, pages, cpu: released.append((pfn, pages)))
    return fq, released


def kinds(steps):
    return [type(s).__name__ if not isinstance(s, Annotate) else s.event for s in steps]


def test_nothing_released_before_a_flush():
    fq, released = make_fq()
    steps = drain(fq.queue_iova(0, 0x100, 1, [0x5000], now_ns=0))
    assert kinds(steps) == ["Lock", "Unlock"]
    assert released == [] and fq.pending() == 1
    assert fq.timer_expires_ns == IOVA_FQ_TIMEOUT_NS


def test_timer_armed_once_per_batch_not_per_entry():
    fq, _ = make_fq()
    drain(fq.queue_iova(0, 0x100, 1, [], now_ns=1_000))
    drain(fq.queue_iova(1, 0x101, 1, [], now_ns=9_000_000))
    assert fq.timer_expires_ns == 1_000 + IOVA_FQ_TIMEOUT_NS
    assert fq.counters["timer_armed"] == 1
    assert not fq.timer_due(1_000 + IOVA_FQ_TIMEOUT_NS - 1)
    assert fq.timer_due(1_000 + IOVA_FQ_TIMEOUT_NS)


def test_timeout_flushes_then_frees_every_cpu():
    fq, released = make_fq()
    drain(fq.queue_iova(0, 0x100, 2, [0x7000], now_ns=0))
    drain(fq.queue_iova(1, 0x200, 1, [], now_ns=0))
    steps = drain(fq.fq_flush_timeout(IOVA_FQ_TIMEOUT_NS))
    flush_at = kinds(steps).index("flush_iotlb_all")
    frees = [i for i, s in enumerate(steps) if isinstance(s, FreePage | ReuseIova)]
    assert frees and min(frees) > flush_at  # pages/IOVAs only after the flush completed
    assert [s.addr for s in steps if isinstance(s, FreePage)] == [0x7000]
    assert [(s.iova, s.size) for s in steps if isinstance(s, ReuseIova)] == [
        (0x100000, 0x2000), (0x200000, 0x1000)]
    assert released == [(0x100, 2), (0x200, 1)]
    assert not fq.timer_on and fq.pending() == 0
    assert fq.flush_start_cnt == fq.flush_finish_cnt == 1


def test_full_ring_flushes_in_the_unmapping_context():
    fq, released = make_fq(ncpus=1)
    for i in range(IOVA_FQ_SIZE - 1):
        drain(fq.queue_iova(0, i, 1, [], now_ns=0))
    assert fq.rings[0].full() and fq.counters["flushes"] == 0
    steps = drain(fq.queue_iova(0, 0x1000, 1, [], now_ns=0))
    assert fq.counters["flushes_full"] == 1
    assert len(released) == IOVA_FQ_SIZE - 1  # all 255 earlier entries, after the flush
    assert fq.pending() == 1
    assert isinstance(steps[0], Lock) and isinstance(steps[-1], Unlock)


def test_entry_queued_during_a_flush_waits_for_the_next_one():
    """An entry stamped with the start counter of a flush in progress is not covered by it."""
    fq, released = make_fq()
    drain(fq.queue_iova(0, 0x100, 1, [], now_ns=0))
    gen = fq.fq_flush_timeout(IOVA_FQ_TIMEOUT_NS)
    step = next(gen)
    while not (isinstance(step, Annotate) and step.event == "flush_iotlb_all"):
        step = gen.send(None)
    # The flush has started (start counter bumped) but not finished: another CPU queues.
    drain(fq.queue_iova(1, 0x300, 1, [], now_ns=IOVA_FQ_TIMEOUT_NS))
    drain(gen)
    assert released == [(0x100, 1)]
    assert fq.pending() == 1 and fq.timer_on  # the new batch armed a new timer
