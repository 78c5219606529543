"""PASID tables and entries, Linux drivers/iommu/intel/pasid.c (``intel_pasid_alloc_table``,
``intel_pasid_get_entry``, ``intel_pasid_setup_first_level`` / ``_second_level`` /
``_pass_through`` / ``_nested``, ``pasid_flush_caches``, ``intel_pasid_tear_down_entry``,
``intel_pasid_flush_present``, ``intel_pasid_setup_page_snoop_control``); 6.1 zeroes the
entry at teardown and skips the device-TLB flush under CM (seed 000), mainline clears Present
first and always flushes the device-TLB.

Every table store is a ``CpuWrite`` (then ``iommu.flush_cache``, a clflush when ECAP.C=0) and
Present is written last (``pasid_set_present`` after a ``dma_wmb``).

Not modelled: directories larger than one page (PASIDs >= 32768), SVA, dirty tracking (SSADE),
hitless replacement (removed January 2026), the page-request drain's PRQ side (a wait with PD).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from vtdsim.driver import qi
from vtdsim.driver.device import IOMMU_NO_PASID, DeviceInfo, PasidTable
from vtdsim.driver.domain import FLPT_DEFAULT_DID, DmarDomain
from vtdsim.driver.steps import (
    AllocPage,
    CpuCmpxchg,
    CpuRead,
    CpuWrite,
    CpuZero,
    FreePage,
    Lock,
    Step,
    Unlock,
)
from vtdsim.errors import SpecRuleBroken
from vtdsim.hardware.pasid_table import (
    PASID_DIR_ENTRY,
    PASID_ENTRY,
    PASID_ENTRY_SIZE,
    PGTT_FS,
    PGTT_NESTED,
    PGTT_PT,
    PGTT_SS,
    pasid_dir_entry_addr,
    pasid_dir_index,
    pasid_entry_addr,
)
from vtdsim.hardware.second_stage import aw_from_levels

PAGE_SIZE = 4096
EBUSY, ENODEV = -16, -19
DIR_ENTRIES_PER_PAGE = PAGE_SIZE // 8


# -- entry stores (shared with context.py) -------------------------------------------------------
def write_entry_present_last(iommu, addr: int, qws, why: str) -> Generator[Step, Any, None]:
    """Store an entry's non-zero upper qwords, then qword 0 (which holds P), then clflush the
    entry (``__iommu_flush_cache``): the unit can never see P with stale fields."""
    for i in range(len(qws) - 1, 0, -1):
        if qws[i]:
            yield CpuWrite(addr=addr + 8 * i, value=qws[i], why=why)
    yield CpuWrite(addr=addr, value=qws[0], why=why)
    yield from iommu.flush_cache(addr, 8 * len(qws))


def zero_entry(addr: int, nqwords: int, why: str, keep_qw0: int = 0):
    """``pasid_clear_entry`` / ``context_clear_entry``: qword 0 first (P goes with it)."""
    yield CpuWrite(addr=addr, value=keep_qw0, why=why)
    for i in range(1, nqwords):
        yield CpuWrite(addr=addr + 8 * i, value=0, why=why)


# -- tables -------------------------------------------------------------------------------------
def intel_pasid_alloc_table(info: DeviceInfo) -> Generator[Step, Any, PasidTable]:
    """The PASID directory (one zeroed page), allocated when the device is probed."""
    directory = yield AllocPage(what="pasid directory", why="intel_pasid_alloc_table")
    yield CpuZero(addr=directory, size=PAGE_SIZE, why="intel_pasid_alloc_table")
    yield from info.iommu.flush_cache(directory, PAGE_SIZE)
    max_pasid = DIR_ENTRIES_PER_PAGE << 6 if info.pasid_supported else 1 << 6
    info.pasid_table = PasidTable(directory, max_pasid)
    return info.pasid_table


def intel_pasid_get_entry(info: DeviceInfo, pasid: int) -> Generator[Step, Any, int]:
    """Address of the PASID entry, installing its PASID-table page on first use with
    ``cmpxchg64`` (two CPUs may race; the loser frees its page and retries)."""
    table = info.pasid_table
    if table is None or pasid >= table.max_pasid:
        raise SpecRuleBroken(f"{info.name}: no PASID table slot for pasid={pasid:#x}")
    dir_addr = pasid_dir_entry_addr(table.directory, pasid)
    while True:
        pde = yield CpuRead(addr=dir_addr, size=8, why="intel_pasid_get_entry")
        if PASID_DIR_ENTRY.get(pde, "p"):
            entries = PASID_DIR_ENTRY.get(pde, "pasid_table_ptr") << 12
            return pasid_entry_addr(entries, pasid)
        page = yield AllocPage(what="pasid table", why="intel_pasid_get_entry")
        yield CpuZero(addr=page, size=PAGE_SIZE, why="intel_pasid_get_entry")
        new = PASID_DIR_ENTRY.encode(p=1, pasid_table_ptr=page >> 12)
        old = yield CpuCmpxchg(addr=dir_addr, expected=0, new=new, why="intel_pasid_get_entry")
        if old != 0:
            yield FreePage(addr=page, what="pasid table", why="intel_pasid_get_entry lost race")
            continue
        table.tables[pasid_dir_index(pasid)] = page
        yield from info.iommu.flush_cache(page, PAGE_SIZE)
        yield from info.iommu.flush_cache(dir_addr, 8)
        return pasid_entry_addr(page, pasid)


def read_pasid_entry(pte: int, why: str) -> Generator[Step, Any, int]:
    """The CPU's view of an entry as one 512-bit value (Linux reads its own table)."""
    value = 0
    for i in range(PASID_ENTRY_SIZE // 8):
        qw = yield CpuRead(addr=pte + 8 * i, size=8, why=why)
        value |= qw << (64 * i)
    return value


# -- flushing -------------------------------------------------------------------------------------
def pasid_cache_invalidation_with_pasid(iommu, did: int, pasid: int):
    desc = qi.desc_flush_pasid_cache(did, qi.QI_PC_PASID_SEL, pasid)
    yield from qi.qi_submit_sync(iommu, [desc])


def piotlb_pasid_selective(iommu, did: int, pasid: int):
    """``qi_flush_piotlb(iommu, did, pasid, 0, -1, 0)``: every mapping of DID+PASID."""
    yield from qi.qi_submit_sync(iommu, [qi.desc_flush_piotlb(did, pasid, 0, -1, 0)])


def devtlb_invalidation_with_pasid(iommu, info: DeviceInfo, pasid: int):
    """Whole-space device-TLB flush: type 3 for RID_PASID traffic, type 8 otherwise; nothing
    without ATS or for a removed device."""
    if not info.ats_enabled or not info.present:
        return
    if pasid == IOMMU_NO_PASID:
        desc = qi.desc_flush_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, 0, 64 - 12)
    else:
        desc = qi.desc_flush_dev_iotlb_pasid(
            info.sid, info.pfsid, pasid, info.ats_qdep, 0, 64 - 12)
    yield from qi.qi_submit_sync(iommu, [desc])


