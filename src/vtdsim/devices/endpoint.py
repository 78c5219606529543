"""A PCIe endpoint doing DMA through a remapping unit, with or without ATS (VT-d spec 3.4, 4).

Without ATS every access is an untranslated request (AT=00) the unit translates.  With ATS
enabled the endpoint looks its device-TLB up; on a miss it sends a Translation Request (AT=01),
caches the completion, and then issues a Translated request (AT=10) carrying the host address,
which the unit passes without a walk when the context allows ATS (spec 4.2).  Every request
stays inside one 4 KiB page (PCIe forbids a request to cross a 4 KiB boundary), so a longer
access becomes one request per page.

A ``DmaResult`` records the host address each request reached (what the checker's properties
need) and is falsy when the access faulted or the ATS completion did not grant it.

Snooping: an access is snooped unless the request has the No-Snoop attribute and nothing
forces snooping: the unit's answer (SNP / PGSNP, spec 3.9) or, with ATS, the translation the
device cached.  Whether the unit forces snooping of translated requests from the completion
alone is unconfirmed; we honour both.

Not modelled: the Invalidate Queue Depth (``ats_queue_depth`` is carried for MIP only),
invalidation-completion timing (a non-responding endpoint times out at once), PRI page
requests, atomics, zero-length reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vtdsim.devices.device_tlb import DeviceTlb, DeviceTlbEntry
from vtdsim.errors import ModelError, SpecRuleBroken, hexval
from vtdsim.hardware.request import (
    AT_TRANSLATED,
    AT_TRANSLATION_REQUEST,
    AT_UNTRANSLATED,
    DmaRequest,
    format_sid,
)

PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class AtsDenied:
    """The Translation Completion granted no right for this access, so the function did not
    issue it (PCIe ATS: a function uses a translation only as its R/W bits allow).  No fault is
    recorded by the unit (spec 4.2.3: translation requests report through the completion)."""

    sid: int
    addr: int
    write: bool
    pasid: int | None = None

    def __bool__(self) -> bool:
        return False

    def describe(self) -> str:
        pasid = "" if self.pasid is None else f" {hexval('pasid', self.pasid)}"
        kind = "write" if self.write else "read"
        return f"ATS denied {kind} sid={format_sid(self.sid)} {hexval('addr', self.addr)}{pasid}"


@dataclass(frozen=True, slots=True)
class DmaResult:
    """What one endpoint DMA did: the host address of its first byte, the bytes read (reads
    only), the fault that stopped it (a unit ``Fault`` or ``AtsDenied``), and the host
    address of every per-page request that reached memory."""

    hpa: int | None
    data: bytes | None
    fault: Any = None
    pages: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return self.fault is None


def page_chunks(addr: int, n: int) -> Iterator[tuple[int, int, int]]:
    """``(address, offset, length)`` of each request of an ``n``-byte access at ``addr``."""
    offset = 0
    while offset < n:
        here = addr + offset
        length = min(n - offset, PAGE_SIZE - (here & (PAGE_SIZE - 1)))
        yield here, offset, length
        offset += length


class Endpoint:
    """A PCIe function at ``sid``; ``ats`` says ATS is enabled in its ATS capability."""

    def __init__(
        self,
        sid: int,
        *,
        ats: bool = False,
        ats_queue_depth: int = 0,
        pasid_capable: bool = False,
        respond_to_invalidations: bool = True,
        device_tlb_capacity: int = 64,
    ):
        self.sid = sid
        self.ats = ats
        self.ats_queue_depth = ats_queue_depth
        self.pasid_capable = pasid_capable
        self.respond_to_invalidations = respond_to_invalidations
        self.device_tlb = DeviceTlb(device_tlb_capacity, name=f"device_tlb[{format_sid(sid)}]")
        self.unit: Any = None
        self.stats: Counter[str] = Counter()

    def connect(self, unit: Any) -> None:
        """Put the function behind ``unit``: its DMA goes there, and so do its invalidations."""
        self.unit = unit
        unit.attach_endpoint(self)

    # -- DMA ------------------------------------------------------------------------------------
    def dma_read(self, iova: int, n: int, pasid: int | None = None,
                 no_snoop: bool = False) -> DmaResult:
        return self._dma(iova, n, None, pasid, no_snoop)

    def dma_write(self, iova: int, data: bytes, pasid: int | None = None,
                  no_snoop: bool = False) -> DmaResult:
        return self._dma(iova, len(data), bytes(data), pasid, no_snoop)

    def _dma(self, iova: int, n: int, data: bytes | None, pasid: int | None,
             no_snoop: bool) -> DmaResult:
        self._check_can_send(pasid)
        write = data is not None
        memory = self.unit.memory
        out = bytearray()
        pages: list[int] = []
        for addr, offset, length in page_chunks(iova, n):
            hpa, snoop, fault = self._target(addr, write, pasid, no_snoop)
            if fault is not None:
                return DmaResult(pages[0] if pages else None, None, fault, tuple(pages))
            pages.append(hpa)
            if write:
                memory.dma_write(hpa, data[offset : offset + length], snoop=snoop)
            else:
                out += memory.dma_read(hpa, length, snoop=snoop)
        self.stats["dma_writes" if write else "dma_reads"] += 1
        return DmaResult(pages[0] if pages else None, None if write else bytes(out), None,
                         tuple(pages))

    def _target(self, addr: int, write: bool, pasid: int | None,
                no_snoop: bool) -> tuple[int, bool, Any]:
        """(host address, snooped, fault) of one page-bounded request."""
        if not self.ats:
            return self._request(addr, write, pasid, no_snoop, AT_UNTRANSLATED, forced=False)
        entry = self.device_tlb.lookup(pasid, addr)
        if entry is None or not entry.permits(write):
            # A miss, or a cached translation lacking the right: ask the unit again (a function
            # may re-request at any time; the unit's answer may have changed).
            entry = self._translation_request(addr, pasid, write)
            if not entry:
                return 0, True, entry
            if not entry.permits(write):
                return 0, True, AtsDenied(self.sid, addr, write, pasid)
        return self._request(entry.translate(addr), write, pasid, no_snoop, AT_TRANSLATED,
                             forced=entry.snp)

    def _request(self, addr: int, write: bool, pasid: int | None, no_snoop: bool, at: int,
                 forced: bool) -> tuple[int, bool, Any]:
        req = DmaRequest(self.sid, addr, write, pasid, at, no_snoop=no_snoop)
        self.stats["translated_requests" if at == AT_TRANSLATED else "untranslated_requests"] += 1
        result = self.unit.access(req)
        if not result:
            return 0, True, result
        hpa = result.hpa | (addr & result.offset_mask)
        return hpa, not no_snoop or forced or bool(result.snp), None

    # -- ATS --------------------------------------------------------------------------------------
    def _translation_request(self, iova: int, pasid: int | None,
                             write: bool) -> DeviceTlbEntry | Any:
        """Send a Translation Request (NW = not ``write``); cache a completion granting any
        right.  Returns the cached entry, an uncached entry granting nothing, or the Fault."""
        self.stats["translation_requests"] += 1
        req = DmaRequest(self.sid, iova, write, pasid, AT_TRANSLATION_REQUEST)
        result = self.unit.access(req)
        if not result:
            return result
        entry = DeviceTlbEntry(
            pasid=pasid,
            base=result.iova_base,
            size=result.size,
            hpa=result.hpa,
            read=bool(result.read),
            write=bool(result.write),
            exe=bool(result.exe),
            snp=bool(result.snp),
            global_=bool(getattr(result, "global_", False)),
        )
        if entry.read or entry.write:
            self.device_tlb.fill_entry(entry)
        return entry

    def ats_prefetch(self, iova: int, pasid: int | None = None,
                     write: bool = False) -> DeviceTlbEntry | Any:
        """The device may fill its ATC at any moment (a checker freedom): one Translation
        Request for ``iova``."""
        self._check_can_send(pasid)
        if not self.ats:
            raise SpecRuleBroken(
                f"endpoint {format_sid(self.sid)} sent a Translation Request without ATS enabled",
                spec="PCIe ATS capability, ATS Control.Enable",
            )
        return self._translation_request(iova, pasid, write)

    def ats_invalidate(self, pasid: int | None, base: int, size: int, *,
                       all_pasids: bool = False) -> bool:
        """An ATS Invalidate Request from the unit; False when the function does not answer
        (the unit then reports ITE)."""
        if not self.respond_to_invalidations:
            self.stats["ats_invalidations_ignored"] += 1
            return False
        self.stats["ats_invalidations"] += 1
        self.device_tlb.invalidate(pasid, base, size, all_pasids=all_pasids)
        return True

    # -- checks -----------------------------------------------------------------------------------
    def _check_can_send(self, pasid: int | None) -> None:
        if self.unit is None:
            raise ModelError(f"endpoint {format_sid(self.sid)} is not connected to a unit")
        if pasid is not None and not self.pasid_capable:
            raise SpecRuleBroken(
                f"endpoint {format_sid(self.sid)} without PASID capability sent "
                f"{hexval('pasid', pasid)}",
                spec="PCIe PASID TLP prefix needs the PASID capability",
            )

    def __repr__(self) -> str:
        ats = " ats" if self.ats else ""
        return f"Endpoint({format_sid(self.sid)}{ats})"
