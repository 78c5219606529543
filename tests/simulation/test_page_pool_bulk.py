"""The page pool's bulk paths against their page-by-page ones on twin pools, over alloc
caches and ptr_rings of any fill: ``take_many`` (nic_pool's refill) against ``take`` called
once per page - the same pages in the same order, the same stop where ``take`` answers None;
``recycle_all`` (the NAPI reader's returns, when ``room`` holds them) against ``recycle`` per
page - ``room`` counts exactly the returns before the first refused; and after each, the
same cache, ring and counters.  Then whole nic-rx runs with the reader's bulk returns turned
off (``room`` says none fit) give every figure the same, pool-full releases included: the
bulk pass (nic_pool ``_read_all``, frames of one page each) against the core's loop frame by
frame, which jumbo frames spanning pages take either way."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate
from vtdsim.simulation.workloads.common import DmaWorld
from vtdsim.simulation.workloads.page_pool import Page, PagePool

WORLD = DmaWorld(Mode(ios=1, policy="strict"), constants.load(), 2)


def _pool(cached: int, ringed: int, ring_size: int = 4096) -> PagePool:
    pool = PagePool(WORLD, 0, ring_size, [])
    pool.cache = [Page(i, i) for i in range(cached)]
    pool.ring.extend(Page(1000 + i, 1000 + i) for i in range(ringed))
    return pool


def _state(pool: PagePool) -> tuple:
    return [p.phys for p in pool.cache], [p.phys for p in pool.ring], pool.stats


@given(st.integers(0, 200), st.integers(0, 300), st.integers(0, 600))
def test_take_many_is_take_page_by_page(cached, ringed, n):
    bulk, single = _pool(cached, ringed), _pool(cached, ringed)
    taken = bulk.take_many(n)
    expected = []
    while len(expected) < n and (page := single.take()) is not None:
        expected.append(page)
    assert [p.phys for p in taken] == [p.phys for p in expected]
    assert _state(bulk) == _state(single)


@given(st.integers(0, 140), st.integers(0, 300), st.integers(1, 300), st.integers(0, 400),
       st.booleans())
def test_recycle_all_is_recycle_page_by_page(cached, ringed, ring_size, n, direct):
    bulk, single = (_pool(cached, min(ringed, ring_size), ring_size) for _ in range(2))
    pages = [Page(5000 + i, 5000 + i) for i in range(n)]
    room = bulk.room(direct)
    accepted = 0
    while accepted < n and single.recycle(pages[accepted], direct):
        accepted += 1
    assert accepted == min(n, room)  # room: exactly the returns before the first refused
    if n <= room:
        bulk.recycle_all(pages, direct)
        assert _state(bulk) == _state(single)


RUNS = {
    "default": {},
    "a core that keeps up, small pool: returns to the ring, which is full":
        {"pool_size": 8, "link_gbps": 10.0},
    "small pool and ring, 25 Gbit/s": {"pool_size": 4, "link_gbps": 25.0, "ring": 256},
    "jumbo frames spanning pages": {"mtu": 9000, "ring": 64},
}


@pytest.mark.parametrize("name", list(RUNS))
def test_bulk_returns_change_no_figure(name, monkeypatch):
    def run() -> dict:
        result = simulate("nic-rx", Mode(ios=3000, policy="strict"),
                          make_params("nic-rx", **RUNS[name]), constants.load())
        result.pop("timing")
        return result

    fast = run()
    monkeypatch.setattr(PagePool, "room", lambda self, direct: -1)
    assert run() == fast
    if "full" in name:  # pages left the pool: each unmapped (strict), beyond the ACKs'
        assert fast["iqt_writes_per_io"] > 0.1
