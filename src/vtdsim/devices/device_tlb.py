"""The device-TLB: the ATS address-translation cache inside an endpoint (VT-d spec 4.1-4.3).

PCIe ATS semantics as summarised in reference section 16.

Entries come from ATS Translation Completions: a naturally aligned power-of-two range of at
least 4 KiB (the completion's S bit encoding), the translated address and the R/W permissions
granted, per PASID (None for translations requested without a PASID prefix).  Keyed
``(pasid, shift, iova >> shift)`` so a lookup probes each page size ever filled, smallest
first.  LRU replacement on the common ``LruCache`` base; any entry may be dropped at any moment
and the device may request a translation at any moment (both are the checker's freedoms).

Invalidation follows an ATS Invalidate Request: every entry of the PASID (or, for a request
without PASID, every entry filled without PASID) overlapping the range goes; a request with the
"global" flag (VT-d type 8 G=1) reaches every PASID.  Whether a request without PASID also
reaches PASID-tagged entries is unconfirmed; we follow Linux, which sends type 3 for RID_PASID
traffic and type 8 for other PASIDs (reference 14.2).

Not modelled: the invalidate queue depth (MIP) and completion timing, the U (untranslated
only) and N (non-snooped) bits of completions, PRI page requests.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from vtdsim.errors import ModelError, hexval
from vtdsim.hardware.caches.base import LruCache, ranges_overlap

PAGE_SHIFT = 12


@dataclass(frozen=True, slots=True)
class DeviceTlbEntry:
    """One translation the endpoint received in an ATS Translation Completion."""

    pasid: int | None
    base: int  # untranslated address, aligned to size
    size: int  # power of two >= 4 KiB
    hpa: int  # translated address of base
    read: bool
    write: bool
    exe: bool = False
    priv: bool = False
    snp: bool = False
    global_: bool = False

    @property
    def shift(self) -> int:
        return self.size.bit_length() - 1

    @property
    def key(self) -> tuple:
        return (self.pasid, self.shift, self.base >> self.shift)

    def translate(self, iova: int) -> int:
        return self.hpa | (iova & (self.size - 1))

    def permits(self, write: bool) -> bool:
        return self.write if write else self.read


def check_range(base: int, size: int) -> None:
    """An ATC range is a power of two of at least 4 KiB, aligned to its size."""
    if size < 1 << PAGE_SHIFT or size & (size - 1) or base & (size - 1):
        raise ModelError(f"ATC range {hexval('base', base)} {hexval('size', size)} malformed")


class DeviceTlb(LruCache):
    """An endpoint's ATC."""

    def __init__(self, capacity: int = 64, name: str = "device_tlb"):
        super().__init__(name, capacity)
        self._shifts: list[int] = []  # every page size ever filled, ascending

    def lookup(self, pasid: int | None, iova: int) -> DeviceTlbEntry | None:
        """The entry translating ``iova`` for ``pasid``, refreshing its recency."""
        return self.lookup_first([(pasid, shift, iova >> shift) for shift in self._shifts])

    def fill(self, key: Hashable, entry: DeviceTlbEntry) -> Hashable | None:
        check_range(entry.base, entry.size)
        if key != entry.key:
            raise ModelError(f"{self.name}: key {key!r} is not the entry's key {entry.key!r}")
        if entry.shift not in self._shifts:
            self._shifts = sorted([*self._shifts, entry.shift])
        return super().fill(key, entry)

    def fill_entry(self, entry: DeviceTlbEntry) -> Hashable | None:
        return self.fill(entry.key, entry)

    def invalidate(self, pasid: int | None, base: int, size: int, *,
                   all_pasids: bool = False) -> int:
        """An ATS Invalidate Request: drop the entries of ``pasid`` (every PASID when
        ``all_pasids``) overlapping [base, base+size)."""

        def hit(_key: Hashable, e: DeviceTlbEntry) -> bool:
            return (all_pasids or e.pasid == pasid) and ranges_overlap(e.base, e.size, base, size)

        return self.invalidate_where(hit)
