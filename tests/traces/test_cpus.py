"""Replay's CPU streams (traces/cpus.py) on hand-made interleavings, with the real 6.1 driver
on a legacy caching-mode unit and an ATS device: each unmap submits an IOTLB PSI, then a
device-TLB invalidation under ``domain->lock``; the recording's ``qi_submit`` lines decide
which stream takes the queue when."""

from __future__ import annotations

import pytest

from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_unmap_page
from vtdsim.driver.pgtable import IOMMU_READ, IOMMU_WRITE
from vtdsim.driver.steps import Lock, Unlock
from vtdsim.simulation.system import System
from vtdsim.traces import compare as cmp
from vtdsim.traces import events as ev
from vtdsim.traces.calls import stream_key
from vtdsim.traces.cpus import CpuStreams
from vtdsim.traces.replay import RecordedIovas

PAGE = 0x1000
CPU0, CPU1 = (0, ev.HARDIRQ), (1, ev.HARDIRQ)
IOVAS = [0xFFFF0000 + i * PAGE for i in range(4)]


class Machine:
    """A booted legacy CM unit, one ATS device in a strict DMA domain, its pages mapped."""

    def __init__(self, unit: str = "qemu72-legacy-cm-ats"):
        self.system = System.boot(unit, scalable=False)
        self.system.probe("01:00.0", ats=True)
        domain = self.system.attach(["01:00.0"])
        for iova in IOVAS:
            self.system.run(self.system.driver.map_sg(domain, iova, ((0x100000 + iova, PAGE),),
                                                      IOMMU_READ | IOMMU_WRITE))
        self.system.take_submissions()
        self.cookie = IommuDmaCookie(self.system.driver, domain, RecordedIovas(), ncpus=2)
        self.order: list[tuple[str, str]] = []  # (origin, label) per descriptor submitted
        self.cpus = CpuStreams(self.system.executor, self.system.iommu.qi.lock, self.submitted)

    def submitted(self, origin: str) -> int:
        descs = [d for write in self.system.take_submissions() for d in write]
        self.order += [(origin, d[0]) for d in descs]
        return len(descs)

    def unmap(self, key, iova: int, cpu: int) -> None:
        self.cpus.start(key, iommu_dma_unmap_page(self.cookie, iova, PAGE, cpu),
                        f"{iova:#x}")


def flushes(iova: int) -> list[tuple[str, str]]:
    return [(f"{iova:#x}", "iotlb_inv"), (f"{iova:#x}", "dev_tlb_inv")]


def test_a_call_waits_for_its_streams_qi_submit_lines():
    """CPU1's unmap line comes first, but CPU0's qi_submit lines come before CPU1's (a vCPU
    stalled between ``__iommu_unmap`` and ``iotlb_sync``): CPU0's flushes go first."""
    m = Machine()
    m.unmap(CPU1, IOVAS[0], 1)
    m.unmap(CPU0, IOVAS[1], 0)
    assert m.order == []
    for key in (CPU0, CPU0, CPU1, CPU1):
        m.cpus.mark(key, 0)
    assert m.order == flushes(IOVAS[1]) + flushes(IOVAS[0])


def test_between_two_flushes_of_one_call_the_other_cpu_may_submit():
    """CPU1's IOTLB PSI, then CPU0's two flushes, then CPU1's device-TLB one: CPU1 did not
    hold ``domain->lock`` while the recording shows CPU0 flushing its device-TLB."""
    m = Machine()
    m.unmap(CPU1, IOVAS[0], 1)
    m.cpus.mark(CPU1, 0)
    m.unmap(CPU0, IOVAS[1], 0)
    m.cpus.mark(CPU0, 0)
    m.cpus.mark(CPU0, 0)
    m.cpus.mark(CPU1, 0)
    first, second = flushes(IOVAS[0]), flushes(IOVAS[1])
    assert m.order == [first[0], *second, first[1]]
    assert not m.system.executor.held  # every lock released, the lent one included


