"""The remapping unit as one piece: construction, MMIO dispatch, tracing, the queue behind IQT,
cache freedoms, and a DMA through legacy tables with faults recorded (spec ch. 3, 6, 7, 10)."""

import copy
import pickle
from collections import Counter

import pytest

from vtdsim.devices.endpoint import Endpoint
from vtdsim.errors import BadInput
from vtdsim.hardware.caches.context_cache import ContextCacheEntry
from vtdsim.hardware.descriptors import encode
from vtdsim.hardware.faults import FaultReason
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import CACHE_NAMES, CacheConfig, RemappingUnit, UnitStats
from vtdsim.hardware.request import DmaRequest
from vtdsim.hardware.root_table import CONTEXT_ENTRY, ROOT_ENTRY
from vtdsim.hardware.second_stage import SS_PTE

GCMD, RTADDR, IQH, IQT, IQA, ICS, IECTL = 0x18, 0x20, 0x80, 0x88, 0x90, 0x9C, 0xA0
QUEUE, STATUS = 0x10000, 0x20000


def make_unit(preset="qemu72-legacy-cm", **kw):
    return RemappingUnit(get_preset(preset), PhysicalMemory(), **kw)


def test_construction_wires_write_buffer_and_state():
    unit = make_unit()
    assert not unit.memory.write_buffer and not unit.translation_enabled
    rwbf = RemappingUnit(get_preset("qemu72-legacy").with_(rwbf=1), PhysicalMemory())
    assert rwbf.memory.write_buffer
    assert unit.iotlb.capacity == CacheConfig().iotlb
    assert repr(unit).startswith("RemappingUnit(dmar0, ver 1:0 cap d2008c22260286")


def test_unit_stats_are_a_counter_with_dicts_item_store():
    """UnitStats answers as the Counter it replaced: a missing key reads 0, arithmetic,
    update, copy, equality, pickling and deepcopy (the checker copies units) - only its
    store is dict's (so ``del`` of a missing key raises, as on a dict)."""
    stats = make_unit().stats
    assert type(stats) is UnitStats and isinstance(stats, Counter)
    ops = [("walks", 1), ("iotlb_miss", 2), ("walks", 3), ("faults", 0)]
    plain = Counter()
    for key, n in ops:
        stats[key] += n
        plain[key] += n
    assert stats == plain and dict(stats) == dict(plain) and stats["never"] == 0
    before = stats.copy()
    assert type(before) is UnitStats and before == stats and before is not stats
    stats.update({"walks": 2}, faults=1)
    plain.update({"walks": 2}, faults=1)
    assert stats == plain and stats - before == plain - Counter(before)
    assert stats + before == plain + Counter(before) and stats.most_common() == plain.most_common()
    for clone in (copy.deepcopy(stats), pickle.loads(pickle.dumps(stats))):
        assert type(clone) is UnitStats and clone == stats
    del stats["walks"]
    with pytest.raises(KeyError):  # dict's __delitem__: the one that keeps the store in C
        del stats["walks"]


def test_bad_qi_mode_is_bad_input():
    with pytest.raises(BadInput, match="qi_mode"):
        make_unit(qi_mode="later")


def test_listeners_see_ignored_accesses():
    unit = make_unit()
    seen = []
    unit.listeners.append(lambda u, event, fields: seen.append((u.name, event, fields)))
    unit.mmio_write(0x18, 2, 0xFFFF)
    assert unit.mmio_read(0x1234, 4) == 0
    assert seen == [
        ("dmar0", "mmio_write_ignored", {"offset": 0x18, "size": 2, "value": 0xFFFF}),
        ("dmar0", "mmio_read_ignored", {"offset": 0x1234, "size": 4}),
    ]
    assert unit.stats["mmio_writes"] == 1 and unit.stats["mmio_reads"] == 1


def enable_qi(unit):
    unit.mmio_write(IQT, 4, 0)
    unit.mmio_write(IQA, 8, QUEUE)
    unit.mmio_write(GCMD, 4, 1 << 26)


def submit(unit, *descs):
    """Write descriptors at the tail (CPU stores) and ring IQT, as qi_submit_sync does."""
    tail = unit.regs.get("IQT", "qt") << 4
    for qws in descs:
        for i, qw in enumerate(qws[:2]):
            unit.memory.cpu_store(QUEUE + tail + 8 * i, qw, 8)
        tail += 16
    unit.mmio_write(IQT, 4, tail)


def wait_desc(**kw):
    return encode("inv_wait", sw=1, status_data=2, status_addr=STATUS, **kw)


def test_iqt_write_runs_the_queue_in_sync_mode():
    unit = make_unit()
    enable_qi(unit)
    unit.context_cache.fill(8, ContextCacheEntry(sid=8, present=True, raw=1, did=1))
    submit(unit, encode("cc_inv", g=1), wait_desc())
    assert unit.memory.cpu_load(STATUS, 8) & 0xFFFFFFFF == 2
    assert unit.mmio_read(IQH, 8) == 0x20 and len(unit.context_cache) == 0