def pasid_flush_caches(iommu, pte: int, pasid: int, did: int):
    """After making an entry present: clflush; under CM the PASID cache and the PASID-based
    IOTLB (two submissions: CM may cache the non-present entry, spec 6.1); else the write
    buffer (spec 6.8)."""
    yield from iommu.flush_cache(pte, PASID_ENTRY_SIZE)
    if iommu.caps.caching_mode:
        yield from pasid_cache_invalidation_with_pasid(iommu, did, pasid)
        yield from piotlb_pasid_selective(iommu, did, pasid)
    else:
        yield from iommu.iommu_flush_write_buffer()


def intel_pasid_flush_present(iommu, info: DeviceInfo, pasid: int, did: int, pte: int):
    """After changing a present entry (spec 6.5.3.3 / table 23): PASID cache, PASID-based
    IOTLB, device-TLB."""
    yield from iommu.flush_cache(pte, PASID_ENTRY_SIZE)
    yield from pasid_cache_invalidation_with_pasid(iommu, did, pasid)
    yield from piotlb_pasid_selective(iommu, did, pasid)
    yield from devtlb_invalidation_with_pasid(iommu, info, pasid)


# -- setup ----------------------------------------------------------------------------------------
def _setup_entry(iommu, info: DeviceInfo, pasid: int, fields: dict, why: str):
    """Common body of the four setup functions: -EBUSY on a present entry, fill, P last."""
    yield Lock(name=iommu.lock, why=why)
    pte = yield from intel_pasid_get_entry(info, pasid)
    qw0 = yield CpuRead(addr=pte, size=8, why=why)
    if PASID_ENTRY.get(qw0, "p"):
        yield Unlock(name=iommu.lock, why=why)
        return EBUSY
    value = PASID_ENTRY.encode(p=1, **fields)
    yield from write_entry_present_last(iommu, pte, PASID_ENTRY.to_qwords(value), why)
    yield Unlock(name=iommu.lock, why=why)
    yield from pasid_flush_caches(iommu, pte, pasid, fields["did"])
    return 0