def _locked_flush(m: Machine, lock: str):
    """Take ``lock``, flush the whole domain (one submission), release it."""
    yield Lock(name=lock, why="test")
    yield from m.system.driver.flush_iotlb_all(m.cookie.domain)
    yield Unlock(name=lock, why="test")


def test_a_lock_taken_early_by_a_stream_without_its_line_does_not_block():
    """CPU1 took ``x`` and waits for the queue; the recording shows CPU0 submitting first,
    so CPU1 had not taken ``x`` yet: CPU0 takes it too, and both holds end cleanly."""
    m = Machine()
    m.cpus.start(CPU1, _locked_flush(m, "x"), "cpu1")
    m.cpus.start(CPU0, _locked_flush(m, "x"), "cpu0")
    m.cpus.mark(CPU0, 0)
    assert [origin for origin, _ in m.order] == ["cpu0"]
    assert m.system.executor.held.get("x")  # CPU1's hold
    m.cpus.mark(CPU1, 0)
    assert [origin for origin, _ in m.order] == ["cpu0", "cpu1"]
    assert not m.system.executor.held and not m.cpus.shared


def test_the_streams_next_call_means_the_previous_one_finished():
    m = Machine()
    m.unmap(CPU1, IOVAS[0], 1)
    m.unmap(CPU1, IOVAS[2], 1)  # no qi_submit line came: the first call still ran before
    assert m.order == flushes(IOVAS[0])
    m.cpus.finish()
    assert m.order == flushes(IOVAS[0]) + flushes(IOVAS[2])
    assert not m.cpus.waiting


def test_lines_of_a_stream_with_no_call_are_counted_apart():
    m = Machine()
    m.cpus.mark(CPU0, 0)
    assert m.cpus.unmatched_marks == 1 and m.order == []


def test_deferred_work_waits_for_an_unexplained_line_of_its_context_and_time():
    m = Machine()
    ran = []

    def work():
        ran.append(True)
        yield from ()

    m.cpus.defer(ev.SOFTIRQ, 100, work, "timer")
    m.cpus.mark((0, ev.SOFTIRQ), 99)  # too early for the timer wheel
    m.cpus.mark(CPU0, 150)  # another context
    assert ran == [] and m.cpus.unmatched_marks == 2
    m.cpus.mark((1, ev.SOFTIRQ), 120)
    assert ran == [True] and not m.cpus.deferred


def _nothing():
    yield from ()


def test_a_line_its_call_does_not_explain_is_other_works():
    # 6.12: the timer's softirq right after a lazy unmap in the same CPU's softirq - the line
    # travels with the unmap, which submits nothing, so it is the timer's that the unmap
    # armed (deferred by the caller when the call returns).
    m = Machine()
    ran = []

    def work():
        ran.append(True)
        yield from ()

    def submits_nothing():
        yield from ()

    m.cpus.start((1, ev.SOFTIRQ), submits_nothing(), "lazy unmap", marks=1, marks_us=150)
    assert ran == [] and m.cpus.unmatched_marks == 1  # no work waits: counted apart
    armed = [True]  # the unmap arms the timer once (the caller defers it when it returns)

    def returned():
        if armed:
            m.cpus.defer(ev.SOFTIRQ, 140, work, "timer")
            armed.clear()

    m.cpus.returned = returned
    m.cpus.start((1, ev.SOFTIRQ), submits_nothing(), "lazy unmap", marks=1, marks_us=150)
    # (this work submits nothing, so its line stays unexplained too: counted apart)
    assert ran == [True] and m.cpus.unmatched_marks == 2 and not m.cpus.deferred


