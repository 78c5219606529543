"""Reconstructing driver calls from map/unmap events: the merging rules on hand-made events, and
the bundled caching-mode recording, where every call's PSI shows where it ended."""

from __future__ import annotations

from pathlib import Path

from vtdsim.traces import events as ev
from vtdsim.traces.calls import CONTINUE_GAP_US, CallStats, MapCall, UnmapCall, reconstruct_calls
from vtdsim.traces.recording import Recording

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "legacy-cm-default"
PAGE = 0x1000
_line = iter(range(1, 1_000_000))


def mapped(iova, ts, *, cpu=0, pid=100, context=ev.TASK, irqs_off=False, size=PAGE,
           paddr=None):
    # By default pages lie top-down in physical memory, as the page allocator hands them out:
    # chunks of one scatter-list are physically discontiguous (iommu_map_sg merges the rest).
    return ev.Map(next(_line), "dd", pid, cpu, ts, context, irqs_off, iova, iova + size,
                  paddr if paddr is not None else 0x7100_0000 - iova % 0x100_0000, size)


def unmapped(iova, size, ts, *, cpu=1, pid=0, context=ev.HARDIRQ):
    return ev.Unmap(next(_line), "<idle>", pid, cpu, ts, context, True, iova, iova + size, size,
                    size)


def submitted(ts, *, cpu=0, pid=100, context=ev.TASK):
    return ev.QiSubmit(next(_line), "dd", pid, cpu, ts, context, True, "iotlb_inv", "dmar0",
                       0x500F2, 0xFFFF0000, 0, 0)


def calls(events):
    stats = CallStats()
    return [c for c in reconstruct_calls(events, stats)], stats


def shape(items):
    """Each item as ("map", iova, chunks) / ("unmap", iova) / ("qi", line)."""
    out = []
    for item in items:
        if type(item) is MapCall:
            out.append(("map", item.iova, len(item.chunks)))
        elif type(item) is UnmapCall:
            out.append(("unmap", item.iova))
        else:
            out.append(("qi", item.line))
    return out


def test_ascending_contiguous_chunks_are_one_call():
    items, stats = calls([mapped(0xFFFE0000, 10), mapped(0xFFFE1000, 11),
                          mapped(0xFFFE2000, 12)])
    assert shape(items) == [("map", 0xFFFE0000, 3)]
    assert items[0].size == 3 * PAGE and items[0].ts_us == 12
    assert (stats.map_calls, stats.map_sg_calls, stats.map_chunks) == (1, 1, 3)


def test_physically_contiguous_chunks_are_separate_calls():
    # __iommu_map_sg maps each maximal physically contiguous run with one __iommu_map: a chunk
    # continuing the previous one physically would have been part of it.
    first = mapped(0xFFFE0000, 10, paddr=0x5000_0000)
    items, _ = calls([first, mapped(0xFFFE1000, 11, paddr=0x5000_1000)])
    assert shape(items) == [("map", 0xFFFE0000, 1), ("map", 0xFFFE1000, 1)]


def test_a_call_starts_size_aligned():
    # iommu_dma_alloc_iova allocates the whole range size-aligned: two pages from 0xFFFE1000
    # (aligned to one page only) cannot be one call; from 0xFFFE2000 they can.
    items, _ = calls([mapped(0xFFFE1000, 10), mapped(0xFFFE2000, 11)])
    assert shape(items) == [("map", 0xFFFE1000, 1), ("map", 0xFFFE2000, 1)]
    items, _ = calls([mapped(0xFFFE2000, 20), mapped(0xFFFE3000, 21)])
    assert shape(items) == [("map", 0xFFFE2000, 2)]


def test_the_streams_other_line_ends_its_call():
    # Under caching mode iotlb_sync_map submits after the last chunk: a scatter-list mapped
    # right after it at the next IOVAs is another call.
    psi = submitted(12)
    items, _ = calls([mapped(0xFFFE0000, 10), mapped(0xFFFE1000, 11), psi,
                      mapped(0xFFFE2000, 13), mapped(0xFFFE3000, 14)])
    assert shape(items) == [("map", 0xFFFE0000, 2), ("qi", psi.line), ("map", 0xFFFE2000, 2)]


def test_a_stalled_cpu_does_not_split_its_call():
    # A vCPU the host did not run for 4 ms between two chunks of one scatter-list.
    items, _ = calls([mapped(0xFFFE0000, 10), mapped(0xFFFE1000, 4010)])
    assert shape(items) == [("map", 0xFFFE0000, 2)]


def test_top_down_allocations_are_separate_calls():
    items, stats = calls([mapped(0xFFFFF000, 10), mapped(0xFFFFE000, 11)])
    assert shape(items) == [("map", 0xFFFFF000, 1), ("map", 0xFFFFE000, 1)]
    assert stats.map_sg_calls == 0


def test_irqs_off_map_is_a_call_of_its_own():
    # virtio's per-entry dma_map_page under the virtqueue lock: IOVAs may continue upwards.
    items, _ = calls([mapped(0xFFFB7000, 10, irqs_off=True),
                      mapped(0xFFFB8000, 10, irqs_off=True)])
    assert shape(items) == [("map", 0xFFFB7000, 1), ("map", 0xFFFB8000, 1)]


def test_a_late_continuation_starts_a_new_call():
    items, stats = calls([mapped(0xFFFC0000, 10), mapped(0xFFFC1000, 11 + CONTINUE_GAP_US)])
    assert shape(items) == [("map", 0xFFFC0000, 1), ("map", 0xFFFC1000, 1)]
    assert stats.closed_by_gap == 1


