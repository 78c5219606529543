"""The PASID-cache: decoded scalable-mode PASID-table entries (VT-d spec 6.2.2).

Entries are looked up by (source-id, PASID) and tagged for invalidation with (DID, PASID)
(spec 6.2.2; reference section 15).  Granularities of the PASID-cache invalidate descriptor
(type 7, spec 6.5.2.2): global (G=11), domain-selective (G=00: every entry tagged DID) and
PASID-selective (G=01: DID and PASID).

Under caching mode a not-present PASID entry may be cached; its DID tag is whatever the
translation flow stored (the DID field of the entry as read).  Which DID hardware uses to tag
a not-present PASID entry is unconfirmed: the DID-0 rule of spec 6.1 is stated for context
entries.

Not modelled: PASID-directory entries as a separate cache (a not-present directory entry is
folded into a not-present PASID entry by the translation flow); the type-7 granularity 10
(reserved) is rejected by the descriptor validator, not here.
"""

from __future__ import annotations

from vtdsim.hardware.caches.base import LruCache
from vtdsim.records import record


@record
class PasidCacheEntry:
    """A PASID-table entry as the translation flow decoded it."""

    sid: int
    pasid: int
    did: int
    present: bool
    pgtt: int
    raw: int  # the 512-bit entry as fetched
    ssptptr: int = 0
    levels: int = 0  # second-stage depth from AW
    fsptptr: int = 0
    fspm: int = 0  # 0: 4-level, 1: 5-level first stage
    sre: bool = False
    ere: bool = False
    wpe: bool = False
    nxe: bool = False
    eafe: bool = False
    ssee: bool = False
    ssade: bool = False
    pwsnp: bool = False
    pgsnp: bool = False
    fpd: bool = False


class PasidCache(LruCache):
    """PASID-cache keyed by (sid, pasid)."""

    def __init__(self, capacity: int = 64, name: str = "pasid_cache"):
        super().__init__(name, capacity)

    def invalidate_domain(self, did: int) -> int:
        """G=00 domain-selective: every entry tagged with ``did``."""
        return self.invalidate_where(lambda _k, e: e.did == did)

    def invalidate_pasid(self, did: int, pasid: int) -> int:
        """G=01 PASID-selective: entries tagged (``did``, ``pasid``), for every source-id."""
        return self.invalidate_where(lambda _k, e: e.did == did and e.pasid == pasid)
