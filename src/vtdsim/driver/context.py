"""Root and context entries as the driver programs them, Linux drivers/iommu/intel/iommu.c and
pasid.c (``iommu_context_addr``, ``domain_context_mapping_one``, ``context_present_cache_flush``,
``domain_context_clear_one``, ``intel_context_flush_present`` / ``_no_pasid``,
``context_flip_pri``, ``device_pasid_table_setup`` / ``_teardown``); 6.1 programs the
scalable-mode context entry at attach and zeroes entries before flushing, mainline programs it
at probe and clears Present first (switches ``sm_context_setup``, ``context_clear_present_first``;
seed 001's ``context_flush_under_iommu_lock`` says whether the flush runs inside iommu->lock).

Not modelled: kdump copied contexts, DMA aliases, TT=pass-through for legacy identity domains
without ECAP.PT (Linux then builds an identity SS table; we require ECAP.PT).
"""

from __future__ import annotations

from vtdsim.driver import qi
from vtdsim.driver.device import DeviceInfo
from vtdsim.driver.domain import FLPT_DEFAULT_DID, DmarDomain
from vtdsim.driver.pasid import (
    present_pasid_dids,
    write_entry_present_last,
    zero_entry,
)
from vtdsim.driver.steps import AllocPage, CpuRead, CpuWrite, CpuZero, Lock, Unlock
from vtdsim.hardware.root_table import (
    CONTEXT_ENTRY,
    SM_CONTEXT_ENTRY,
    TT_PASS_THROUGH,
    TT_SS,
    TT_SS_ATS,
    context_entry_addr,
    root_entry_addr,
    sm_context_entry_addr,
)
from vtdsim.hardware.second_stage import aw_from_levels

PAGE_SIZE = 4096
CONTEXT_BYTES = 16  # Linux's struct context_entry is 128 bits in both modes (upper half zero)
DMA_CCMD_MASK_NOBIT = 0  # FM: no function-mask bits
MAX_AGAW_PFN_WIDTH = 52


def iommu_context_addr(iommu, bus: int, devfn: int, alloc: bool):
    """Address of the context entry, allocating the context table (zeroed, clflushed, then
    linked from the root entry) when ``alloc``; None if absent.  In scalable mode devfn >= 128
    lives in the table of the root entry's upper half."""
    upper = iommu.sm_enabled and devfn >= 0x80
    root_qw = root_entry_addr(iommu.root_table, bus) + (8 if upper else 0)
    root = yield CpuRead(addr=root_qw, size=8, why="iommu_context_addr")
    if root & 1:
        table = root & ~(PAGE_SIZE - 1)
    elif not alloc:
        return None
    else:
        table = yield AllocPage(what="context table", why="iommu_context_addr")
        yield CpuZero(addr=table, size=PAGE_SIZE, why="iommu_context_addr")
        yield from iommu.flush_cache(table, PAGE_SIZE)
        yield CpuWrite(addr=root_qw, value=table | 1, why="iommu_context_addr")
        yield from iommu.flush_cache(root_qw, 8)
    if iommu.sm_enabled:
        return sm_context_entry_addr(table, devfn)
    return context_entry_addr(table, devfn)


def legacy_context_value(domain: DmarDomain, iommu, info: DeviceInfo) -> int:
    """Legacy entry: DID, AW/SSPTPTR, TT (device-TLB allowed when the device supports ATS;
    pass-through for identity), FPD clear, P."""
    if domain.stage == "pt":
        levels = max(iommu.caps.supported_levels)
        return CONTEXT_ENTRY.encode(p=1, tt=TT_PASS_THROUGH, aw=aw_from_levels(levels),
                                    did=FLPT_DEFAULT_DID)
    pgt = domain.pgtable
    tt = TT_SS_ATS if info.ats_supported else TT_SS
    return CONTEXT_ENTRY.encode(p=1, tt=tt, ssptptr=pgt.root >> 12,
                                aw=aw_from_levels(pgt.levels),
                                did=domain.domain_id_iommu(iommu))


