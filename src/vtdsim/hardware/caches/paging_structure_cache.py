"""The paging-structure caches: cached non-leaf page-table entries (VT-d spec 6.2.4).

One logical cache per level, kept in one LRU.

An entry of level L is a present non-leaf entry that points to a level-L table; it translates
the 2^(12 + 9L)-byte region ``iova_prefix << (12 + 9L)`` and remembers the next table address
and the permissions accumulated down to it (spec 6.2.4: "the cumulative access rights").
Key ``(did, pasid, stage, level, iova >> (12 + 9*level))``.  ``stage`` names the three kinds
of spec 6.2.5 (rev 5.10): "ss" second-stage entries (legacy, PGTT=SS, and every SS walk of a
nested translation, whose input address is then a GPA: a first-stage table's or the final
one), "fs" first-stage entries, "nested" combined entries (a nested walk's first-stage entry
with the host-physical address of the next FS table, already translated through the second
stage, keyed by the request's input address).  Pass-through caches nothing here.

Invalidation (spec 6.5.2.3 Table 23, 6.5.2.4; reference section 15): type 2 global drops
everything, DSI every "ss"/"nested" entry of the DID; PSI drops every "nested" entry of the DID
whatever the range and IH ("paging-structure-cache entries caching mappings other than
second-stage mappings associated with the specified domain-id are invalidated": a host change
of the second stage can move any first-stage table), and "ss" entries overlapping the range
only with IH=0.  Type 6 (G=10: the PASID; G=11: overlapping the input range, nothing with IH=1)
drops "fs"/"nested" entries; it is "not required" to drop second-stage entries and does not.

Not modelled: caching of PML5/PML4 entries as separate structures from the generic per-level
entry; type 2 dropping "fs" entries (spec Table 23 says DSI/PSI reach first-stage entries of
the DID; kept as the IOTLB keeps them, see ``iotlb.TYPE2_STAGES``).
"""

from __future__ import annotations

from collections.abc import Hashable

from vtdsim.hardware.caches.base import LruCache, psi_range, ranges_overlap
from vtdsim.hardware.caches.iotlb import STAGE_NESTED, STAGE_SS, TYPE6_STAGES
from vtdsim.records import record

PSC_TYPE2_STAGES = frozenset({STAGE_SS, STAGE_NESTED})

PAGE_SHIFT = 12
LEVEL_BITS = 9


def region_shift(level: int) -> int:
    """log2 of the region a level-``level`` paging-structure entry translates."""
    return PAGE_SHIFT + LEVEL_BITS * level


def psc_key(did: int, pasid: int, stage: str, level: int, iova: int) -> tuple:
    return (did, pasid, stage, level, iova >> region_shift(level))


@record
class PscEntry:
    """A non-leaf entry: where the level-``level`` table for ``iova_prefix`` lives."""

    did: int
    pasid: int
    stage: str
    level: int
    iova_prefix: int  # iova >> (12 + 9*level)
    table_addr: int
    read: bool
    write: bool
    exe: bool
    user: bool = False
    table_gpa: int | None = None  # a combined (nested) entry: the FS table's guest-physical

    @property
    def key(self) -> tuple:
        return (self.did, self.pasid, self.stage, self.level, self.iova_prefix)

    @property
    def region_base(self) -> int:
        return self.iova_prefix << region_shift(self.level)

    @property
    def region_size(self) -> int:
        return 1 << region_shift(self.level)


class PagingStructureCache(LruCache):
    """All levels' paging-structure caches in one LRU, grouped by (did, pasid)."""

    group_len = 2  # (did, pasid)

    def __init__(self, capacity: int = 256, name: str = "pscache"):
        super().__init__(name, capacity)
        # Misses by level (index = the level of the entry looked for; 0 unused): a lookup that
        # resumes at level L missed levels 1..L-1.
        self.level_misses = [0] * 7

    def lookup_iova(self, did: int, pasid: int, stage: str, iova: int,
                    max_level: int) -> PscEntry | None:
        """The deepest cached entry for ``iova`` (level 1 first, up to ``max_level``), so a walk
        resumes as low as possible (spec 6.2.4 lets hardware skip the cached upper levels)."""
        misses = self.level_misses
        for level in range(1, max_level + 1):
            entry = self._get((did, pasid, stage, level, iova >> region_shift(level)))
            if entry is not None:
                return self.lookup(entry.key)
            # The level-``level`` entry is not cached: the walk will read the entry pointing
            # to that table from memory (a per-level miss, as cost models count them).
            misses[level] += 1
        self.stats.miss += 1
        return None

    def fill_entry(self, entry: PscEntry) -> Hashable | None:
        return self.fill(entry.key, entry)

    def _scoped(self, groups: list, stages: frozenset, base: int = 0, size: int = 0,
                whole: frozenset = frozenset()) -> int:
        """Drop entries of ``groups`` in ``stages`` overlapping [base, base+size) (any, if
        size is 0), and those in ``whole`` whatever their region."""
        if not self._groups:
            return 0

        def pred(_key: Hashable, e: PscEntry) -> bool:
            if e.stage in whole:
                return True
            if e.stage not in stages:
                return False
            return not size or ranges_overlap(e.region_base, e.region_size, base, size)

        return sum(self.invalidate_where(pred, self.group_keys(g)) for g in groups)

    def invalidate_domain(self, did: int) -> int:
        """Type 2 DSI: second-stage and combined entries of ``did``, any PASID."""
        return self._scoped(self.domain_groups(did), PSC_TYPE2_STAGES)

    def invalidate_page(self, did: int, addr: int, am: int, ih: bool) -> int:
        """Type 2 PSI: every combined entry of ``did``; second-stage ones overlapping the
        range unless IH=1 (Table 23)."""
        stages = frozenset() if ih else frozenset({STAGE_SS})
        return self._scoped(self.domain_groups(did), stages, *psi_range(addr, am),
                            whole=frozenset({STAGE_NESTED}))

    def invalidate_pasid(self, did: int, pasid: int) -> int:
        """Type 6 G=10: first-stage/nested entries of (``did``, ``pasid``)."""
        return self._scoped([(did, pasid)], TYPE6_STAGES)

    def invalidate_pasid_page(self, did: int, pasid: int, addr: int, am: int, ih: bool) -> int:
        """Type 6 G=11: nothing when IH=1; else the G=10 scope overlapping the range."""
        if ih:
            return 0
        return self._scoped([(did, pasid)], TYPE6_STAGES, *psi_range(addr, am))
