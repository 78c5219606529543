"""Properties of the translation flow under random page-table changes, cache fills, evictions
and invalidations (spec 6.1, 6.5):

* a translation never returns a mapping memory does not hold unless a cached entry explains
  it (the entry was in the IOTLB before the request);
* no cached entry survives a completed invalidation that covers it;
* right after an invalidation covering a page, translating it agrees with memory exactly;
* ``possible_fills`` changes nothing.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from builders import Tables
from vtdsim.hardware import invalidation
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.pasid_table import PGTT_SS
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit
from vtdsim.hardware.request import sid_of
from vtdsim.hardware.translation import apply_fill, possible_fills

SID = sid_of(0, 3, 0)
DID = 2
PAGES = 8
SETUPS = ("qemu72-legacy", "qemu72-legacy-cm", "server-sm")


def iova_of(page: int) -> int:
    """Pages spread over two 2 MiB regions, so two leaf tables and their PSC entries."""
    return (page % 4) << 12 | (page // 4) << 21


class World:
    """A unit, its page table, and the reference mapping memory holds."""

    def __init__(self, setup: str):
        caps = get_preset(setup)
        self.unit = RemappingUnit(caps, PhysicalMemory())
        self.t = Tables(self.unit.memory)
        scalable = setup == "server-sm"
        self.unit.root_table_addr, self.unit.ttm = self.t.rta, int(scalable)
        self.unit.translation_enabled = True
        levels = 4 if scalable else 3
        self.pt = self.t.ss_table(levels)
        if scalable:
            self.t.set_sm_context(SID)
            self.t.set_pasid_entry(SID, 0, pgtt=PGTT_SS, did=DID, aw=levels - 2,
                                   ssptptr=self.pt.root)
        else:
            self.t.set_context(SID, aw=levels - 2, did=DID, ssptptr=self.pt.root)
        self.ref: dict[int, tuple[int, bool]] = {}

    def map(self, page: int, target: int, writable: bool) -> None:
        hpa = 0x4000_0000 + (target << 12)
        self.pt.map(iova_of(page), hpa, w=int(writable))
        self.ref[page] = (hpa, writable)

    def unmap(self, page: int) -> None:
        self.t.write(self.pt.pte_addr(iova_of(page)), 0)
        self.ref.pop(page, None)

    def iotlb_entries(self) -> list:
        return [e for _, e in self.unit.iotlb.items()]

    def check_translation(self, page: int, write: bool) -> None:
        before = self.iotlb_entries()
        result = self.unit.translate(SID, iova_of(page), write)
        if not result:
            return  # a fault is always allowed: memory or a (negative) cached entry
        hpa = result.hpa | (iova_of(page) & result.offset_mask)
        held = self.ref.get(page)
        fresh = held is not None and held[0] == hpa and (held[1] or not write)
        assert fresh or any(result is e for e in before), (page, result, held)

    def check_exact(self, page: int) -> None:
        """Right after an invalidation covering ``page``: the result is what memory holds."""
        result = self.unit.translate(SID, iova_of(page))
        held = self.ref.get(page)
        if held is None:
            assert not result
        else:
            assert result and result.hpa == held[0], (page, result, held)

    def invalidate(self, kind: int, page: int) -> None:
        unit = self.unit
        if kind == 0:
            invalidation.iotlb_page(unit, DID, iova_of(page), 0, 0)
            assert not [e for e in self.iotlb_entries() if e.did == DID
                        and e.overlaps(iova_of(page), 4096)]
            assert not [e for _, e in unit.pscache.items() if e.did == DID
                        and e.region_base <= iova_of(page) < e.region_base + e.region_size]
            self.check_exact(page)
        elif kind == 1:
            invalidation.iotlb_domain(unit, DID)
            assert not [e for e in self.iotlb_entries() if e.did == DID]
            assert not [e for _, e in unit.pscache.items() if e.did == DID]
            self.check_exact(page)
        elif kind == 2:
            invalidation.iotlb_global(unit)
            assert len(unit.iotlb) == len(unit.pscache) == 0
            self.check_exact(page)
        else:
            invalidation.context_cache_global(unit)
            assert len(unit.context_cache) == 0

    def fill(self, page: int, choice: int) -> None:
        before = (self.unit.memory.snapshot(), dict(self.unit.stats), self.unit.cached())
        fills = possible_fills(self.unit, SID, iova_of(page))
        assert (self.unit.memory.snapshot(), dict(self.unit.stats), self.unit.cached()) == before
        if fills:
            apply_fill(self.unit, fills[choice % len(fills)])

    def evict(self, choice: int) -> None:
        cached = self.unit.cached()
        if cached:
            self.unit.evict(*cached[choice % len(cached)])


OPS = st.lists(
    st.tuples(
        st.sampled_from(["map", "unmap", "translate", "fill", "evict", "invalidate"]),
        st.integers(0, PAGES - 1),
        st.integers(0, 15),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(setup=st.sampled_from(SETUPS), ops=OPS)
def test_translations_are_explained_and_invalidations_complete(setup, ops):
    w = World(setup)
    for op, page, n, flag in ops:
        if op == "map":
            w.map(page, n, flag)
        elif op == "unmap":
            w.unmap(page)
        elif op == "translate":
            w.check_translation(page, flag)
        elif op == "fill":
            w.fill(page, n)
        elif op == "evict":
            w.evict(n)
        else:
            w.invalidate(n % 4, page)


@settings(max_examples=30, deadline=None)
@given(garbage=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=16),
       setup=st.sampled_from(SETUPS), write=st.booleans())
def test_garbage_tables_fault_never_raise(garbage, setup, write):
    """Any bytes in root, context, PASID and page tables become a spec fault or a result."""
    w = World(setup)
    w.map(0, 1, True)
    spots = [w.t.rta, w.t.rta + 8, w.pt.root, w.pt.pte_addr(0), w.pt.pte_addr(0, 2)]
    spots += [w.t.rta + 0x1000 * i + 8 * j for i in range(1, 6) for j in range(8)]
    for i, value in enumerate(garbage):
        w.t.write(spots[(value >> 3) % len(spots)] if i else spots[0], value)
    for _ in range(2):
        w.unit.translate(SID, 0, write)
        possible_fills(w.unit, SID, 0)
