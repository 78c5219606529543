"""QEMU's handler per invalidation descriptor type (QEMU hw/i386/intel_iommu.c
``vtd_process_context_cache_desc``, ``vtd_process_iotlb_desc``,
``vtd_process_device_iotlb_desc``, ``vtd_process_inv_iec_desc``, ``vtd_process_piotlb_desc``,
``vtd_process_pasid_desc``): the cache effects through ``hardware.invalidation`` (the spec's),
then the work QEMU adds - trace events, address-space switches, shadow syncs, notifications,
the nesting hooks.  ``vmm`` is a ``vmm.Vmm``.

Not modelled: the PASID address spaces of later QEMU (only the RID's are synced).
"""

from __future__ import annotations

from vtdsim.hardware import invalidation as inv
from vtdsim.hardware.caches.context_cache import sid_matches
from vtdsim.hardware.descriptors import devtlb_range
from vtdsim.virtualization import qemu
from vtdsim.virtualization.address_space import DEVIOTLB_UNMAP, MAP, UNMAP, IommuEvent


def _context_cache(vmm, f: dict) -> None:
    unit = vmm.unit
    if f["g"] in (1, 2):
        # vtd_process_context_cache_desc: domain-selective falls through to global
        # (vtd_context_global_invalidate, which traces cc_global itself).
        if f["g"] == 2:
            vmm.trace("vtd_inv_desc_cc_domain", f["did"])
        vmm.trace("vtd_inv_desc_cc_global")
        inv.context_cache_global(unit)
        vmm.refresh_all()
        for vas in vmm.with_notifiers():
            vmm.sync(vas)
        _pasid_resync(vmm, f)
        return
    vmm.trace("vtd_inv_desc_cc_devices", f["sid"], f["fm"])
    inv.context_cache_device(unit, f["did"], f["sid"], f["fm"])
    # vtd_context_device_invalidate matches bus and masked devfn only, whatever the DID:
    # an entry the spec's DID-tagged rule would keep is dropped too.
    sid, fm = f["sid"], f["fm"]
    unit.context_cache.invalidate_where(lambda _key, e: sid_matches(e.sid, sid, fm))
    for sid in sorted(vmm.address_spaces):
        if sid_matches(sid, f["sid"], f["fm"]):
            vmm.trace("vtd_inv_desc_cc_device", sid)
            vas = vmm.address_spaces[sid]
            vmm.switch(vas)
            vmm.sync(vas)
    _pasid_resync(vmm, f)


def _pasid_resync(vmm, f: dict) -> None:
    """The nesting series resyncs the PASID cache after a context-cache invalidation too (a
    workaround for guests that program the context entry after the PASID entry and skip
    the PASID-cache flush; reference section 4)."""
    if vmm.version.pasid_cache == qemu.PROCESS:
        for hook in vmm.bind_hooks:
            hook(1, f)


def _iotlb(vmm, f: dict) -> None:
    """``vtd_process_iotlb_desc`` by granularity (global, domain, page)."""
    if f["g"] == 1:
        _iotlb_global(vmm, f)
    elif f["g"] == 2:
        _iotlb_domain(vmm, f)
    else:
        _iotlb_page(vmm, f)


def _iotlb_global(vmm, f: dict) -> None:
    vmm.trace("vtd_inv_desc_iotlb_global")
    inv.iotlb_global(vmm.unit)
    for vas in vmm.with_notifiers():
        vmm.sync(vas)


def _iotlb_domain(vmm, f: dict) -> None:
    """``vtd_iotlb_domain_invalidate``: the DID's entries dropped, then one full sync of
    every notifier address space in that domain (Peter Xu's 2018 rework)."""
    vmm.trace("vtd_inv_desc_iotlb_domain", f["did"])
    inv.iotlb_domain(vmm.unit, f["did"])
    for vas in vmm.with_notifiers():
        if vmm.tables(vas).did == f["did"]:
            vmm.sync(vas)


def _iotlb_page(vmm, f: dict) -> None:
    """``vtd_iotlb_page_invalidate``: the range's entries dropped, then its notify."""
    vmm.trace("vtd_inv_desc_iotlb_pages", f["did"], f["addr"], f["am"])
    inv.iotlb_page(vmm.unit, f["did"], f["addr"], f["am"], f["ih"])
    _page_notify(vmm, f["did"], f["addr"], 1 << (12 + f["am"]))


def _page_notify(vmm, did: int, addr: int, size: int) -> None:
    """``vtd_iotlb_page_invalidate_notify``: a range walk for MAP listeners, else one UNMAP."""
    base = addr & ~(size - 1)
    for vas in vmm.with_notifiers():
        tables = vmm.tables(vas)
        if tables.did != did or not tables.kind:
            continue
        if vas.has(MAP) and tables.ss_root is not None:
            vmm.walk(vas, tables.ss_root, base, base + size, notify_unmap=True)
        else:
            vas.notify(IommuEvent(UNMAP, base, size), vmm.stats)


def _device_tlb(vmm, f: dict) -> None:
    """``vtd_process_device_iotlb_desc``: DEVIOTLB_UNMAP to the SID's address space; no
    address space, or nobody listening: accepted, nothing done."""
    base, size = devtlb_range(f["addr"], f["s"])
    vas = vmm.address_spaces.get(f["sid"])
    if vas is not None:
        vas.notify(IommuEvent(DEVIOTLB_UNMAP, base, size), vmm.stats)


def _iec(vmm, f: dict) -> None:
    vmm.trace("vtd_inv_desc_iec", f["g"], f["iidx"], f["im"])
    inv.iec(vmm.unit, f["g"], f["iidx"], f["im"])


def _p_iotlb(vmm, f: dict) -> None:
    """10.0 ``vtd_process_piotlb_desc``: G=2 drops the (DID, PASID) entries and syncs the
    domain's address spaces; G=3 drops the range's entries."""
    if f["g"] == 2:
        inv.piotlb_pasid(vmm.unit, f["did"], f["pasid"])
        for vas in vmm.with_notifiers():
            if vmm.tables(vas).did == f["did"]:
                vmm.sync(vas)
    else:
        inv.piotlb_page(vmm.unit, f["did"], f["pasid"], f["addr"], f["am"], f["ih"])
    for hook in vmm.bind_hooks:
        hook(6, f)


def _pasid_cache(vmm, f: dict) -> None:
    """A version that processes type 7 (the nesting series' ``vtd_process_pasid_desc``):
    each bound device re-reads its PASID entry."""
    for hook in vmm.bind_hooks:
        hook(7, f)


HANDLERS = {1: _context_cache, 2: _iotlb, 3: _device_tlb, 4: _iec, 6: _p_iotlb,
             7: _pasid_cache}
