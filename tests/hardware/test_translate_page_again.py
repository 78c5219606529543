"""``unit.translate_page_again()`` - ``translate_page``'s last request once more, nothing having
reached the unit since - is exactly that request made again, and ``translate_page`` with
``known`` of another page in the same circumstances is ``translate_page`` without it: on twin
units, one always asking ``translate_page``, the answers and the whole observable state (unit
stats, each cache's entries in LRU order and its counters) are equal after every request; in
scalable mode after IOTLB hits and remembered misses (the page's entry evicted, answered from
``miss.again``), with requester-tagged IOTLBs too, and in legacy mode (``legacy_hit``: the
IOTLB's counter alone)."""

import copy

import pytest

from builders import Tables
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.pasid_table import PGTT_FS, PGTT_SS
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import CACHE_NAMES, CacheConfig, RemappingUnit
from vtdsim.hardware.request import sid_of

SID, OTHER = sid_of(0, 3, 0), sid_of(0, 3, 1)
DID = 2
PAGES = (0x0, 0x1000, 0x20_0000)  # two pages under one PDE, one under another


def _unit(preset: str, config: CacheConfig, scalable: bool, pgtt: int) -> RemappingUnit:
    unit = RemappingUnit(get_preset(preset), PhysicalMemory(), cache_config=config)
    t = Tables(unit.memory)
    unit.root_table_addr, unit.ttm, unit.translation_enabled = t.rta, int(scalable), True
    if scalable:
        ss, fs = t.ss_table(4), t.fs_table(4)
        for sid in (SID, OTHER):
            t.set_sm_context(sid)
            t.set_pasid_entry(sid, 0, pgtt=pgtt, did=DID, aw=2, ssptptr=ss.root,
                              fsptptr=fs.root, pwsnp=1)
        for k, iova in enumerate(PAGES):
            ss.map(iova, 0x4000_0000 + (k << 12))
            fs.map(iova, 0x4000_0000 + (k << 12), d=1)
    else:
        pt = t.ss_table(3)
        for sid in (SID, OTHER):
            t.set_context(sid, aw=1, did=DID, ssptptr=pt.root)
        for k, iova in enumerate(PAGES):
            pt.map(iova, 0x4000_0000 + (k << 12))
    return unit


def _state(unit: RemappingUnit) -> tuple:
    caches = tuple((name, getattr(unit, name).items(), getattr(unit, name).stats.as_dict())
                   for name in CACHE_NAMES)
    return dict(unit.stats), caches


def _page(unit: RemappingUnit, sid: int, iova: int, write: bool):
    """As ``DmaWorld.page_dma`` asks: ``translate_page``, else the full request."""
    entry = unit.translate_page(sid, iova, write)
    return ("page", entry) if entry is not None else ("flow", unit.translate(sid, iova, write))


# (preset, cache config, scalable, PGTT): each kind of answer translate_page gives
UNITS = {
    "scalable, first stage": ("server-sm", CacheConfig(), True, PGTT_FS),
    "scalable, first stage, 1-entry IOTLB (remembered misses)":
        ("server-sm", CacheConfig(iotlb=1), True, PGTT_FS),
    "scalable, first stage, requester-tagged IOTLB":
        ("server-sm", CacheConfig(iotlb=2, iotlb_tag_sid=True), True, PGTT_FS),
    "scalable, second stage": ("server-sm", CacheConfig(iotlb=2), True, PGTT_SS),
    "legacy": ("qemu72-legacy", CacheConfig(iotlb=2), False, 0),
}


def _next(unit: RemappingUnit, sid: int, iova: int, write: bool):
    """As ``DmaWorld.page_dma`` asks after an answer for ``sid`` with nothing in between:
    ``translate_page`` with ``known``, else the full request."""
    entry = unit.translate_page(sid, iova, write, known=True)
    return ("page", entry) if entry is not None else ("flow", unit.translate(sid, iova, write))


