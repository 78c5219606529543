"""The IOTLB: cached effective translations of 4 KiB, 2 MiB and 1 GiB pages (VT-d spec 6.2.3).

Entries are tagged with (DID, PASID, page number, page size) (spec 6.2.3; legacy mode uses
PASID 0) and keyed ``(did, pasid, level, iova >> (12 + 9*(level-1)))`` with level 1/2/3 =
4K/2M/1G, so a lookup is at most three dict probes, 4K first.

Which invalidation reaches which entry (spec 6.5.2.3, 6.5.2.4; reference sections 11.2, 15):

* IOTLB invalidate (type 2, or the IOTLB register): global drops everything; domain-selective
  (DSI) and page-selective (PSI) drop entries of the DID whose translation used a second stage
  (``stage`` "ss", "nested") or was pass-through ("pt"), for every PASID.  First-stage entries
  ("fs") are *not* dropped by DSI/PSI: Linux states "the VT-d spec requires PASID-based-IOTLB
  invalidation to flush IOTLB and the paging-structure caches for a first-level page table"
  (commit "iommu/vt-d: Flush iotlb for 1st-level page table", 2022) and always uses type 6 for
  them.  QEMU's vtd_iotlb_domain_invalidate drops them by DID as well; the exact spec wording
  is unconfirmed - change ``TYPE2_STAGES`` to follow QEMU.
* PASID-based IOTLB invalidate (type 6): entries of (DID, PASID) whose translation used a
  first stage ("fs", "nested") or was pass-through ("pt": Linux tears down PT PASID entries
  with type 6, intel_pasid_tear_down_entry).  G=10 (PASID-selective) spares global entries
  (first-stage G bit), as the spec's "non-global mappings" says (unconfirmed); G=11
  (page-selective) drops global entries in the range too, as x86 INVLPG does (unconfirmed).
* PSI drops every entry overlapping [ADDR, ADDR + 2^AM pages), larger pages included.  IH
  does not concern the IOTLB (leaf entries always go); it only spares paging-structure caches.
  A type-2 PSI drops *every* nested entry of the DID, whatever its address (spec 6.5.2.3,
  rev 5.10 Table 23: "IOTLB entries caching first-stage or nested mappings associated with
  the specified domain-id are invalidated"): its range is one of second-stage input (guest-
  physical) addresses, which says nothing about which request addresses reach them.

Negative entries (``present=False``, with the fault reason) are stored like others; the
translation flow creates them only under caching mode and never for first-stage results.

QEMU tags its entries with the requester instead (``vtd_lookup_iotlb`` / ``vtd_update_iotlb``
key an entry by source-id, PASID, page number and level; the entry keeps the domain-id, which
invalidations match, ``vtd_hash_remove_by_domain`` / ``vtd_hash_remove_by_page``): with
``tag_sid`` (``CacheConfig.iotlb_tag_sid``) an entry carries its requester's ``sid`` and the
key ends with it, so two devices of one domain each fill their own entry; invalidations still
select by DID.  QEMU's "flush everything when full" is ``LruCache.flush_when_full``.

Not modelled: DR/DW draining.
"""

from __future__ import annotations

from collections.abc import Hashable

from vtdsim.hardware.caches.base import LruCache, psi_range, ranges_overlap
from vtdsim.records import record

PAGE_SHIFT = 12
LEVEL_BITS = 9
IOTLB_LEVELS = (1, 2, 3)  # 4 KiB, 2 MiB, 1 GiB

# Translation kinds an entry can come from (PGTT names of pasid_table.PGTT_NAMES; legacy
# mode caches "ss" or, for TT=10, "pt").
STAGE_FS = "fs"
STAGE_SS = "ss"
STAGE_NESTED = "nested"
STAGE_PT = "pt"
TYPE2_STAGES = frozenset({STAGE_SS, STAGE_NESTED, STAGE_PT})
TYPE6_STAGES = frozenset({STAGE_FS, STAGE_NESTED, STAGE_PT})


def level_shift(level: int) -> int:
    """log2 of the page size of a level-``level`` leaf (1: 12, 2: 21, 3: 30)."""
    return PAGE_SHIFT + LEVEL_BITS * (level - 1)


def iotlb_key(did: int, pasid: int, level: int, iova: int) -> tuple[int, int, int, int]:
    return (did, pasid, level, iova >> level_shift(level))


@record
class IotlbEntry:
    """One cached translation (or, under caching mode, one cached translation fault)."""

    did: int
    pasid: int
    iova_base: int
    level: int
    hpa: int  # page-aligned host address of the page
    read: bool
    write: bool
    exe: bool
    snp: bool  # snoop forced (SS SNP bit or PASID-entry PGSNP)
    stage: str
    present: bool = True
    fault_reason: int = 0
    global_: bool = False
    sid: int | None = None  # the requester, with a requester-tagged IOTLB (QEMU's) only

    @property
    def size(self) -> int:
        return 1 << level_shift(self.level)

    @property
    def offset_mask(self) -> int:
        return (1 << level_shift(self.level)) - 1

    @property
    def key(self) -> tuple[int, ...]:
        key = iotlb_key(self.did, self.pasid, self.level, self.iova_base)
        return key if self.sid is None else (*key, self.sid)

    def overlaps(self, base: int, size: int) -> bool:
        return ranges_overlap(self.iova_base, self.size, base, size)


