"""What each invalidation does to the unit's caches and the device-TLBs (VT-d spec 6.5).

Reference section 15, "which invalidation hits which cache", is the table this implements.

One function per descriptor granularity; the queued-invalidation engine and the register-based
interface (CCMD/IOTLB) both call these, so the two interfaces cannot disagree.  Every
invalidation also drains the write buffer (spec 6.8: any invalidation implicitly flushes it)
and is counted in ``unit.stats`` as ``inv_<function name>`` (entries dropped as
``inv_dropped_<cache>``).

Scopes, where the spec leaves room (details in each cache module):

* context-cache invalidations do not touch the PASID-cache (unconfirmed for scalable mode);
* IOTLB invalidations drop the IOTLB entries and the paging-structure entries of the same
  scope, except that PSI with IH=1 keeps the paging-structure entries (spec 6.5.2.3);
* no invalidation of the unit's caches reaches a device-TLB: only the device-TLB descriptors
  do, through an ATS Invalidate Request (spec 4.3, 6.5.2.5).

Not modelled: the interrupt-entry cache (interrupt remapping): IEC invalidations are counted
only; the completion timeout itself (an endpoint that does not respond times out at once).
"""

from __future__ import annotations

from typing import Any

from vtdsim.hardware.descriptors import devtlb_range


def _done(unit: Any, counter: str, iotlb: int = 0, pscache: int = 0, context_cache: int = 0,
          pasid_cache: int = 0) -> None:
    """Bookkeeping shared by every invalidation: write-buffer drain and counters (``counter``
    is ``inv_`` and the function's name; dropped entries count as ``inv_dropped_<cache>``,
    in this order - no invalidation drops from both an IOTLB-side and a context/PASID cache).
    Named parameters, not ``**dropped``: a page-selective flush is on every strict unmap."""
    unit.memory.flush_write_buffer()  # spec 6.8
    stats = unit.stats
    stats[counter] += 1
    if iotlb:
        stats["inv_dropped_iotlb"] += iotlb
    if pscache:
        stats["inv_dropped_pscache"] += pscache
    if context_cache:
        stats["inv_dropped_context_cache"] += context_cache
    if pasid_cache:
        stats["inv_dropped_pasid_cache"] += pasid_cache


# -- context-cache (type 1; CCMD) ----------------------------------------------------------------
def context_cache_global(unit: Any) -> None:
    _done(unit, "inv_context_cache_global", context_cache=unit.context_cache.invalidate_global())


def context_cache_domain(unit: Any, did: int) -> None:
    _done(unit, "inv_context_cache_domain", context_cache=unit.context_cache.invalidate_domain(did))


def context_cache_device(unit: Any, did: int, sid: int, fm: int) -> None:
    dropped = unit.context_cache.invalidate_device(did, sid, fm)
    _done(unit, "inv_context_cache_device", context_cache=dropped)


# -- IOTLB (type 2; IOTLB/IVA registers) -----------------------------------------------------------
def iotlb_global(unit: Any) -> None:
    _done(
        unit, "inv_iotlb_global",
        iotlb=unit.iotlb.invalidate_global(), pscache=unit.pscache.invalidate_global(),
    )


def iotlb_domain(unit: Any, did: int) -> None:
    _done(
        unit, "inv_iotlb_domain",
        iotlb=unit.iotlb.invalidate_domain(did), pscache=unit.pscache.invalidate_domain(did),
    )


def iotlb_page(unit: Any, did: int, addr: int, am: int, ih: int | bool) -> None:
    _done(
        unit, "inv_iotlb_page",
        iotlb=unit.iotlb.invalidate_page(did, addr, am, bool(ih)),
        pscache=unit.pscache.invalidate_page(did, addr, am, bool(ih)),
    )


# -- PASID-based IOTLB (type 6) ----------------------------------------------------------------
def piotlb_pasid(unit: Any, did: int, pasid: int) -> None:
    _done(
        unit, "inv_piotlb_pasid",
        iotlb=unit.iotlb.invalidate_pasid(did, pasid),
        pscache=unit.pscache.invalidate_pasid(did, pasid),
    )


def piotlb_page(unit: Any, did: int, pasid: int, addr: int, am: int, ih: int | bool) -> None:
    ih = bool(ih)
    _done(
        unit, "inv_piotlb_page",
        iotlb=unit.iotlb.invalidate_pasid_page(did, pasid, addr, am, ih),
        pscache=unit.pscache.invalidate_pasid_page(did, pasid, addr, am, ih),
    )


# -- PASID-cache (type 7) -----------------------------------------------------------------------
def pasid_cache_global(unit: Any) -> None:
    _done(unit, "inv_pasid_cache_global", pasid_cache=unit.pasid_cache.invalidate_global())


def pasid_cache_domain(unit: Any, did: int) -> None:
    _done(unit, "inv_pasid_cache_domain", pasid_cache=unit.pasid_cache.invalidate_domain(did))


def pasid_cache_pasid(unit: Any, did: int, pasid: int) -> None:
    dropped = unit.pasid_cache.invalidate_pasid(did, pasid)
    _done(unit, "inv_pasid_cache_pasid", pasid_cache=dropped)


# -- device-TLB (types 3 and 8) ---------------------------------------------------------------
def device_tlb(
    unit: Any, sid: int, pasid: int | None, addr_field: int, s: int | bool, global_: bool = False
) -> bool:
    """Send an ATS Invalidate Request for the S-bit encoded range (spec 6.5.2.5/6.5.2.6, ATS;
    reference 11.3) to the endpoint at ``sid``.  ``pasid`` None is a type-3 request (no PASID
    prefix); ``global_`` is type 8's G bit (all PASIDs, global translations included - QEMU's
    reading; the exact semantics are unconfirmed).  False when no completion comes back: the
    caller raises ITE with ITESID (spec 6.5.2.5)."""
    base, size = devtlb_range(addr_field, int(s))
    _done(unit, "inv_device_tlb" if pasid is None else "inv_p_device_tlb")
    endpoint = unit.endpoints.get(sid)
    if endpoint is None:
        # No modelled function at this SID holds translations; we let the request complete
        # (QEMU accepts them and does nothing; whether real hardware times out on an absent
        # function is unconfirmed).
        unit.stats["inv_device_tlb_no_endpoint"] += 1
        return True
    if endpoint.ats_invalidate(pasid, base, size, all_pasids=bool(global_)):
        return True
    unit.stats["inv_device_tlb_timeout"] += 1
    return False


# -- interrupt-entry cache (type 4) -------------------------------------------------------------
def iec(unit: Any, g: int = 0, iidx: int = 0, im: int = 0) -> None:
    """Interrupt-entry-cache invalidation: counted only (interrupt remapping not modelled)."""
    _done(unit, "inv_iec_global" if not g else "inv_iec_index")