def _pwsnp(iommu) -> int:
    """Page-walk snoop when the unit snoops walks (ECAP.SMPWC)."""
    return int(iommu.caps.smpwc)


def _fspm(levels: int) -> int:
    return 1 if levels == 5 else 0


def intel_pasid_setup_second_level(iommu, domain: DmarDomain, info: DeviceInfo, pasid: int):
    pgt = domain.pgtable
    fields = dict(
        pgtt=PGTT_SS, did=domain.domain_id_iommu(iommu), ssptptr=pgt.root >> 12,
        aw=aw_from_levels(pgt.levels), pwsnp=_pwsnp(iommu),
    )
    return (yield from _setup_entry(iommu, info, pasid, fields, "intel_pasid_setup_second_level"))


def intel_pasid_setup_first_level(iommu, domain: DmarDomain, info: DeviceInfo, pasid: int):
    """FS entry; PGSNP when the domain enforces coherency (seed 004)."""
    pgt = domain.pgtable
    fields = dict(
        pgtt=PGTT_FS, did=domain.domain_id_iommu(iommu), fsptptr=pgt.root >> 12,
        fspm=_fspm(pgt.levels), pwsnp=_pwsnp(iommu), pgsnp=int(domain.force_snooping),
    )
    return (yield from _setup_entry(iommu, info, pasid, fields, "intel_pasid_setup_first_level"))


def intel_pasid_setup_pass_through(iommu, info: DeviceInfo, pasid: int):
    """Identity: PGTT=PT with DID 1 (FLPT_DEFAULT_DID); AW is the unit's widest."""
    levels = max(iommu.caps.supported_levels)
    fields = dict(pgtt=PGTT_PT, did=FLPT_DEFAULT_DID, aw=aw_from_levels(levels),
                  pwsnp=_pwsnp(iommu))
    return (yield from _setup_entry(iommu, info, pasid, fields, "intel_pasid_setup_pass_through"))


def intel_pasid_setup_nested(iommu, domain: DmarDomain, info: DeviceInfo, pasid: int):
    """Nested: the user's FS root walked through the parent's SS tables; PGSNP if the parent
    forces snooping."""
    parent = domain.s2_domain
    pgt = parent.pgtable
    fields = dict(
        pgtt=PGTT_NESTED, did=domain.domain_id_iommu(iommu), fsptptr=domain.fs_pgd >> 12,
        fspm=_fspm(domain.fs_levels), ssptptr=pgt.root >> 12, aw=aw_from_levels(pgt.levels),
        pwsnp=_pwsnp(iommu), pgsnp=int(parent.force_snooping),
    )
    return (yield from _setup_entry(iommu, info, pasid, fields, "intel_pasid_setup_nested"))


def intel_pasid_setup_page_snoop_control(iommu, info: DeviceInfo, pasid: int):
    """Set PGSNP in a present entry (enforce_cache_coherency on an FS domain), then
    ``intel_pasid_flush_present``."""
    why = "intel_pasid_setup_page_snoop_control"
    yield Lock(name=iommu.lock, why=why)
    pte = yield from intel_pasid_get_entry(info, pasid)
    value = yield from read_pasid_entry(pte, why)
    if not PASID_ENTRY.get(value, "p"):
        yield Unlock(name=iommu.lock, why=why)
        raise SpecRuleBroken(f"{info.name} pasid={pasid:#x}: PGSNP on a non-present entry")
    value = PASID_ENTRY.replace(value, pgsnp=1)
    yield CpuWrite(addr=pte + 8, value=PASID_ENTRY.to_qwords(value)[1], why=why)
    did = PASID_ENTRY.get(value, "did")
    yield Unlock(name=iommu.lock, why=why)
    yield from intel_pasid_flush_present(iommu, info, pasid, did, pte)


