"""``DmaWorld.page_dma``'s repeat - a DMA to the page of the one before it, with ``settle``
not called in between, is the unit's ``translate_page_again`` - and its
counters left pending until a settle change nothing: on triplet worlds, one that settles
before every DMA (so it never repeats), one only where the sequence says, and one through
``DmaWorld.dma`` (the general path, every counter made at once), every DMA's latency and the
DMA unit's whole observable state (stats - settled first, as any reader does - and each
cache's entries in LRU order and counters) are equal after every DMA, and the measure's
translations and bytes at every settle, over more pages than the IOTLB holds (hits,
remembered misses and full-flow misses)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from vtdsim.hardware.remapping_unit import CACHE_NAMES
from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode
from vtdsim.simulation.workloads.common import DmaWorld

TABLE = constants.load()
PAGES = 80  # more than the default 64-entry IOTLB
FRAME = 1500


class Twin:
    def __init__(self) -> None:
        self.world = DmaWorld(Mode(policy="strict", ios=1), TABLE, 1)
        self.addrs: list[int] = []
        self.world.env.process(self._map())
        self.world.env.run()
        self.dma, self.settle = self.world.page_dma(FRAME, True)

    def _map(self):
        for i in range(PAGES):
            self.addrs.append((yield from self.world.map_page(0, 0x2_0000_0000 + i * 4096,
                                                              4096)))

    def state(self) -> tuple:
        unit = self.world.machine.dma_unit
        unit.settle_answers()  # a reader makes the counters page_dma left pending
        caches = tuple((name, getattr(unit, name).items(), getattr(unit, name).stats.as_dict())
                       for name in CACHE_NAMES)
        return dict(unit.stats), caches

    def measure(self) -> tuple:
        """The measure's counts, once ``settle`` has made them."""
        return self.world.m.translations, self.world.m.bytes


# (page, frame slot in the page, settle before it)
DMAS = st.lists(st.tuples(st.integers(0, PAGES - 1), st.integers(0, 1), st.booleans()),
                min_size=1, max_size=120)


def run(dmas) -> int:
    repeats, always, sometimes, general = 0, Twin(), Twin(), Twin()
    last = None
    for page, slot, settle in dmas:
        always.settle()
        if settle:
            sometimes.settle()
            last = None
        addr = always.addrs[page] + slot * 2048
        assert sometimes.addrs[page] + slot * 2048 == general.addrs[page] + slot * 2048 == addr
        hits = sometimes.world.machine.dma_unit.iotlb.stats.hit
        latency = general.world.dma(addr, FRAME, True)  # counted at once, no repeat
        assert always.dma(addr) == sometimes.dma(addr) == latency
        assert always.state() == sometimes.state() == general.state(), (page, slot, settle)
        repeats += last == page and sometimes.world.machine.dma_unit.iotlb.stats.hit != hits
        last = page
        if settle:
            translations, moved = general.measure()
            assert sometimes.measure() == (translations - 1, moved - FRAME)  # but this DMA
    always.settle()
    sometimes.settle()
    assert always.measure() == sometimes.measure() == general.measure()
    return repeats


@settings(max_examples=40, deadline=None)
@given(dmas=DMAS)
def test_repeat_changes_nothing(dmas):
    run(dmas)


def test_pool_pattern_repeats():
    """A page pool's pattern: two frames per page, pages cycling past the IOTLB's reach; the
    second frame of each page is a repeat (the comparison covers it)."""
    dmas = [(page, slot, False) for _lap in range(3) for page in range(PAGES)
            for slot in (0, 1)]
    assert run(dmas) >= 2 * PAGES