def test_deferred_work_takes_its_streams_next_lines():
    # 6.1's flush of an ATS domain from the timer (no caching mode): an IOTLB flush and a
    # device-TLB flush, two qi_submit_sync calls, two lines of the timer's softirq; the second
    # line is the work's, not another unexplained one.
    m = Machine("qemu72-legacy-ats")
    m.cpus.defer(ev.SOFTIRQ, 100, lambda: m.cookie.driver.flush_iotlb_all(m.cookie.domain),
                 "timer")
    m.cpus.mark((1, ev.SOFTIRQ), 120)
    assert [label for _, label in m.order] == ["iotlb_inv"]  # waits for its next line
    m.cpus.defer(ev.SOFTIRQ, 100, _nothing, "another timer")
    m.cpus.mark((1, ev.SOFTIRQ), 121)
    assert [label for _, label in m.order] == ["iotlb_inv", "dev_tlb_inv"]
    assert m.cpus.unmatched_marks == 0 and ev.SOFTIRQ in m.cpus.deferred


@pytest.mark.parametrize(("cpu", "pid", "context", "key"), [
    (0, 131, ev.TASK, (0, ev.TASK, 131)),
    (0, 0, ev.HARDIRQ, (0, ev.HARDIRQ)),
    (1, 131, ev.HARDIRQ, (1, ev.HARDIRQ)),  # an IRQ's pid is the interrupted task's
    (1, 21, ev.SOFTIRQ, (1, ev.SOFTIRQ)),
])
def test_stream_key(cpu, pid, context, key):
    assert stream_key(cpu, pid, context) == key


# -- tied timestamps: which QEMU batch is each guest line's ------------------------------------
def _line(cpu: int, addr: int) -> ev.QiSubmit:
    return ev.QiSubmit(1, "<idle>", 0, cpu, 5_356_176, ev.HARDIRQ, True, "iotlb_inv", "dmar0",
                       0x700F2, addr, 0, 0)


def _batch(addr: int) -> cmp.QemuBatch:
    return cmp.qemu_batch(1, (("iotlb", 0x700F2, addr), ("wait", 0x25, 0x1000)))


def _batches(*views: tuple[int, ...]) -> list[cmp.QemuBatch]:
    """QEMU batches, one per view: each holds the PSIs at those addresses and one wait."""
    return [cmp.qemu_batch(1, tuple(("iotlb", 0x700F2, a) for a in view)
                           + (("wait", 0x25, 0x1000),)) for view in views]


def _tied(group, *views):
    """Where each line of ``group`` lands: (index of its batch, slot), and if reordered."""
    batches = _batches(*views)
    placed, reordered = cmp.BatchFiller(iter(batches)).fill_tied(group)
    return [(batches.index(b) if b is not None else None, s) for b, s in placed], reordered


def test_tied_lines_follow_qemu_and_keep_each_cpus_order():
    group = [_line(0, 0xA000), _line(0, 0xB000), _line(1, 0xC000)]
    assert _tied(group, (0xC000,), (0xA000,), (0xB000,)) == ([(1, 0), (2, 0), (0, 0)], True)
    # CPU0's own lines swapped in QEMU's log: each CPU keeps its order, the misfits stay in
    # the guest's order
    assert _tied(group, (0xB000,), (0xA000,), (0xC000,)) == ([(0, 0), (1, 0), (2, 0)], False)
    # QEMU's log ends: the last line has no batch
    assert _tied(group, (0xA000,), (0xB000,)) == ([(0, 0), (1, 0), (None, 0)], False)


def test_tied_lines_fill_a_batch_of_one_cpu_slot_by_slot():
    # 6.12's qi_batch: CPU0's two lines are one IQT write, QEMU took CPU1's first
    group = [_line(0, 0xA000), _line(0, 0xB000), _line(1, 0xC000)]
    assert _tied(group, (0xC000,), (0xA000, 0xB000)) == ([(1, 0), (1, 1), (0, 0)], True)
    filler = cmp.BatchFiller(iter(_batches((0xA000, 0xB000), (0xC000,))))
    assert filler.fits(group[0], *filler.fill(group[0]))
    # a batch left open continues with its CPU's next line, whatever comes first in the group
    placed, reordered = filler.fill_tied([group[2], group[1]])
    assert [s for _, s in placed] == [0, 1] and not reordered  # QEMU took batch 0 first
    assert all(filler.fits(e, b, s) for e, (b, s) in zip([group[2], group[1]], placed, strict=True))