def sm_context_value(info: DeviceInfo) -> int:
    """Scalable-mode entry: the PASID directory, PDTS, RID_PASID 0, DTE/PRE/PASIDE from what
    the device supports, P."""
    table = info.pasid_table
    return SM_CONTEXT_ENTRY.encode(
        p=1, pasid_dir_ptr=table.directory >> 12, pdts=table.pdts, rid_pasid=0,
        dte=int(info.ats_supported), pre=int(info.pri_supported),
        paside=int(info.pasid_supported),
    )


def _entry_qwords(value: int) -> tuple[int, int]:
    return value & (2**64 - 1), value >> 64 & (2**64 - 1)


def flush_context_device(iommu, did: int, sid: int):
    """Device-selective context-cache invalidation (DID ignored in scalable mode)."""
    desc = qi.desc_flush_context(did, sid, DMA_CCMD_MASK_NOBIT, qi.DMA_CCMD_DEVICE_INVL)
    yield from qi.qi_submit_sync(iommu, [desc])


def flush_iotlb_dsi(iommu, did: int):
    desc = qi.desc_flush_iotlb(iommu, did, 0, 0, qi.DMA_TLB_DSI_FLUSH)
    yield from qi.qi_submit_sync(iommu, [desc])


def context_present_cache_flush(iommu, did: int, sid: int):
    """Not-present -> present: under CM the unit may have cached the non-present entry under
    DID 0 (spec 6.1), so a device-selective context-cache invalidation with DID 0, then an
    IOTLB DSI for ``did``; otherwise only the write buffer (spec 6.8)."""
    if iommu.caps.caching_mode:
        yield from flush_context_device(iommu, 0, sid)
        yield from flush_iotlb_dsi(iommu, did)
    else:
        yield from iommu.iommu_flush_write_buffer()


def domain_context_mapping_one(domain: DmarDomain, iommu, info: DeviceInfo):
    """Program the device's context entry under ``iommu->lock`` (flushes included); nothing if
    it is already present.  Scalable mode (6.1 at attach): the entry points at the PASID
    directory and the CM flush uses the domain's DID, as the recordings show."""
    why = "domain_context_mapping_one"
    yield Lock(name=iommu.lock, why=why)
    ce = yield from iommu_context_addr(iommu, info.bus, info.devfn, alloc=True)
    lo = yield CpuRead(addr=ce, size=8, why=why)
    if not lo & 1:
        if iommu.sm_enabled:
            value = sm_context_value(info)
        else:
            value = legacy_context_value(domain, iommu, info)
        yield from write_entry_present_last(iommu, ce, _entry_qwords(value), why)
        yield from context_present_cache_flush(iommu, domain.domain_id_iommu(iommu), info.sid)
    yield Unlock(name=iommu.lock, why=why)
    return 0


def device_pasid_table_setup(info: DeviceInfo):
    """Mainline: the scalable-mode context entry is programmed once, at probe; the CM flush
    then uses DID 0 (no domain yet)."""
    iommu = info.iommu
    why = "device_pasid_table_setup"
    yield Lock(name=iommu.lock, why=why)
    ce = yield from iommu_context_addr(iommu, info.bus, info.devfn, alloc=True)
    lo = yield CpuRead(addr=ce, size=8, why=why)
    if not lo & 1:
        yield from write_entry_present_last(iommu, ce, _entry_qwords(sm_context_value(info)), why)
        yield from context_present_cache_flush(iommu, 0, info.sid)
    yield Unlock(name=iommu.lock, why=why)
    return 0


