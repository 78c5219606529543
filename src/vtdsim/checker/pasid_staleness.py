"""Seed 001's properties: stale translations for a PASID after its teardown, and PASID-cache /
IOTLB entries fetched through a scalable-mode context entry that has since changed (VT-d spec
6.5.3.3; reference vtd-hardware.md 14.5 and 14.6).  The ``Monitor`` owns one ``PasidWatch``
and forwards it the thread and hardware events.

* ``stale_after_pasid_teardown``: when ``remove_dev_pasid`` completes, no PASID-cache entry of
  (SID, PASID), no IOTLB entry of (old DID, PASID) and no device-TLB entry of the PASID still
  translates, and no DMA with that PASID succeeds until the PASID is attached again;
* ``stale_after_context_change``: when ``context_flip_pri`` completes, no PASID-cache or IOTLB
  entry of the device fetched through the context entry's *old* value is left, for a PASID
  whose entry is still present (14.5: the context change may be reflected in those caches, so
  every DID of a present PASID entry is invalidated).  An entry of a PASID being torn down is
  the teardown's to flush (``stale_after_pasid_teardown``).

Where an entry came from is tracked per fill: a DMA or ATS request uses the context-cache entry
it finds (or fills), and its IOTLB fill the PASID-cache entry it used; a cache-fill freedom
walks current memory (the dry walk), so everything it inserts comes through the context entry
in memory.

Not modelled: IOTLB entries shared by two devices of one domain under the same PASID are
attributed to the device whose request filled them; paging-structure caches (a stale one
needs a PASID-cache entry to be reached, and the teardown's IOTLB DSI drops them with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vtdsim.hardware.pasid_table import (
    PASID_DIR_ENTRY,
    PASID_ENTRY,
    pasid_dir_entry_addr,
    pasid_entry_addr,
)

STALE_AFTER_PASID_TEARDOWN = "stale_after_pasid_teardown"
STALE_AFTER_CONTEXT_CHANGE = "stale_after_context_change"
TRACKED = ("pasid_cache", "iotlb")  # the caches whose entries a context entry may shape


@dataclass(frozen=True)
class Origin:
    """A cached entry (the object itself: a refill is a new object), the device whose request
    filled it, and the raw context entry the fill went through."""

    entry: Any
    sid: int
    via: int


@dataclass
class Detach:
    """A ``remove_dev_pasid`` in progress: the domain and the DIDs the PASID used."""

    domain: str | None
    dids: tuple[int, ...]


@dataclass
class PasidWatch:
    system: Any
    flag: Callable[[str, str], str]
    detaching: dict[tuple[str, int], Detach] = field(default_factory=dict)
    detached: dict[tuple[str, int], int] = field(default_factory=dict)  # -> step it completed
    origins: dict[tuple[str, Any], Origin] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The initial state's entries (the scenario's warm-up DMA) came through the context
        # entries cached now.
        for name in sorted(self.system.endpoints):
            self.filled(self.system.endpoint(name).sid, None)

    # -- thread events ----------------------------------------------------------------------
    def op_begin(self, op) -> None:
        if op.kind == "remove_dev_pasid":
            key = (op["device"], op["pasid"])
            name = self.system.pasid_members.get(key)
            domain = self.system.domains.get(name) if name else None
            dids = tuple(self.system.dids(domain)) if domain is not None else ()
            self.detaching[key] = Detach(name, dids)
        elif op.kind == "set_dev_pasid":
            self.detached.pop((op["device"], op["pasid"]), None)

    def op_done(self, op, clock: int) -> None:
        if op.kind == "remove_dev_pasid":
            key = (op["device"], op["pasid"])
            self._teardown_done(*key, self.detaching.pop(key, Detach(None, ())))
            self.detached[key] = clock
        elif op.kind == "context_flip_pri":
            self._context_change_done(op["device"])

    # -- hardware events --------------------------------------------------------------------
    def dma(self, device: str, pasid: int | None, iova: int, result) -> str | None:
        """A DMA with a PASID that succeeds after the PASID's teardown completed."""
        done = self.detached.get((device, pasid)) if pasid is not None else None
        if done is None or result.fault is not None or not result.pages:
            return None
        return self.flag(STALE_AFTER_PASID_TEARDOWN,
                         f"DMA with pasid={pasid:#x} at iova={iova:#x} reached "
                         f"page={result.pages[0] & ~0xFFF:#x} after remove_dev_pasid "
                         f"completed at step {done}")

    def filled(self, sid: int, via: int | None) -> None:
        """Note where the entries new since the last hardware step came from: ``via`` is the
        context entry a dry walk read; None for a real request (its cached entries)."""
        unit = self.system.unit(0)
        if unit.ttm != 1:
            return  # legacy mode: no PASID cache, and context_flip_pri is scalable-mode only
        pasids = [(k, e) for k, e in unit.pasid_cache.items()
                  if k[0] == sid and self._is_new("pasid_cache", k, e)]
        tlbs = [(k, e) for k, e in unit.iotlb.items() if self._is_new("iotlb", k, e)]
        ctx = via if via is not None or not (pasids or tlbs) else self._context_used(sid)
        if ctx is None:
            return
        for key, entry in pasids:
            self.origins[("pasid_cache", key)] = Origin(entry, sid, ctx)
        for key, entry in tlbs:
            through = self.origins.get(("pasid_cache", (sid, key[1])))
            fresh = via is not None or through is None
            self.origins[("iotlb", key)] = Origin(entry, sid, ctx if fresh else through.via)

    def _is_new(self, cache: str, key: Any, entry: Any) -> bool:
        known = self.origins.get((cache, key))
        return known is None or known.entry is not entry

    def _context_used(self, sid: int) -> int | None:
        ce = self.system.unit(0).context_cache.peek(sid)
        return ce.raw if ce is not None else self._context_in_memory(sid)

    def _context_in_memory(self, sid: int) -> int | None:
        fills = self.system.unit(0).possible_fills(sid, 0)
        return next((f.entry.raw for f in fills if f.cache == "context_cache"), None)

    # -- checks -----------------------------------------------------------------------------
    def _teardown_done(self, device: str, pasid: int, detach: Detach) -> None:
        unit = self.system.unit(0)
        ep = self.system.endpoint(device)
        where = f"after remove_dev_pasid({device}, pasid={pasid:#x})"
        pe = unit.pasid_cache.peek((ep.sid, pasid))
        if pe is not None and pe.present:
            self.flag(STALE_AFTER_PASID_TEARDOWN, f"PASID-cache still holds pasid={pasid:#x} "
                                                  f"(did={pe.did}) {where}")
        if not self._shared(device, pasid, detach.domain):
            for key, entry in unit.iotlb.items():
                if key[1] == pasid and key[0] in detach.dids and entry.present:
                    self.flag(STALE_AFTER_PASID_TEARDOWN,
                              f"iotlb still maps iova={entry.iova_base:#x} (did={key[0]}, "
                              f"pasid={pasid:#x}) {where}")
        for _, e in ep.device_tlb.items():
            if e.pasid == pasid and (e.read or e.write):
                self.flag(STALE_AFTER_PASID_TEARDOWN, f"device-TLB of {device} still maps "
                                                      f"iova={e.base:#x} {where}")

    def _shared(self, device: str, pasid: int, domain: str | None) -> bool:
        """Another device still attached to the domain under the same PASID tags its IOTLB
        entries alike (IOTLB entries carry no SID)."""
        members = self.system.pasid_members
        return domain is not None and any(dom == domain and p == pasid and d != device
                                          for (d, p), dom in members.items())

    def _context_change_done(self, device: str) -> None:
        sid = self.system.endpoint(device).sid
        now = self._context_in_memory(sid)
        unit = self.system.unit(0)
        for (cache, key), origin in sorted(self.origins.items(), key=repr):
            if origin.sid != sid or origin.via == now:
                continue
            if getattr(unit, cache).peek(key) is not origin.entry or not origin.entry.present:
                continue
            if self._pasid_present(device, key[1]):
                self.flag(STALE_AFTER_CONTEXT_CHANGE,
                          f"{cache}[{key}] was fetched through the old context entry "
                          f"{origin.via:#x} and survives context_flip_pri({device})")

    def _pasid_present(self, device: str, pasid: int) -> bool:
        """The driver's PASID entry for ``pasid`` has P set (the CPU's view)."""
        info = self.system.devices.get(device)
        table = getattr(info, "pasid_table", None)
        if table is None:
            return False
        memory = self.system.platform.memory
        pde = memory.cpu_load(pasid_dir_entry_addr(table.directory, pasid), 8)
        if not PASID_DIR_ENTRY.get(pde, "p"):
            return False
        entries = PASID_DIR_ENTRY.get(pde, "pasid_table_ptr") << 12
        return bool(PASID_ENTRY.get(memory.cpu_load(pasid_entry_addr(entries, pasid), 8),
                                    "p"))