def test_interrupt_on_the_same_cpu_does_not_end_the_call():
    # An unmap in hardirq on CPU 0 between two chunks of CPU 0's task: the task's call goes on,
    # and is placed after the unmap, at its last chunk.
    items, _ = calls([mapped(0xFFFE0000, 10), unmapped(0xFFF00000, PAGE, 11, cpu=0, pid=100),
                      mapped(0xFFFE1000, 12)])
    assert shape(items) == [("unmap", 0xFFF00000), ("map", 0xFFFE0000, 2)]


def test_unmap_of_a_pending_call_ends_it():
    # NVMe: the next request got the IOVAs just above the ones being unmapped.
    items, _ = calls([mapped(0xFFDC0000, 10), unmapped(0xFFDC0000, PAGE, 20),
                      mapped(0xFFDC1000, 30)])
    assert shape(items) == [("map", 0xFFDC0000, 1), ("unmap", 0xFFDC0000),
                            ("map", 0xFFDC1000, 1)]


def test_qi_submit_is_passed_through_after_the_call_it_follows():
    first, second = mapped(0xFFFE0000, 10), mapped(0xFFFE1000, 11)
    psi = submitted(12)
    items, _ = calls([first, second, psi, mapped(0xFFFD0000, 20)])
    assert shape(items) == [("map", 0xFFFE0000, 2), ("qi", psi.line), ("map", 0xFFFD0000, 1)]


def test_other_cpus_calls_keep_their_order():
    # CPU 1 unmaps between CPU 0's chunks: the unmap came first, the map call after it.
    items, _ = calls([mapped(0xFFFE0000, 10), unmapped(0xFFA00000, PAGE, 11),
                      mapped(0xFFFE1000, 12), unmapped(0xFFA10000, PAGE, 13)])
    assert shape(items) == [("unmap", 0xFFA00000), ("map", 0xFFFE0000, 2),
                            ("unmap", 0xFFA10000)]


def test_ignored_events_are_counted():
    other = ev.OtherEvent(1, "x", 1, 0, 5, ev.TASK, False, "attach_device_to_domain", "")
    _, stats = calls([other])
    assert stats.ignored == {"attach_device_to_domain": 1}
    assert any("attach_device_to_domain 1" in line for line in stats.lines())


def test_bundled_recording_calls_match_its_map_flushes():
    """Under caching mode each map call ends in one PSI and each unmap in one
    (linux-driver.md 3.9: 2,968 + 2,958 = 5,926 iotlb_inv)."""
    stats = CallStats()
    items = list(reconstruct_calls(Recording(EXAMPLE).guest_events(), stats))
    psis = sum(1 for i in items if type(i) is ev.QiSubmit and i.label == "iotlb_inv")
    assert (stats.map_calls, stats.unmap_calls, stats.map_chunks) == (2968, 2958, 5419)
    assert stats.map_calls + stats.unmap_calls == psis == 5926


def np_flush(ts, *, cpu=0, pid=100):
    """6.12's ``cache_tag_flush_range_np`` event, as its iotlb_sync_map traces it."""
    return ev.CacheTagFlush(next(_line), "dd", pid, cpu, ts, ev.TASK, True, "range_np", "dmar0",
                            "dmar0", 0, "iotlb", 5, 0, 0, 0, 1, 0)


def test_sync_map_events_end_calls_and_replace_the_gap():
    late = 10 + CONTINUE_GAP_US + 3000  # the task was preempted between two chunks
    items, stats = calls([mapped(0xFFFF0000, 1), np_flush(2),
                          mapped(0xFFFE0000, 10), mapped(0xFFFE1000, late),
                          np_flush(late + 1), mapped(0xFFFE2000, late + 2)])
    assert shape(items) == [("map", 0xFFFF0000, 1), ("map", 0xFFFE0000, 2),
                            ("map", 0xFFFE2000, 1)]
    assert stats.closed_by_gap == 0


def test_calls_marked_by_sync_map_events_still_start_size_aligned():
    # The trace marks every call's end, yet a chunk that would leave the call's start
    # misaligned is another call (iommu_dma_alloc_iova), and one continuing the last
    # physically too (iommu_map_sg merges such segments).
    items, _ = calls([mapped(0xFFFF0000, 1), np_flush(2),
                      mapped(0xFFFE1000, 10), mapped(0xFFFE2000, 11), np_flush(12),
                      mapped(0xFFFD0000, 20, paddr=0x5000_0000),
                      mapped(0xFFFD1000, 21, paddr=0x5000_1000), np_flush(22)])
    assert shape(items) == [("map", 0xFFFF0000, 1), ("map", 0xFFFE1000, 1),
                            ("map", 0xFFFE2000, 1), ("map", 0xFFFD0000, 1),
                            ("map", 0xFFFD1000, 1)]


def test_a_softirq_is_one_stream_whatever_task_it_interrupted():
    # The pid ftrace prints in a softirq is the interrupted task's: the CPU's softirq lines
    # are one stream, so the map call goes on across them and ends at the stream's next line.
    psi = submitted(13, pid=7, context=ev.SOFTIRQ)
    items, _ = calls([mapped(0xFFFE0000, 10, pid=5, context=ev.SOFTIRQ),
                      mapped(0xFFFE1000, 11, pid=6, context=ev.SOFTIRQ), psi])
    assert shape(items) == [("map", 0xFFFE0000, 2), ("qi", psi.line)]