# -- flushing after a present entry changed -------------------------------------------------------
def _context_flush_dev_iotlb(info: DeviceInfo):
    """``__context_flush_dev_iotlb``: the whole device-TLB, if ATS is on and the device is
    still there (twice with the QAT quirk)."""
    if not info.ats_enabled or not info.present:
        return
    desc = qi.desc_flush_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, 0, MAX_AGAW_PFN_WIDTH)
    for _ in range(2 if info.dtlb_extra_inval else 1):
        yield from qi.qi_submit_sync(info.iommu, [desc])


def intel_context_flush_present(info: DeviceInfo, did: int, flush_domains: bool,
                                pasid_walk=present_pasid_dids):
    """Spec 6.5.3.3 for a present context entry that changed (mainline: with
    ``flush_domains`` False it is ``intel_context_flush_no_pasid``): device-selective
    context cache; legacy: IOTLB DSI + device-TLB; scalable: for each DID used by a present
    PASID entry a PASID-cache DSI and an IOTLB DSI, then the device-TLB.  The DIDs come from
    ``pasid_walk(info)``, a walk of the PASID table made *after* the context-cache flush (as
    the v6.11 helper orders it): a PASID entry the walk misses can only be fetched through
    the new context entry."""
    iommu = info.iommu
    yield from flush_context_device(iommu, did, info.sid)
    if not iommu.sm_enabled:
        yield from flush_iotlb_dsi(iommu, did)
        yield from _context_flush_dev_iotlb(info)
        return
    if flush_domains:
        pasid_dids = yield from pasid_walk(info)
        for _pasid, pdid in pasid_dids:
            desc = qi.desc_flush_pasid_cache(pdid, qi.QI_PC_ALL_PASIDS, 0)
            yield from qi.qi_submit_sync(iommu, [desc])
            yield from flush_iotlb_dsi(iommu, pdid)
    yield from _context_flush_dev_iotlb(info)


def _flush_cleared_linux61(info: DeviceInfo, did: int):
    """6.1's open-coded flush in ``domain_context_clear_one``: context cache (old DID), in
    scalable mode a PASID-cache DSI, IOTLB DSI, whole device-TLB (usually a no-op: 6.1 has
    disabled ATS before clearing the context)."""
    iommu = info.iommu
    yield from flush_context_device(iommu, did, info.sid)
    if iommu.sm_enabled:
        desc = qi.desc_flush_pasid_cache(did, qi.QI_PC_ALL_PASIDS, 0)
        yield from qi.qi_submit_sync(iommu, [desc])
    yield from flush_iotlb_dsi(iommu, did)
    if info.ats_enabled:
        desc = qi.desc_flush_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, 0,
                                       MAX_AGAW_PFN_WIDTH)
        yield from qi.qi_submit_sync(iommu, [desc])


