"""The scalable-mode IOTLB-hit fast path (``translation.bind_translate``) is exact: on random
sequences of page-table changes, PASID-entry rewrites, cache fills, evictions, every
invalidation granularity and translations from two requesters, a unit translating through
``unit.translate`` (or ``unit.translate_page`` then ``translate_missed``, as a device's DMA
to one page asks, ``twins.page_request``) ends every step in the same state - results, unit
stats, each cache's entries in LRU order and its counters, memory, pending faults - as a
twin unit translating every request through the full flow (``translation.access``)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import twins
from builders import Tables
from vtdsim.hardware import invalidation, translation
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.pasid_table import PGTT_FS, PGTT_PT, PGTT_SS
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import CACHE_NAMES, CacheConfig, RemappingUnit
from vtdsim.hardware.request import DmaRequest, sid_of
from vtdsim.hardware.translation import access, apply_fill, possible_fills

SIDS = (sid_of(0, 3, 0), sid_of(0, 3, 1))
DID = 2
PAGES = 4
INTERRUPT_PAGE = PAGES  # a page index that names an address in the interrupt range
PGTTS = (PGTT_SS, PGTT_FS, PGTT_PT)
# Each requester's RID_PASID: the second's lies beyond a PDTS-0 PASID directory (fault 0x46).
RID_PASIDS = dict(zip(SIDS, (0, 128 * 64 + 5), strict=True))
CAPS = (get_preset("server-sm"), get_preset("server-sm").with_(cm=1), get_preset("qemu100-sm"))


def iova_of(page: int) -> int:
    if page == INTERRUPT_PAGE:
        return 0xFEE0_0000
    return (page % 2) << 12 | (page // 2) << 21


class World:
    """A scalable-mode unit whose two requesters share domain ``DID`` on their RID_PASID."""

    def __init__(self, caps, config: CacheConfig):
        self.unit = RemappingUnit(caps, PhysicalMemory(), cache_config=config)
        self.t = Tables(self.unit.memory)
        self.unit.root_table_addr, self.unit.ttm = self.t.rta, 1
        self.unit.translation_enabled = True
        self.ss, self.fs = self.t.ss_table(4), self.t.fs_table(4)
        for sid in SIDS:
            self.t.set_sm_context(sid, pdts=1, rid_pasid=RID_PASIDS[sid])
            self.set_pasid(sid, PGTT_SS, True)
        for page in range(PAGES):  # mapped from the start (read-only, clean, writable, dirty)
            self.map(page, page, page)

    def set_context(self, sid: int, pdts: int, present: bool) -> None:
        self.t.set_sm_context(sid, p=int(present), pdts=pdts, rid_pasid=RID_PASIDS[sid],
                              pasid_dir_ptr=self.t.pasid_dir(sid))

    def set_pasid(self, sid: int, pgtt: int, present: bool) -> None:
        self.t.set_pasid_entry(sid, RID_PASIDS[sid], p=int(present), pgtt=pgtt, did=DID,
                               aw=2, ssptptr=self.ss.root, fsptptr=self.fs.root, pwsnp=1)

    def map(self, page: int, target: int, flags: int) -> None:
        hpa = 0x4000_0000 + (target << 12)
        self.ss.map(iova_of(page), hpa, r=1, w=flags & 1)
        self.fs.map(iova_of(page), hpa, rw=flags & 1, d=flags >> 1 & 1)

    def unmap(self, page: int) -> None:
        for table in (self.ss, self.fs):
            self.t.write(table.pte_addr(iova_of(page)), 0)

    def invalidate(self, kind: int, page: int, sid: int) -> None:
        unit, addr, pasid = self.unit, iova_of(page), RID_PASIDS[sid]
        ops = (
            lambda: invalidation.iotlb_page(unit, DID, addr, page % 2, 0),
            lambda: invalidation.iotlb_domain(unit, DID),
            lambda: invalidation.iotlb_global(unit),
            lambda: invalidation.piotlb_pasid(unit, DID, pasid),
            lambda: invalidation.piotlb_page(unit, DID, pasid, addr, 0, 0),
            lambda: invalidation.pasid_cache_pasid(unit, DID, pasid),
            lambda: invalidation.pasid_cache_global(unit),
            lambda: invalidation.context_cache_global(unit),
            lambda: invalidation.context_cache_device(unit, DID, sid, 0),
        )
        ops[kind % len(ops)]()

    def state(self) -> tuple:
        unit = self.unit
        caches = tuple((name, getattr(unit, name).items(), getattr(unit, name).stats.as_dict())
                       for name in CACHE_NAMES)
        return (dict(unit.stats), caches, unit.memory.snapshot(), unit.faults.pending())


OPS = st.lists(
    st.tuples(
        st.sampled_from(["map", "unmap", "translate", "translate", "translate", "pasid",
                         "context", "ttm", "fill", "evict", "invalidate"]),
        st.integers(0, PAGES),
        st.integers(0, 15),
        st.integers(0, 3),
    ),
    min_size=8,
    max_size=60,
)
CONFIGS = st.builds(
    CacheConfig, context=st.integers(1, 3), pasid=st.integers(1, 3), iotlb=st.integers(1, 10),
    pscache=st.integers(1, 6), iotlb_flush_when_full=st.booleans(),
    iotlb_tag_sid=st.booleans(), cache_negative=st.booleans())


def translate(w: World, sid: int, page: int, write: bool, fast: bool) -> list:
    """Four requests to the page - from ``sid``, the other requester, ``sid`` with the other
    access type, ``sid`` again - through ``unit.translate`` iff ``fast``, in scalable mode
    only (the legacy fast path does not refresh the context-cache)."""
    other = SIDS[1 - SIDS.index(sid)]
    out = []
    for who, w_ in ((sid, write), (other, write), (sid, not write), (sid, write)):
        if fast and w.unit.ttm == 1:
            out.append(twins.page_request(w.unit, who, iova_of(page), w_) if w.page
                       else w.unit.translate(who, iova_of(page), w_))
        else:
            out.append(access(w.unit, DmaRequest(who, iova_of(page), w_)))
    return out


def apply(w: World, op: str, page: int, n: int, flags: int, fast: bool):
    """One step on ``w``; a translation's results.  A rewrite of a PASID or context entry
    is followed (``n & 8``) by the invalidation of that cache alone, leaving the IOTLB
    stale, as a driver's teardown is for a moment."""
    sid = SIDS[flags & 1]
    if op == "translate":
        return translate(w, sid, page, bool(flags & 2), fast)
    if op == "map" and page != INTERRUPT_PAGE:
        w.map(page, n, flags)
    elif op == "unmap" and page != INTERRUPT_PAGE:
        w.unmap(page)
    elif op == "pasid":
        w.set_pasid(sid, PGTTS[n % len(PGTTS)], present=not n & 4)
        if n & 8:
            invalidation.pasid_cache_pasid(w.unit, DID, RID_PASIDS[sid])
    elif op == "context":
        w.set_context(sid, n & 1, present=not n & 2)
        if n & 8:
            invalidation.context_cache_device(w.unit, DID, sid, 0)
    elif op == "ttm":  # SRTP into the other mode without a context-cache invalidation
        w.unit.ttm ^= 1
    elif op == "fill":
        fills = possible_fills(w.unit, sid, iova_of(page))
        if fills:
            apply_fill(w.unit, fills[n % len(fills)])
    elif op == "evict":
        twins.evict_nth(w.unit, n)
    elif op == "invalidate":
        w.invalidate(n, page, sid)
    return None