_SHIFTS = tuple(level_shift(level) for level in IOTLB_LEVELS)


_SHIFT_4K, _SHIFT_2M, _SHIFT_1G = _SHIFTS


def range_keys(did: int, pasid: int, base: int, size: int) -> list[Hashable]:
    """Every IOTLB key that could hold a page overlapping [base, base+size)."""
    last = base + size - 1
    return [(did, pasid, level, number) for level, shift in zip(IOTLB_LEVELS, _SHIFTS, strict=True)
            for number in range(base >> shift, (last >> shift) + 1)]


def range_key_count(base: int, size: int) -> int:
    """``len(range_keys(...))``: the pages of each size the range touches."""
    last = base + size - 1
    return ((last >> _SHIFT_4K) - (base >> _SHIFT_4K) + (last >> _SHIFT_2M) - (base >> _SHIFT_2M)
            + (last >> _SHIFT_1G) - (base >> _SHIFT_1G) + len(_SHIFTS))


class Iotlb(LruCache):
    """The IOTLB, grouped by (did, pasid) so scoped invalidations visit only their scope."""

    group_len = 2  # (did, pasid)
    tag_sid = False  # entries tagged with their requester (QEMU's IOTLB; module docstring)

    def __init__(self, capacity: int = 1024, name: str = "iotlb"):
        super().__init__(name, capacity)
        # Groups that received a nested entry since the last clear (a superset: a type-2 PSI
        # scans these whole, the others only over the keys its range can occupy).
        self._nested_groups: set[Hashable] = set()
        # Groups that received a 2 MiB or 1 GiB entry since the last clear (a superset):
        # while there is none, no larger page's key is cached - translation.miss then need
        # not probe those keys on every remembered miss.
        self._large_groups: set[Hashable] = set()

    def fill(self, key: Hashable, entry: IotlbEntry) -> Hashable | None:
        if entry.stage == STAGE_NESTED:
            self._nested_groups.add(key[:2])
        return super().fill(key, entry)

    def fill_absent(self, key: Hashable, entry: IotlbEntry) -> Hashable | None:
        if entry.stage == STAGE_NESTED:  # as ``fill``: a caller may come straight here
            self._nested_groups.add(key[:2])
        if key[2] != 1:  # the level: a larger page (``fill`` of an absent key comes here)
            self._large_groups.add(key[:2])
        return super().fill_absent(key, entry)

    def fill_first_stage(self, key: Hashable, entry: IotlbEntry,
                         pending=None) -> Hashable | None:
        """``fill_absent`` of a first-stage entry (translation.miss's, one per IOTLB miss),
        its common case inline - a 4 KiB page (no large group to note; first stage, so
        never nested) into a full cache, not flushed whole, whose sole group is the key's
        (one device's domain): the LRU entry replaced, the group index unchanged
        (``LruCache`` docstring); else ``fill_absent``.  ``pending``
        (``translation.miss.PendingAnswers``): the common case's two counters left to it,
        one more ``replacing`` fill."""
        entries, sole = self._entries, self._sole
        if (sole is None or len(entries) < self.capacity or self.flush_when_full
                or key[2] != 1 or key[0] != sole[0] or key[1] != sole[1]):
            return self.fill_absent(key, entry)
        victim = entries.popitem(False)[0]
        entries[key] = entry
        if pending is None:
            self.count_replacing(1)
        else:
            pending.replacing += 1
        return victim

    def count_replacing(self, n: int) -> None:
        """The counters of ``n`` fills that each replaced the LRU entry."""
        stats = self.stats
        stats.replaced += n
        stats.fill += n

    def clear(self) -> int:
        self._nested_groups.clear()
        self._large_groups.clear()
        return super().clear()

    def lookup_iova(self, did: int, pasid: int, iova: int,
                    sid: int | None = None) -> IotlbEntry | None:
        """The entry translating ``iova`` for requester ``sid``, probing 4K, then 2M, then 1G
        (the hot path); ``sid`` counts only with ``tag_sid``.  ``LruCache.lookup`` is
        inlined: a benchmark holds an IOTLB hit to a few dict probes."""
        if self.tag_sid:
            return self._lookup_tagged(did, pasid, iova, sid)
        get = self._get
        key = (did, pasid, 1, iova >> 12)
        entry = get(key)
        if entry is None:
            key = (did, pasid, 2, iova >> 21)
            entry = get(key)
            if entry is None:
                key = (did, pasid, 3, iova >> 30)
                entry = get(key)
                if entry is None:
                    self.stats.miss += 1
                    return None
        self._touch(key)
        self.stats.hit += 1
        return entry

    def _lookup_tagged(self, did: int, pasid: int, iova: int,
                       sid: int | None) -> IotlbEntry | None:
        """``lookup_iova`` in a requester-tagged IOTLB: QEMU's ``vtd_lookup_iotlb`` probes
        each level with the requester's source-id in the key."""
        return self.lookup_first([(did, pasid, level, iova >> level_shift(level), sid)
                                  for level in IOTLB_LEVELS])

    def fill_entry(self, entry: IotlbEntry) -> Hashable | None:
        return self.fill(entry.key, entry)

    # -- type 2 ---------------------------------------------------------------------------------
    def invalidate_domain(self, did: int) -> int:
        """Type 2 DSI: every second-stage/nested/PT entry of ``did``, any PASID."""
        return sum(
            self.invalidate_where(_in_stages(TYPE2_STAGES), self.group_keys(g))
            for g in self.domain_groups(did)
        )

    def invalidate_page(self, did: int, addr: int, am: int, ih: bool = False) -> int:
        """Type 2 PSI: second-stage/PT entries of ``did`` overlapping 2^``am`` pages at
        ``addr``, and every nested entry of ``did``.  ``ih`` is accepted for symmetry: it only
        concerns paging-structure caches."""
        groups = self.domain_groups(did)
        if not groups:
            return 0  # nothing of the domain is cached (a flush right after a map, say)
        base, size = psi_range(addr, am)
        nested = self._nested_groups
        dropped = 0
        for g in groups:
            if g in nested:
                pred = _overlapping(TYPE2_STAGES, base, size, spare_global=False)
                dropped += self.invalidate_where(_nested_or(pred), self.group_keys(g))
            else:
                dropped += self._invalidate_range(g, base, size, TYPE2_STAGES)
        return dropped

    # -- type 6 ---------------------------------------------------------------------------------
    def invalidate_pasid(self, did: int, pasid: int) -> int:
        """Type 6 G=10: non-global first-stage/nested/PT entries of (``did``, ``pasid``)."""
        pred = _in_stages(TYPE6_STAGES, spare_global=True)
        return self.invalidate_where(pred, self.group_keys((did, pasid)))

    def invalidate_pasid_page(self, did: int, pasid: int, addr: int, am: int,
                              ih: bool = False) -> int:
        """Type 6 G=11: entries of (``did``, ``pasid``) overlapping the range, global ones too."""
        if not self._groups:
            return 0  # nothing cached (as ``domain_groups`` answers the type-2 flushes)
        base, size = psi_range(addr, am)
        return self._invalidate_range((did, pasid), base, size, TYPE6_STAGES)

    def _invalidate_range(self, group: Hashable, base: int, size: int, stages: frozenset) -> int:
        """Drop the entries of ``group`` in ``stages`` overlapping [base, base+size), global
        ones too (``invalidate_where`` with ``_overlapping(stages, base, size, False)``,
        written out: one flush on every strict unmap).  Visits the cheaper of: the group's
        entries, or the keys the range can occupy (a page-selective invalidation of a
        well-filled domain: one key per page size)."""
        cached = self.group_size(group)
        if not cached:
            return 0
        if self.tag_sid:
            keys = self.group_keys(group)
        elif (base + size - 1) >> _SHIFT_4K == base >> _SHIFT_4K and len(_SHIFTS) < cached:
            # Within one 4 KiB page (a strict unmap's flush), so within one page of each
            # size: ``range_keys`` is one key per level (``range_key_count``: 3), written out.
            did, pasid = group
            keys = [(did, pasid, 1, base >> _SHIFT_4K), (did, pasid, 2, base >> _SHIFT_2M),
                    (did, pasid, 3, base >> _SHIFT_1G)]
        elif range_key_count(base, size) < cached:
            keys = range_keys(group[0], group[1], base, size)
        else:
            keys = self.group_keys(group)
        get, end = self._get, base + size
        # ``IotlbEntry.overlaps`` inline: the page [iova_base, iova_base + 2^(3 + 9*level)).
        return self.drop_keys([
            k for k in keys if (e := get(k)) is not None and e.stage in stages
            and e.iova_base < end and base < e.iova_base + (1 << (3 + 9 * e.level))])


def _in_stages(stages: frozenset, spare_global: bool = False):
    def pred(_key: Hashable, e: IotlbEntry) -> bool:
        return e.stage in stages and not (spare_global and e.global_)

    return pred


def _nested_or(pred):
    def either(key: Hashable, e: IotlbEntry) -> bool:
        return e.stage == STAGE_NESTED or pred(key, e)

    return either


def _overlapping(stages: frozenset, base: int, size: int, spare_global: bool):
    def pred(_key: Hashable, e: IotlbEntry) -> bool:
        return (e.stage in stages and not (spare_global and e.global_)
                and e.overlaps(base, size))

    return pred