def domain_context_clear_one(info: DeviceInfo, profile):
    """Tear down a context entry.  6.1: zero it, clflush, unlock, flush.  Mainline (v7.0-rc1,
    c1e4f1dccbe9): clear only P, clflush, flush, then zero.  Seed 001: with
    ``context_flush_under_iommu_lock`` the flush runs before iommu->lock is dropped."""
    iommu = info.iommu
    why = "domain_context_clear_one"
    ce = yield from _lock_context_entry(info, why)
    if ce is None:
        return
    if iommu.sm_enabled:
        did = info.domain.domain_id_iommu(iommu) if info.domain else 0
    else:
        hi = yield CpuRead(addr=ce + 8, size=8, why=why)
        did = CONTEXT_ENTRY.get(hi << 64, "did")
    if profile.context_clear_present_first:
        lo = yield CpuRead(addr=ce, size=8, why=why)
        yield CpuWrite(addr=ce, value=lo & ~1, why=why)
    else:
        yield from zero_entry(ce, CONTEXT_BYTES // 8, why)
    yield from iommu.flush_cache(ce, CONTEXT_BYTES)
    flush = (intel_context_flush_present(info, did, False)
             if profile.cache_tags else _flush_cleared_linux61(info, did))
    yield from _flush_and_unlock(iommu, flush, profile, why)
    if profile.context_clear_present_first:
        yield from zero_entry(ce, CONTEXT_BYTES // 8, why)
        yield from iommu.flush_cache(ce, CONTEXT_BYTES)


def device_pasid_table_teardown(info: DeviceInfo, profile):
    """Mainline device release in scalable mode: zero the entry, clflush, then
    ``intel_context_flush_no_pasid`` (inside iommu->lock with seed 001's switch)."""
    iommu = info.iommu
    why = "device_pasid_table_teardown"
    ce = yield from _lock_context_entry(info, why)
    if ce is None:
        return
    yield from zero_entry(ce, CONTEXT_BYTES // 8, why)
    yield from iommu.flush_cache(ce, CONTEXT_BYTES)
    yield from _flush_and_unlock(iommu, intel_context_flush_present(info, 0, False), profile, why)


def _lock_context_entry(info: DeviceInfo, why: str):
    """Take iommu->lock and find the device's context entry; with none, drop the lock again
    and return None (the teardown paths then have nothing to do)."""
    iommu = info.iommu
    yield Lock(name=iommu.lock, why=why)
    ce = yield from iommu_context_addr(iommu, info.bus, info.devfn, alloc=False)
    if ce is None:
        yield Unlock(name=iommu.lock, why=why)
    return ce


def _flush_and_unlock(iommu, flush, profile, why: str):
    """Seed 001: the context-change flush runs before iommu->lock is dropped
    (``context_flush_under_iommu_lock``, the patch as posted) or after it (the merged v3 for
    the clear paths, which Kevin Tian asked for)."""
    if profile.context_flush_under_iommu_lock:
        yield from flush
        yield Unlock(name=iommu.lock, why=why)
    else:
        yield Unlock(name=iommu.lock, why=why)
        yield from flush


def context_flip_pri(info: DeviceInfo, enable: bool, profile):
    """v6.11 ``context_flip_pri``: toggle PRE in a *present* scalable-mode context entry, then
    flush the caches of every DID the device's present PASID entries use (seed 001).

    ``context_flush_under_iommu_lock`` True is the patch as posted (v2): the whole helper
    (context cache, PASID walk, every invalidation) runs inside iommu->lock, so no PASID entry
    changes until the caches are clean.  False is Kevin Tian's proposal: the helper runs
    after the unlock and takes iommu->lock only for its PASID walk, which still follows the
    context-cache flush; a concurrent PASID attach/detach then interleaves with the flushes."""
    iommu = info.iommu
    why = "context_flip_pri"
    yield Lock(name=iommu.lock, why=why)
    ce = yield from iommu_context_addr(iommu, info.bus, info.devfn, alloc=False)
    lo = 0 if ce is None else (yield CpuRead(addr=ce, size=8, why=why))
    if not lo & 1:
        yield Unlock(name=iommu.lock, why=why)
        return -19  # -ENODEV
    pre = SM_CONTEXT_ENTRY["pre"]
    yield CpuWrite(addr=ce, value=pre.put(lo, int(enable)), why=why)
    yield from iommu.flush_cache(ce, CONTEXT_BYTES)
    info.pri_enabled = enable
    if profile.context_flush_under_iommu_lock:
        yield from intel_context_flush_present(info, 0, True)
        yield Unlock(name=iommu.lock, why=why)
    else:
        yield Unlock(name=iommu.lock, why=why)
        yield from intel_context_flush_present(info, 0, True, _locked_pasid_walk)
    return 0


def _locked_pasid_walk(info: DeviceInfo):
    """Kevin Tian's "collect a bitmap of DIDs in the locked walk" (seed 001): iommu->lock
    only around the PASID-table walk, so no PASID entry changes while it is read."""
    why = "intel_context_flush_present"
    yield Lock(name=info.iommu.lock, why=why)
    found = yield from present_pasid_dids(info)
    yield Unlock(name=info.iommu.lock, why=why)
    return found
