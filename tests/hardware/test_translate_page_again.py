"""``unit.translate_page_again()`` - ``translate_page``'s last request once more, nothing having
reached the unit since - is exactly that request made again: on twin units, one asking
``translate_page`` a second time and one asking ``translate_page_again``, the answers and the
whole observable state (unit stats, each cache's entries in LRU order and its counters) are
equal after every request; in scalable mode after an IOTLB hit and after a remembered miss
(the page's entry evicted, answered from ``miss.again``), with requester-tagged IOTLBs too,
and in legacy mode after its hit (``legacy_hit``: the IOTLB's counter alone)."""

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


@pytest.mark.parametrize("name", list(UNITS))
def test_again_is_the_same_request_again(name):
    twice, again = (_unit(*UNITS[name]) for _ in range(2))
    answered = 0
    # Laps over more pages than a small IOTLB holds, from each requester, for each access
    # type; each request repeated twice right away - through translate_page_again when the
    # request before was answered by translate_page, as DmaWorld.page_dma does.
    requests = [(sid, iova, write) for write in (True, False) for sid in (SID, OTHER)
                for _lap in range(3) for iova in PAGES]
    for request in requests:
        last = _page(twice, *request)
        assert _page(again, *request) == last
        assert _state(twice) == _state(again), request
        for _ in range(2):
            repeat = _page(twice, *request)
            if last[0] == "page":
                answered += 1
                again.translate_page_again()
                assert repeat == last
            else:
                assert _page(again, *request) == repeat
            assert _state(twice) == _state(again), (request, last)
            last = repeat
    assert answered  # the comparison covered translate_page_again


def test_remembered_misses_are_repeated():
    """The 1-entry IOTLB's run answers remembered misses (else it would test hits only)."""
    unit = _unit(*UNITS["scalable, first stage, 1-entry IOTLB (remembered misses)"])
    for iova in PAGES * 2:
        _page(unit, SID, iova, True)
    misses = unit.stats["iotlb_miss"]
    assert _page(unit, SID, PAGES[0], True)[0] == "page"
    assert unit.stats["iotlb_miss"] == misses + 1
