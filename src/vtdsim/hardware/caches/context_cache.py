"""The context-cache: decoded legacy and scalable-mode context entries (VT-d spec 6.2.1).

Entries are tagged with the source-id; legacy entries also carry the domain-id of the entry
(spec 6.2.1).  Under caching mode a not-present (or erroneous) entry may be cached too; the
spec tags such entries with domain-id 0 (spec 6.1, reference section 12), which is why Linux
invalidates with DID 0 after making a context entry present.

Granularities (spec 6.5.2.1 context-cache invalidate descriptor, CCMD.CIRG in 6.5.1.1):

* global - every entry;
* domain-selective - legacy entries tagged with the DID.  Scalable-mode entries carry no DID
  (the DID lives in the PASID entry), so a domain-selective invalidation cannot select them:
  we drop them all, as QEMU's vtd_context_global_invalidate does for any non-device
  granularity.  Invalidating more than asked is always legal (hardware reports the granularity
  it used in CAIG); whether real scalable-mode hardware keeps them is unconfirmed;
* device-selective - entries whose SID matches under the function mask FM (00 exact, 01 ignores
  SID bit 2, 10 bits 2:1, 11 bits 2:0) *and*, for legacy entries, whose DID matches: the
  spec (6.5.1.1 CIRG=11) asks software for "the domain-id programmed in the context-entry",
  so we hold hardware to it (QEMU's vtd_context_device_invalidate ignores the DID; a driver
  passing the wrong DID works on QEMU only).  In scalable mode the DID is ignored (6.5.2.1).

Not modelled: whether a scalable-mode context-cache invalidation also drops PASID-cache entries
(reference section 15: unconfirmed; we do not, so software must invalidate both as the spec
orders in 6.5.3.4).
"""

from __future__ import annotations

from vtdsim.hardware.caches.base import LruCache
from vtdsim.records import record

# FM field (CCMD 33:32, descriptor 49:48): SID bits hardware ignores when matching.
FM_IGNORED_SID_BITS = {0: 0b000, 1: 0b100, 2: 0b110, 3: 0b111}

# Spec 6.1 / reference 12: cached not-present entries are tagged with DID 0.
NOT_PRESENT_DID = 0


@record
class ContextCacheEntry:
    """A context entry as the translation flow decoded it (legacy or scalable)."""

    sid: int
    present: bool
    raw: int  # the 128- or 256-bit entry as fetched
    did: int | None = None  # legacy only; scalable entries are not DID-tagged
    tt: int = 0
    levels: int = 0
    ssptptr: int = 0
    fpd: bool = False
    scalable: bool = False
    pasid_dir: int = 0
    pdts: int = 0
    dte: bool = False
    paside: bool = False
    pre: bool = False
    rid_pasid: int = 0

    @property
    def tag_did(self) -> int | None:
        """The domain-id this entry is tagged with for invalidation, None when untagged."""
        if self.scalable:
            return None
        if not self.present or self.did is None:
            return NOT_PRESENT_DID
        return self.did


def sid_matches(entry_sid: int, sid: int, fm: int) -> bool:
    """Whether ``entry_sid`` is selected by a device-selective invalidation of ``sid``/``fm``."""
    keep = ~FM_IGNORED_SID_BITS[fm & 3]
    return (entry_sid & keep) == (sid & keep)


class ContextCache(LruCache):
    """Context-cache keyed by source-id."""

    def __init__(self, capacity: int = 64, name: str = "context_cache"):
        super().__init__(name, capacity)

    def invalidate_domain(self, did: int) -> int:
        """Domain-selective: legacy entries tagged ``did`` and every scalable-mode entry."""
        return self.invalidate_where(lambda _k, e: e.tag_did is None or e.tag_did == did)

    def invalidate_device(self, did: int, sid: int, fm: int) -> int:
        """Device-selective: entries of ``sid`` under ``fm``; legacy ones only if tagged ``did``."""
        return self.invalidate_where(
            lambda _k, e: sid_matches(e.sid, sid, fm) and e.tag_did in (None, did)
        )