def run_twins(caps, config: CacheConfig, ops, page: bool = False) -> None:
    def make() -> World:
        world = World(caps, config)
        world.page = page  # the fast world asks translate_page (twins.page_request)
        return world

    twins.run_twins(make, apply, ops)


@settings(max_examples=300, deadline=None)
@given(caps=st.sampled_from(CAPS), config=CONFIGS, ops=OPS, page=st.booleans())
def test_fast_path_matches_the_full_flow(caps, config, ops, page):
    run_twins(caps, config, ops, page)


CM = CAPS[1]
SCENARIOS = {  # each check of the fast path, with the cached state that makes it matter
    "write to a read-only page": (CAPS[0], [("translate", 0, 0, 0)] * 2),
    "PASID entry now pass-through": (CAPS[0], [("translate", 3, 0, 0), ("pasid", 0, 8, 0),
                                               ("translate", 3, 0, 0)]),
    "RID_PASID beyond a shrunk directory": (CAPS[0], [("translate", 3, 0, 1),
                                                      ("context", 0, 8, 1),
                                                      ("translate", 3, 0, 1)]),
    "PASID entry cached not present": (CM, [("translate", 3, 0, 0), ("pasid", 0, 12, 0),
                                            ("translate", 3, 0, 0)]),
    "context entry cached not present": (CM, [("translate", 3, 0, 0), ("context", 0, 10, 0),
                                              ("translate", 3, 0, 0)]),
}


@pytest.mark.parametrize("page", [False, True])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fast_path_matches_the_full_flow_on(name, page):
    caps, ops = SCENARIOS[name]
    run_twins(caps, CacheConfig(), ops, page)


@pytest.mark.parametrize("tag_sid", [False, True])
def test_fast_path_is_taken_and_counts_like_the_flow(tag_sid, monkeypatch):
    """A repeated hit is answered without the full flow (the cached object itself) and
    refreshes the context-, PASID- and IOTLB entries as the flow's lookups do."""
    w = World(CAPS[0], CacheConfig(context=2, pasid=2, iotlb_tag_sid=tag_sid))
    w.unit.translate(SIDS[0], iova_of(3), True)  # walks and fills
    cached = w.unit.translate(SIDS[0], iova_of(3), True)
    w.unit.translate(SIDS[1], iova_of(3), True)  # the other requester: LRU order changes
    hits = (w.unit.context_cache.stats.hit, w.unit.pasid_cache.stats.hit,
            w.unit.iotlb.stats.hit)

    def unreachable(*_args, **_kw):
        raise AssertionError("the full flow ran")

    monkeypatch.setattr(translation, "access", unreachable)
    monkeypatch.setattr(translation, "_run", unreachable)
    assert w.unit.translate(SIDS[0], iova_of(3) + 8, True) is cached
    assert (w.unit.context_cache.stats.hit, w.unit.pasid_cache.stats.hit,
            w.unit.iotlb.stats.hit) == tuple(h + 1 for h in hits)
    assert w.unit.context_cache.keys()[-1] == SIDS[0]
    assert w.unit.pasid_cache.keys()[-1] == (SIDS[0], RID_PASIDS[SIDS[0]])