def test_async_mode_processes_one_descriptor_per_step():
    unit = make_unit(qi_mode="async")
    enable_qi(unit)
    submit(unit, encode("iotlb_inv", g=1), wait_desc())
    assert unit.mmio_read(IQH, 8) == 0
    assert unit.qi_step() and unit.mmio_read(IQH, 8) == 0x10
    assert unit.qi_step() and not unit.qi_step()
    assert unit.memory.cpu_load(STATUS, 8) & 0xFFFFFFFF == 2


def test_bad_descriptor_raises_iqe_through_the_recorder():
    unit = make_unit()
    enable_qi(unit)
    submit(unit, (0xF, 0, 0, 0))  # type 15: invalid type
    assert unit.regs.get("FSTS", "iqe") == 1 and unit.regs.get("IQERCD", "iqei") == 3
    assert unit.mmio_read(IQH, 8) == 0


def test_completion_event_held_while_masked_then_sent_on_unmask():
    unit = make_unit()
    enable_qi(unit)
    submit(unit, encode("inv_wait", if_=1, status_data=0, status_addr=0))
    assert unit.mmio_read(ICS, 4) == 1
    assert unit.mmio_read(IECTL, 4) == 0xC0000000  # IM | IP
    unit.mmio_write(IECTL, 4, 0)
    assert unit.stats["completion_interrupts"] == 1 and unit.mmio_read(IECTL, 4) == 0
    unit.mmio_write(ICS, 4, 1)
    assert unit.mmio_read(ICS, 4) == 0


def test_cached_and_evict():
    unit = make_unit()
    unit.context_cache.fill(8, ContextCacheEntry(sid=8, present=True, raw=1, did=1))
    assert unit.cached() == [("context_cache", 8)]
    assert unit.evict("context_cache", 8) and unit.cached() == []
    assert not unit.evict("iotlb", (1, 0, 1, 0))
    with pytest.raises(BadInput, match="no cache"):
        unit.evict("tlb", 0)
    assert CACHE_NAMES == ("context_cache", "pasid_cache", "iotlb", "pscache")


def test_attach_endpoint_registers_by_sid():
    unit = make_unit()
    ep = Endpoint(0x100, ats=True)
    ep.connect(unit)
    assert unit.endpoints == {0x100: ep}


# -- DMA through real legacy tables ----------------------------------------------------------------
ROOT, CTX, PT3, PT2, PT1, PAGE = 0x100000, 0x101000, 0x102000, 0x103000, 0x104000, 0x200000
SID, DID, IOVA = 0x0100, 5, 0xFFFF_F000


def build_legacy_tables(memory):
    """Bus 1 -> context for devfn 0 -> 3-level SS table mapping IOVA to PAGE (read-only)."""
    memory.write_qword(ROOT + 16 * 1, ROOT_ENTRY.encode(p=1, ctp=CTX >> 12))
    ce = CONTEXT_ENTRY.encode(p=1, tt=0, ssptptr=PT3 >> 12, aw=1, did=DID)
    lo, hi = CONTEXT_ENTRY.to_qwords(ce)
    memory.write_qword(CTX, lo)
    memory.write_qword(CTX + 8, hi)
    memory.write_qword(PT3 + 8 * ((IOVA >> 30) & 511), SS_PTE.encode(r=1, w=1, addr=PT2 >> 12))
    memory.write_qword(PT2 + 8 * ((IOVA >> 21) & 511), SS_PTE.encode(r=1, w=1, addr=PT1 >> 12))
    memory.write_qword(PT1 + 8 * ((IOVA >> 12) & 511), SS_PTE.encode(r=1, addr=PAGE >> 12))
    memory.dma_write(PAGE, b"payload!")


def translating_unit():
    unit = make_unit()
    build_legacy_tables(unit.memory)
    unit.mmio_write(RTADDR, 8, ROOT)
    unit.mmio_write(GCMD, 4, 1 << 30)
    unit.mmio_write(GCMD, 4, 1 << 31)
    return unit


def test_dma_read_through_tables():
    unit = translating_unit()
    assert unit.dma_read(DmaRequest(SID, IOVA), 8) == b"payload!"
    entry = unit.translate(SID, IOVA)
    assert entry and entry.hpa | (IOVA & entry.offset_mask) == PAGE


def test_dma_write_to_read_only_page_faults_and_is_recorded():
    unit = translating_unit()
    result = unit.dma_write(DmaRequest(SID, IOVA + 4, write=True), b"xx")
    assert not result and result.reason == FaultReason.WRITE
    assert unit.memory.dma_read(PAGE, 8) == b"payload!"
    [(index, recorded)] = unit.faults.pending()
    assert index == 0 and recorded.sid == SID and recorded.write
    assert recorded.addr == IOVA and recorded.reason == FaultReason.WRITE