# -- teardown --------------------------------------------------------------------------------------
def _clear_entry(iommu, pte: int, qw0: int, fault_ignore: bool, profile, why: str):
    """First step of the teardown.  Mainline clears only P and zeroes the rest after the
    flushes (hardware may fetch the 512-bit entry in pieces); 6.1 zeroes the whole entry now
    (qword 0 first, so P goes first anyway)."""
    keep = PASID_ENTRY.encode(fpd=1) if fault_ignore else 0
    if profile.context_clear_present_first:
        yield CpuWrite(addr=pte, value=qw0 & ~1, why=why)
    else:
        yield from zero_entry(pte, PASID_ENTRY_SIZE // 8, why, keep_qw0=keep)


def intel_pasid_tear_down_entry(iommu, info: DeviceInfo, pasid: int, profile,
                                fault_ignore: bool = False):
    """Spec 6.5.3.3 / 14.6: clear P, PASID cache, IOTLB (type 6 for FS/PT, DSI for SS/nested),
    device-TLB (skipped under CM in 6.1: seed 000), then zero the entry, then drain PRQs."""
    why = "intel_pasid_tear_down_entry"
    yield Lock(name=iommu.lock, why=why)
    pte = yield from intel_pasid_get_entry(info, pasid)
    qw0 = yield CpuRead(addr=pte, size=8, why=why)
    if not PASID_ENTRY.get(qw0, "p"):
        yield Unlock(name=iommu.lock, why=why)
        return
    qw1 = yield CpuRead(addr=pte + 8, size=8, why=why)
    did = PASID_ENTRY.get(qw1 << 64, "did")
    pgtt = PASID_ENTRY.get(qw0, "pgtt")
    yield from _clear_entry(iommu, pte, qw0, fault_ignore, profile, why)
    yield Unlock(name=iommu.lock, why=why)
    yield from iommu.flush_cache(pte, PASID_ENTRY_SIZE)
    yield from pasid_cache_invalidation_with_pasid(iommu, did, pasid)
    if pgtt in (PGTT_PT, PGTT_FS):
        yield from piotlb_pasid_selective(iommu, did, pasid)
    else:
        yield from qi.qi_submit_sync(
            iommu, [qi.desc_flush_iotlb(iommu, did, 0, 0, qi.DMA_TLB_DSI_FLUSH)])
    if not (profile.devtlb_flush_checks_caching_mode and iommu.caps.caching_mode):
        yield from devtlb_invalidation_with_pasid(iommu, info, pasid)
    if profile.context_clear_present_first:
        keep = PASID_ENTRY.encode(fpd=1) if fault_ignore else 0
        yield from zero_entry(pte, PASID_ENTRY_SIZE // 8, why, keep_qw0=keep)
        yield from iommu.flush_cache(pte, PASID_ENTRY_SIZE)
    if not fault_ignore and info.pri_enabled:
        yield from intel_drain_pasid_prq(iommu, info, did, pasid)


def intel_drain_pasid_prq(iommu, info: DeviceInfo, did: int, pasid: int):
    """``intel_drain_pasid_prq``: PASID IOTLB + device-TLB with a draining wait (PD=1)."""
    descs = [qi.desc_flush_piotlb(did, pasid, 0, -1, 0)]
    if info.ats_enabled:
        descs.append(qi.desc_flush_dev_iotlb_pasid(
            info.sid, info.pfsid, pasid, info.ats_qdep, 0, 64 - 12))
    yield from qi.qi_submit_sync(iommu, descs, pd=True)


def present_pasid_dids(info: DeviceInfo) -> Generator[Step, Any, list[tuple[int, int]]]:
    """(pasid, DID) of every present entry, read through the CPU (the PASID-table walk of
    seed 001's ``intel_context_flush_present``)."""
    found = []
    table = info.pasid_table
    if table is None:
        return found
    for index in sorted(table.tables):
        page = table.tables[index]
        for slot in range(PAGE_SIZE // PASID_ENTRY_SIZE):
            pte = page + slot * PASID_ENTRY_SIZE
            qw0 = yield CpuRead(addr=pte, size=8, why="intel_context_flush_present")
            if PASID_ENTRY.get(qw0, "p"):
                qw1 = yield CpuRead(addr=pte + 8, size=8, why="intel_context_flush_present")
                found.append(((index << 6) | slot, PASID_ENTRY.get(qw1 << 64, "did")))
    return found