@pytest.mark.parametrize("name", list(UNITS))
def test_again_and_next_are_translate_page(name):
    """Twin units, one always asking ``translate_page``, the other ``translate_page_again``
    for the same request and ``translate_page(known=True)`` for another page whenever the request
    before was ``sid``'s answered by the unit's cached path - as ``DmaWorld.page_dma`` does."""
    plain, fast = (_unit(*UNITS[name]) for _ in range(2))
    used = {"again": 0, "next": 0}
    # Laps over more pages than a small IOTLB holds, from each requester, for each access
    # type; each request repeated twice right away.
    requests = [(sid, iova, write) for write in (True, False) for sid in (SID, OTHER)
                for _lap in range(3) for iova in PAGES for _ in range(3)]
    before = None  # the request before and how the fast unit answered it
    for request in requests:
        expected = _page(plain, *request)
        if before is None or before[1] != "page" or before[0][0] != request[0]:
            answer = _page(fast, *request)
        elif before[0] == request:
            used["again"] += 1
            fast.translate_page_again()
            answer = expected
        else:
            used["next"] += 1
            answer = _next(fast, *request)
        assert answer == expected, request
        assert _state(plain) == _state(fast), (request, before)
        before = request, answer[0]
    assert all(used.values())  # the comparison covered both


def _deferred(unit: RemappingUnit, request, before):
    """As ``DmaWorld.page_dma`` asks: the cached path's counters left pending."""
    sid, iova, write = request
    if before is not None and before[1] == "page" and before[0] == request:
        unit.pending_answers.repeats += 1  # translate_page_again, left to settle
        return "again"
    known = before is not None and before[1] == "page" and before[0][0] == sid
    entry = unit.translate_page(sid, iova, write, True, known, False)
    return ("page", entry) if entry is not None else ("flow", unit.translate(sid, iova, write))


@pytest.mark.parametrize("name", list(UNITS))
def test_pending_counters_settle_to_counting_at_once(name):
    """``counted=False``: twin units asked the same requests, one counting every answer at
    once, the other leaving the cached path's counters pending and settling every fifth
    request (so up to four answers of each kind wait): the answers and the caches' entries
    in LRU order always equal, and every counter once settled - also on a copy, which
    settles the original first.  Legacy mode counts its answers at once either way, its
    repeats (``pending.repeats``) at settle as scalable mode does."""
    plain, fast = (_unit(*UNITS[name]) for _ in range(2))
    requests = [(sid, iova, write) for write in (True, False) for sid in (SID, OTHER)
                for _lap in range(3) for iova in PAGES for _ in range(3)]
    before, held = None, 0
    for k, request in enumerate(requests):
        expected = _page(plain, *request)
        answer = _deferred(fast, request, before)
        assert answer in (expected, "again"), request
        pending = fast.pending_answers
        held = max(held, pending.hits + pending.remembered + pending.repeats)
        if k % 5 == 4:
            fast.settle_answers()
            assert _state(plain) == _state(fast), request
        else:
            assert [getattr(plain, c).items() for c in CACHE_NAMES] == \
                [getattr(fast, c).items() for c in CACHE_NAMES], request
        before = request, expected[0]
    assert _state(plain) == _state(copy.deepcopy(fast))
    assert held > 1  # answers did wait
    pending = fast.pending_answers
    assert pending.hits == pending.remembered == pending.repeats == 0


def test_remembered_misses_are_repeated():
    """The 1-entry IOTLB's run answers remembered misses (else it would test hits only)."""
    unit = _unit(*UNITS["scalable, first stage, 1-entry IOTLB (remembered misses)"])
    for iova in PAGES * 2:
        _page(unit, SID, iova, True)
    misses = unit.stats["iotlb_miss"]
    assert _page(unit, SID, PAGES[0], True)[0] == "page"
    assert unit.stats["iotlb_miss"] == misses + 1
