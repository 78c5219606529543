"""The translation caches: LRU base, and each cache's invalidation granularities."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtdsim.errors import ModelError
from vtdsim.hardware.caches import (
    ContextCache,
    ContextCacheEntry,
    Iotlb,
    IotlbEntry,
    LruCache,
    PagingStructureCache,
    PasidCache,
    PasidCacheEntry,
    PscEntry,
)
from vtdsim.hardware.caches.base import psi_range

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30


# -- LruCache ----------------------------------------------------------------------------------
def test_lru_replaces_least_recently_used_and_lookup_refreshes():
    c = LruCache("t", 3)
    for k in "abc":
        assert c.fill(k, k.upper()) is None
    assert c.lookup("a") == "A"  # a becomes most recent
    assert c.fill("d", "D") == "b"
    assert c.keys() == ["c", "a", "d"]
    assert "b" not in c and len(c) == 3
    assert c.stats.replaced == 1 and c.stats.fill == 4


def test_lru_peek_does_not_refresh_or_count():
    c = LruCache("t", 2)
    c.fill("a", 1)
    c.fill("b", 2)
    assert c.peek("a") == 1
    assert c.fill("c", 3) == "a"
    assert c.stats.hit == 0 and c.stats.miss == 0


def test_lru_counts_hits_and_misses():
    c = LruCache("t", 2)
    c.fill("a", 1)
    assert c.lookup("a") == 1
    assert c.lookup("zz") is None
    assert c.stats.as_dict()["hit"] == 1 and c.stats.miss == 1


def test_refill_of_cached_key_replaces_entry_without_eviction():
    c = LruCache("t", 2)
    c.fill("a", 1)
    c.fill("b", 2)
    assert c.fill("a", 10) is None
    assert c.items() == [("b", 2), ("a", 10)]


def test_capacity_zero_never_caches():
    c = LruCache("t", 0)
    assert c.fill("a", 1) is None
    assert len(c) == 0 and c.lookup("a") is None


def test_negative_capacity_is_a_model_error():
    with pytest.raises(ModelError):
        LruCache("t", -1)


def test_evict_invalidate_where_clear():
    c = LruCache("t", 8)
    for i in range(6):
        c.fill(i, i * 10)
    assert c.evict(3) and not c.evict(3)
    assert c.invalidate_where(lambda k, e: e >= 40) == 2
    assert c.keys() == [0, 1, 2]
    assert c.invalidate_where(lambda k, e: True, keys=[2, 99]) == 1
    assert c.clear() == 2 and len(c) == 0
    assert c.stats.evicted == 1 and c.stats.invalidated == 5


def test_psi_range_aligns_address_down():
    assert psi_range(0xFFF8_0000, 5) == (0xFFF8_0000, 128 * 1024)
    assert psi_range(0x3000, 1) == (0x2000, 0x2000)


# -- context-cache -----------------------------------------------------------------------------
def _cc(sid, did=None, present=True, scalable=False):
    return ContextCacheEntry(sid=sid, present=present, raw=0, did=did, scalable=scalable)


def _filled_context_cache(*entries):
    cc = ContextCache(16)
    for e in entries:
        cc.fill(e.sid, e)
    return cc


def test_context_domain_selective_drops_tagged_legacy_entries_only():
    cc = _filled_context_cache(_cc(0x08, did=5), _cc(0x10, did=6), _cc(0x18, did=5))
    assert cc.invalidate_domain(5) == 2
    assert cc.keys() == [0x10]


def test_context_domain_selective_drops_every_scalable_entry():
    cc = _filled_context_cache(_cc(0x08, scalable=True), _cc(0x10, did=6))
    assert cc.invalidate_domain(9) == 1
    assert cc.keys() == [0x10]


@pytest.mark.parametrize(
    "fm, dropped",
    [
        (0, [0x0A]),
        (1, [0x0A, 0x0E]),  # SID bit 2 ignored
        (2, [0x08, 0x0A, 0x0C, 0x0E]),  # bits 2:1
        (3, [0x08, 0x09, 0x0A, 0x0C, 0x0E, 0x0F]),  # bits 2:0
    ],
)
def test_context_device_selective_function_mask(fm, dropped):
    sids = [0x08, 0x09, 0x0A, 0x0C, 0x0E, 0x0F, 0x10, 0x12]
    cc = _filled_context_cache(*[_cc(s, did=3) for s in sids])
    assert cc.invalidate_device(3, 0x0A, fm) == len(dropped)
    assert cc.keys() == [s for s in sids if s not in dropped]


def test_context_device_selective_needs_the_legacy_did():
    cc = _filled_context_cache(_cc(0x08, did=3))
    assert cc.invalidate_device(4, 0x08, 0) == 0
    assert cc.invalidate_device(3, 0x08, 0) == 1


def test_context_device_selective_ignores_did_in_scalable_mode():
    cc = _filled_context_cache(_cc(0x08, scalable=True))
    assert cc.invalidate_device(1234, 0x08, 0) == 1


def test_negative_legacy_context_entry_is_tagged_did_0():
    # Caching mode: a not-present entry is tagged DID 0, which is why Linux flushes with DID 0
    # after making a context entry present (reference section 12).
    cc = _filled_context_cache(_cc(0x08, present=False))
    assert cc.invalidate_device(5, 0x08, 0) == 0
    assert cc.invalidate_device(0, 0x08, 0) == 1


def test_context_global():
    cc = _filled_context_cache(_cc(1, did=1), _cc(2, scalable=True))
    assert cc.invalidate_global() == 2 and len(cc) == 0


# -- PASID-cache -------------------------------------------------------------------------------
def _pc(sid, pasid, did, present=True):
    return PasidCacheEntry(sid=sid, pasid=pasid, did=did, present=present, pgtt=2, raw=0)


def _filled_pasid_cache():
    pc = PasidCache(16)
    for e in (_pc(8, 0, 1), _pc(8, 5, 1), _pc(16, 5, 1), _pc(24, 5, 2), _pc(32, 7, 2, False)):
        pc.fill((e.sid, e.pasid), e)
    return pc


def test_pasid_cache_pasid_selective_spans_source_ids():
    pc = _filled_pasid_cache()
    assert pc.invalidate_pasid(1, 5) == 2
    assert pc.keys() == [(8, 0), (24, 5), (32, 7)]


def test_pasid_cache_domain_selective_and_negative_entries():
    pc = _filled_pasid_cache()
    assert pc.invalidate_domain(2) == 2  # the negative entry carries the DID it was stored with
    assert pc.keys() == [(8, 0), (8, 5), (16, 5)]
    assert pc.invalidate_global() == 3


# -- IOTLB -------------------------------------------------------------------------------------
def _io(did, iova, level=1, pasid=0, stage="ss", present=True, global_=False):
    size = 1 << (12 + 9 * (level - 1))
    return IotlbEntry(
        did=did, pasid=pasid, iova_base=iova & ~(size - 1), level=level,
        hpa=0x8000_0000 + (iova & ~(size - 1)), read=True, write=True, exe=False, snp=False,
        stage=stage, present=present, fault_reason=0 if present else 6, global_=global_,
    )


def _iotlb(*entries, capacity=64):
    t = Iotlb(capacity)
    for e in entries:
        t.fill_entry(e)
    return t


def test_iotlb_entry_geometry_and_key():
    e = _io(1, 0x4020_0000, level=2)
    assert e.size == M2 and e.offset_mask == M2 - 1
    assert e.key == (1, 0, 2, 0x4020_0000 >> 21)


def test_iotlb_lookup_probes_4k_2m_1g():
    t = _iotlb(_io(1, 0x1000), _io(1, 0x4020_0000, level=2), _io(1, 0x8000_0000, level=3))
    assert t.lookup_iova(1, 0, 0x1FFF).level == 1
    assert t.lookup_iova(1, 0, 0x403F_FFFF).level == 2
    assert t.lookup_iova(1, 0, 0xBFFF_F000).level == 3
    assert t.lookup_iova(1, 0, 0x2000) is None
    assert t.lookup_iova(2, 0, 0x1000) is None  # other DID
    assert t.lookup_iova(1, 3, 0x1000) is None  # other PASID
    assert (t.stats.hit, t.stats.miss) == (3, 3)


def test_iotlb_lookup_refreshes_recency():
    t = _iotlb(_io(1, 0x1000), _io(1, 0x2000), capacity=2)
    t.lookup_iova(1, 0, 0x1000)
    assert t.fill_entry(_io(1, 0x3000)) == (1, 0, 1, 2)


def test_iotlb_negative_entries_are_stored_and_invalidated():
    t = _iotlb(_io(0, 0x5000, present=False))
    assert t.lookup_iova(0, 0, 0x5000).fault_reason == 6
    t.invalidate_page(0, 0x5000, 0)
    assert len(t) == 0


def test_iotlb_dsi_scope_is_did_every_pasid_but_not_first_stage():
    t = _iotlb(
        _io(1, 0x1000), _io(1, 0x1000, pasid=4, stage="nested"), _io(1, 0x2000, stage="pt"),
        _io(1, 0x3000, pasid=9, stage="fs"), _io(2, 0x1000),
    )
    assert t.invalidate_domain(1) == 3
    assert t.keys() == [(1, 9, 1, 3), (2, 0, 1, 1)]


def test_iotlb_psi_range_and_large_page_overlap():
    t = _iotlb(
        _io(1, 0xFFF7_F000), _io(1, 0xFFF8_0000), _io(1, 0xFFF9_F000), _io(1, 0xFFFA_0000),
        _io(1, 0xFFE0_0000, level=2),  # a 2M page containing the whole range
        _io(1, 0xC000_0000, level=3),  # a 1G page containing it too
        _io(1, 0x4000_0000, level=3),  # a 1G page elsewhere
        _io(2, 0xFFF8_0000),
    )
    # AM 5: 128 KiB at 0xfff80000 (the recorded trace's 0x500f2 / 0xfff80005)
    assert t.invalidate_page(1, 0xFFF8_0000, 5) == 4
    assert t.keys() == [
        (1, 0, 1, 0xFFF7F), (1, 0, 1, 0xFFFA0), (1, 0, 3, 1), (2, 0, 1, 0xFFF80)
    ]


def test_iotlb_psi_visits_group_by_scan_for_a_wide_range():
    # A whole-space-sized PSI must not enumerate keys; the result is the same either way.
    t = _iotlb(_io(1, 0x1000), _io(1, 0x7FFF_F000_0000), _io(1, 0x4000_0000, level=3))
    assert t.invalidate_page(1, 0, 52) == 3


def test_iotlb_psi_ignores_ih_for_leaf_entries():
    t = _iotlb(_io(1, 0x1000))
    assert t.invalidate_page(1, 0x1000, 0, ih=True) == 1


def test_iotlb_type6_pasid_selective_spares_global_and_second_stage():
    t = _iotlb(
        _io(1, 0x1000, pasid=5, stage="fs"), _io(1, 0x2000, pasid=5, stage="fs", global_=True),
        _io(1, 0x3000, pasid=5, stage="ss"), _io(1, 0x4000, pasid=6, stage="fs"),
    )
    assert t.invalidate_pasid(1, 5) == 1
    assert t.keys() == [(1, 5, 1, 2), (1, 5, 1, 3), (1, 6, 1, 4)]


def test_iotlb_type6_page_selective_includes_global_in_range():
    t = _iotlb(
        _io(1, 0x1000, pasid=5, stage="fs", global_=True), _io(1, 0x2000, pasid=5, stage="fs"),
        _io(1, 0x20_0000, pasid=5, stage="fs", level=2), _io(1, 0x1000, pasid=7, stage="fs"),
    )
    assert t.invalidate_pasid_page(1, 5, 0x0, 1) == 1
    assert t.invalidate_pasid_page(1, 5, 0x2000, 9) == 1  # 2 MiB from 0: the 0x2000 page only
    assert t.keys() == [(1, 5, 2, 1), (1, 7, 1, 1)]


def test_iotlb_global_drops_every_stage():
    t = _iotlb(_io(1, 0x1000, stage="fs", global_=True), _io(2, 0x1000))
    assert t.invalidate_global() == 2
    assert t.groups() == []


def test_iotlb_group_index_follows_replacement_and_eviction():
    t = _iotlb(_io(1, 0x1000), _io(2, 0x1000), capacity=2)
    t.fill_entry(_io(3, 0x1000))  # replaces DID 1's entry
    assert t.groups() == [(2, 0), (3, 0)]
    t.evict((2, 0, 1, 1))
    assert t.groups() == [(3, 0)]
    assert t.invalidate_domain(1) == 0


# A fill op: (key index, DID, nested); an invalidation: (granularity, DID, page).
CACHE_OPS = st.lists(st.one_of(
    st.tuples(st.just("fill"), st.integers(0, 11), st.integers(1, 2), st.booleans()),
    st.tuples(st.just("evict"), st.integers(0, 11), st.just(0), st.just(False)),
    st.tuples(st.sampled_from(["psi", "piotlb_page", "dsi", "piotlb_pasid"]),
              st.integers(0, 11), st.integers(1, 2), st.just(False))), max_size=40)


def _absent_fill(cache: Iotlb, key, entry):
    """Iotlb.fill as the miss path makes it: fill_first_stage for a first-stage entry whose
    key is not cached, fill_absent for another absent key, fill for a cached one."""
    if key in cache:
        return cache.fill(key, entry)
    if entry.stage == "fs":
        return cache.fill_first_stage(key, entry)
    return cache.fill_absent(key, entry)


@settings(max_examples=200, deadline=None)
@given(ops=CACHE_OPS, capacity=st.integers(0, 5), flush=st.booleans())
def test_iotlb_fill_absent_twins_fill(ops, capacity, flush):
    """``fill_absent`` and ``fill_first_stage`` (keys known absent) leave an IOTLB as
    ``fill`` does: entries in LRU order, groups, nested groups, counters, the victim; and
    the group index always matches the entries."""
    caches = Iotlb(capacity), Iotlb(capacity)
    for cache in caches:
        cache.flush_when_full = flush
    for op, n, did, nested in ops:
        page = n % 4
        key = (did, n // 4, 1, page)
        entry = IotlbEntry(did, n // 4, page * K4, 1, 0x1000, True, True, False, False,
                           "nested" if nested else "fs")
        results = []
        for i, cache in enumerate(caches):
            if op == "fill":
                results.append(cache.fill(key, entry) if i else _absent_fill(cache, key, entry))
            elif op == "evict":
                results.append(cache.evict(cache.keys()[n % len(cache)]) if len(cache) else 0)
            elif op == "psi":
                results.append(cache.invalidate_page(did, page * K4, 0))
            elif op == "piotlb_page":
                results.append(cache.invalidate_pasid_page(did, n // 4, page * K4, 0))
            elif op == "dsi":
                results.append(cache.invalidate_domain(did))
            else:
                results.append(cache.invalidate_pasid(did, n // 4))
        assert results[0] == results[1]
        a, b = caches
        assert a.items() == b.items() and a.stats == b.stats
        assert a.groups() == b.groups() and a._nested_groups == b._nested_groups
        assert [a.group_keys(g) for g in a.groups()] == [b.group_keys(g) for g in b.groups()]
        # The index is the keys' grouping by (did, pasid), with no empty group (both share
        # LruCache's code: this is what would catch its bookkeeping going wrong).
        grouping: dict = {}
        for k in a:
            grouping.setdefault(k[:2], set()).add(k)
        assert {g: set(a.group_keys(g)) for g in a.groups()} == grouping


# -- paging-structure caches -------------------------------------------------------------------
def _psc(did, iova, level, pasid=0, stage="ss"):
    shift = 12 + 9 * level
    return PscEntry(did=did, pasid=pasid, stage=stage, level=level, iova_prefix=iova >> shift,
                    table_addr=0x1000 * (level + 1), read=True, write=True, exe=False)


def _pscache(*entries):
    p = PagingStructureCache(32)
    for e in entries:
        p.fill_entry(e)
    return p


def test_psc_lookup_returns_deepest_level():
    p = _pscache(_psc(1, 0, 3), _psc(1, 0, 2), _psc(1, 0, 1))
    assert p.lookup_iova(1, 0, "ss", 0x1234, max_level=3).level == 1
    p.evict(_psc(1, 0, 1).key)
    assert p.lookup_iova(1, 0, "ss", 0x1234, max_level=3).level == 2
    assert p.lookup_iova(1, 0, "fs", 0x1234, max_level=3) is None
    assert p.stats.miss == 1 and p.stats.hit == 2


def test_psc_psi_ih1_keeps_ih0_drops_overlapping():
    entries = (_psc(1, 0x0, 1), _psc(1, 0x20_0000, 1), _psc(1, 0x0, 2), _psc(2, 0x0, 1))
    p = _pscache(*entries)
    assert p.invalidate_page(1, 0x1000, 0, ih=True) == 0
    assert len(p) == 4
    # the 4 KiB at 0x1000 lies under the level-1 entry for [0, 2M) and level-2 for [0, 1G)
    assert p.invalidate_page(1, 0x1000, 0, ih=False) == 2
    assert p.keys() == [entries[1].key, entries[3].key]


def test_psc_dsi_and_pasid_scopes():
    p = _pscache(_psc(1, 0, 1), _psc(1, 0, 1, pasid=5, stage="fs"),
                 _psc(1, 0, 1, pasid=5, stage="nested"), _psc(1, 0, 1, pasid=6, stage="fs"))
    assert p.invalidate_domain(1) == 2  # "ss" and "nested"
    assert p.invalidate_pasid(1, 5) == 1
    assert p.keys() == [_psc(1, 0, 1, pasid=6, stage="fs").key]


def test_psc_pasid_page_ih_rule():
    p = _pscache(_psc(1, 0, 1, pasid=5, stage="fs"), _psc(1, 0x4000_0000, 1, pasid=5, stage="fs"))
    assert p.invalidate_pasid_page(1, 5, 0, 0, ih=True) == 0
    assert p.invalidate_pasid_page(1, 5, 0, 0, ih=False) == 1


def test_iteration_is_a_snapshot_in_lru_order():
    c = LruCache("t", 4)
    for k in "abc":
        c.fill(k, k)
    c.lookup("a")
    assert list(c) == ["b", "c", "a"]
    for k in c:
        c.evict(k)
    assert len(c) == 0


# -- the sole group (LruCache docstring) --------------------------------------------------------
class _ExplicitIndex(Iotlb):
    """The group index without the sole group: every group's members kept in a dict, as the
    general bookkeeping does (``_sole`` stays None, so ``fill_first_stage`` and
    ``fill_absent`` always take their indexing path)."""

    def _group(self, key):
        group = key[:self.group_len]
        members = self._groups.get(group)
        if members is None:
            self._groups[group] = {key: None}
        else:
            members[key] = None


def _index_view(cache: Iotlb) -> tuple:
    """What the group index answers: groups in order, each with its keys (as a set: the
    order in which a group lists its keys drops nothing differently) and their count."""
    return [(g, set(cache.group_keys(g)), cache.group_size(g)) for g in cache.groups()]


# One domain mostly (the sole group), now and then a second DID or PASID; global flushes
# and evictions empty the cache so that a group becomes sole again.
SOLE_OPS = st.lists(st.tuples(
    st.sampled_from(["fill", "fill", "fill", "fill", "evict", "psi", "piotlb_page",
                     "piotlb_pasid", "dsi", "global"]),
    st.integers(0, 7), st.sampled_from([(1, 0)] * 6 + [(2, 0), (1, 3)]),
    st.sampled_from([1] * 8 + [2, 3])), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=SOLE_OPS, capacity=st.integers(0, 6), flush=st.booleans())
def test_sole_group_twins_the_explicit_index(ops, capacity, flush):
    """An IOTLB whose sole group keeps no member index (filled through ``fill_first_stage``
    where the miss path would) ends every step as one that keeps every group's members
    (filled through ``fill``): entries in LRU order, counters, victims, what each
    invalidation dropped, the groups in order with their keys; and every group holding a
    2 MiB or 1 GiB entry is among the large groups (translation.miss skips those probes
    while there is none)."""
    sole, explicit = Iotlb(capacity), _ExplicitIndex(capacity)
    for cache in (sole, explicit):
        cache.flush_when_full = flush
    for op, n, (did, pasid), level in ops:
        key = (did, pasid, level, n)
        entry = IotlbEntry(did, pasid, n << (3 + 9 * level), level, 0x1000, True, True, False,
                           False, "fs")
        results = []
        for cache in (sole, explicit):
            if op == "fill":
                results.append(_absent_fill(cache, key, entry) if cache is sole
                               else cache.fill(key, entry))
            elif op == "evict":
                results.append(cache.evict(cache.keys()[n % len(cache)]) if len(cache) else 0)
            elif op == "psi":
                results.append(cache.invalidate_page(did, n * K4, n % 3))
            elif op == "piotlb_page":
                results.append(cache.invalidate_pasid_page(did, pasid, n * K4, n % 3))
            elif op == "piotlb_pasid":
                results.append(cache.invalidate_pasid(did, pasid))
            elif op == "dsi":
                results.append(cache.invalidate_domain(did))
            else:
                results.append(cache.invalidate_global())
        assert results[0] == results[1], op
        assert sole.items() == explicit.items() and sole.stats == explicit.stats
        assert _index_view(sole) == _index_view(explicit)
        assert sole._sole is None or sole.groups() == [sole._sole]
        assert sole._large_groups == explicit._large_groups
        assert {k[:2] for k in sole if k[2] != 1} <= sole._large_groups


def test_sole_group_becomes_explicit_when_another_comes_and_sole_again_once_empty():
    t = Iotlb(4)
    for page in range(5):  # one domain: the fifth fill replaces the LRU entry, no index kept
        assert t.fill_first_stage((1, 0, 1, page), _io(1, page * K4, stage="fs")) == (
            (1, 0, 1, 0) if page == 4 else None)
    assert t._groups == {(1, 0): None} and t.group_keys((1, 0)) == t.keys()
    t.fill_first_stage((2, 0, 1, 9), _io(2, 9 * K4, stage="fs"))  # replaces (1, 0, 1, 1)
    assert t.groups() == [(1, 0), (2, 0)] and t._sole is None
    assert t._groups[(1, 0)] == dict.fromkeys([(1, 0, 1, 2), (1, 0, 1, 3), (1, 0, 1, 4)])
    assert t.group_size((2, 0)) == 1 and t.group_size((3, 0)) == 0
    assert t.invalidate_global() == 4 and t.groups() == []
    t.fill_first_stage((2, 0, 1, 9), _io(2, 9 * K4, stage="fs"))
    assert t._groups == {(2, 0): None} and t._sole == (2, 0)


def test_psc_sole_group_scoped_invalidation():
    """A paging-structure cache of one (DID, PASID): its scoped invalidations find the
    group's keys among all entries."""
    p = _pscache(_psc(1, 0, 1, pasid=5, stage="fs"), _psc(1, 0x4000_0000, 1, pasid=5, stage="fs"),
                 _psc(1, 0, 2, pasid=5, stage="fs"))
    assert p._sole == (1, 5) and p.invalidate_domain(2) == 0
    assert p.invalidate_pasid_page(1, 5, 0, 0, ih=False) == 2
    assert p.keys() == [_psc(1, 0x4000_0000, 1, pasid=5, stage="fs").key]
    assert p.invalidate_pasid(1, 5) == 1 and p.groups() == [] and p._sole is None
