"""``PagePool.take_many`` (nic_pool's refill) against ``take`` called once per page on a twin
pool: the same pages in the same order, the same stop where ``take`` answers None, and the
same cache, ring and counters after - over alloc caches and ptr_rings of any fill."""

from hypothesis import given
from hypothesis import strategies as st

from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode
from vtdsim.simulation.workloads.common import DmaWorld
from vtdsim.simulation.workloads.page_pool import Page, PagePool

WORLD = DmaWorld(Mode(ios=1, policy="strict"), constants.load(), 2)


def _pool(cached: int, ringed: int) -> PagePool:
    pool = PagePool(WORLD, 0, 4096, [])
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
