"""``struct intel_iommu`` and its bring-up, Linux drivers/iommu/intel/iommu.c and dmar.c:
``alloc_iommu`` (CAP/ECAP/GSTS read), ``iommu_init_domains`` (domain IDs), ``__dmar_enable_qi``,
``iommu_set_irq_remapping``/``iommu_enable_irq_remapping`` (register writes only),
``iommu_alloc_root_entry``, ``iommu_set_root_entry``, ``iommu_enable_translation``,
``iommu_flush_write_buffer`` and ``__iommu_flush_cache`` - as the recordings show them
(vtd-hardware.md §4 table, the QEMU log of legacy-cm-default: IQT=0, IQA, GCMD 0x4000000 (QIE),
IRTA + SIRTP + global IEC + IRE, RTADDR, GCMD 0x46000000 (SRTP), cc_inv 0x11, [pc_inv],
iotlb_inv 0xd2, later GCMD 0x86000000 (TE)).

Commands follow Linux: a software copy ``gcmd`` of the persistent bits, one command bit OR-ed
in, a poll of GSTS (``IOMMU_WAIT_OP``), all under ``register_lock``.

Not modelled: interrupt remapping itself (its table, IRTEs and interrupt delivery: only the
IRTA/SIRTP/IEC/IRE register protocol is reproduced), the fault-event MSI set-up
(``dmar_set_interrupt``: FEDATA/FEADDR/FECTL), register-based invalidation (a unit without
ECAP.QI is refused), kdump's copied tables, the PMEN protected-memory disable, DMAR hot-plug.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from vtdsim.driver import qi
from vtdsim.driver.profiles import LINUX_6_1, Profile
from vtdsim.driver.steps import (
    AllocPage,
    ClflushRange,
    CpuZero,
    Lock,
    MmioRead,
    MmioWrite,
    Step,
    Unlock,
    WaitRegister,
)
from vtdsim.errors import BadInput, ModelError, SpecRuleBroken, hexval
from vtdsim.hardware.capabilities import Capabilities

PAGE_SIZE = 4096

# Register offsets (include/linux/intel-iommu.h DMAR_*_REG; spec 10.4).
DMAR_VER_REG, DMAR_CAP_REG, DMAR_ECAP_REG = 0x00, 0x08, 0x10
DMAR_GCMD_REG, DMAR_GSTS_REG, DMAR_RTADDR_REG = 0x18, 0x1C, 0x20
DMAR_IQT_REG, DMAR_IQA_REG, DMAR_IRTA_REG = 0x88, 0x90, 0xB8

# GCMD command bits; GSTS reports each at the same position (spec 10.4.4-5).
DMA_GCMD_TE, DMA_GCMD_SRTP, DMA_GCMD_WBF = 1 << 31, 1 << 30, 1 << 27
DMA_GCMD_QIE, DMA_GCMD_IRE, DMA_GCMD_SIRTP = 1 << 26, 1 << 25, 1 << 24
_PERSISTENT = DMA_GCMD_TE | DMA_GCMD_QIE | DMA_GCMD_IRE  # the ones alloc_iommu re-reads

DMA_RTADDR_SMT = 1 << 10  # RTADDR.TTM = 01: scalable mode
IQA_DW_QS = (1 << 11) | 1  # IQA.DW=1, QS=1: 256 x 32 B when ECAP.SMTS (__dmar_enable_qi)
IRTA_SIZE_64K = 0xF  # IRTA.S: 2^(15+1) entries, Linux's INTR_REMAP_TABLE_REG_SIZE
FIRST_DID = 2  # DID 0: CM's tag for not-present entries; DID 1: FLPT_DEFAULT_DID


@dataclass
class QueueState:
    """``struct q_inval``: the queue page(s), the status array and the free-slot accounting."""

    lock: str
    base: int
    status_base: int
    shift: int  # log2 of the descriptor size: 4 (128-bit) or 5 (256-bit)
    free_head: int = 0
    free_tail: int = 0
    free_cnt: int = qi.QI_LENGTH
    desc_status: list[int] = field(default_factory=lambda: [qi.QI_FREE] * qi.QI_LENGTH)
    wait_slots: set[int] = field(default_factory=set)

    @property
    def width(self) -> int:
        return 1 << self.shift

    def status_addr(self, slot: int) -> int:
        """``&qi->desc_status[slot]``: an array of 32-bit ints."""
        return self.status_base + 4 * slot


class DomainIdAllocator:
    """Per-IOMMU domain IDs: 6.1's bitmap (``find_first_zero_bit``) and mainline's IDA
    (``ida_alloc_range(2, ndoms - 1)``) both hand out the lowest free ID from 2.

    6.1's ``iommu_init_domains`` reserves DID 1 only in scalable mode; the legacy recordings
    (6.1.192) nevertheless show the first DMA domain at DID 2 - either the later unconditional
    reservation was backported or an identity domain took DID 1 (unconfirmed).  We follow the
    recordings: both allocators start at 2."""

    def __init__(self, ndomains: int, kind: str = "bitmap"):
        if kind not in ("bitmap", "ida"):
            raise BadInput(f"did_allocator={kind!r}: expected bitmap or ida")
        self.kind = kind
        self.ndomains = ndomains
        self.allocated: set[int] = set()

    def alloc(self) -> int:
        for did in range(FIRST_DID, self.ndomains):
            if did not in self.allocated:
                self.allocated.add(did)
                return did
        raise SpecRuleBroken(f"no free domain IDs (CAP.ND gives {self.ndomains})",
                             "domain_attach_iommu -ENOSPC")

    def free(self, did: int) -> None:
        if did not in self.allocated:
            raise SpecRuleBroken(f"free of {hexval('did', did)}, which is not allocated",
                                 "domain_detach_iommu")
        self.allocated.remove(did)


class IntelIommu:
    """One DMAR unit as the driver knows it; ``index`` is the platform unit index."""

    def __init__(self, index: int, caps: Capabilities | None = None, *,
                 profile: Profile = LINUX_6_1, sm_on: bool = True, rwbf_quirk: bool = False):
        self.index = index
        self.name = f"dmar{index}"
        self.lock = f"iommu{index}.lock"
        self.register_lock = f"iommu{index}.register_lock"
        self.profile = profile
        self.sm_on = sm_on  # intel_iommu=sm_on (Debian's default, as the SM recording shows)
        self.rwbf_quirk = rwbf_quirk  # chipset quirk list unconfirmed (reference §4.13)
        self.caps: Capabilities | None = None
        self.sm_enabled = False
        self.domain_ids: DomainIdAllocator | None = None
        self.gcmd = 0
        self.root_table = 0
        self.qi: QueueState | None = None
        self.translation_enabled = False
        if caps is not None:
            self._set_caps(caps)

    def _set_caps(self, caps: Capabilities) -> None:
        self.caps = caps
        self.sm_enabled = self.sm_on and caps.smts  # sm_supported()
        self.domain_ids = DomainIdAllocator(caps.nd_domains, self.profile.did_allocator)

    def __repr__(self) -> str:
        return f"IntelIommu({self.name})"

    # -- register protocol -------------------------------------------------------------------------
    def _mmio_write(self, offset: int, value: int, size: int, why: str) -> Step:
        return MmioWrite(unit=self.index, offset=offset, value=value, size=size, why=why)

    def _gcmd_command(self, bit: int, status_set: bool, why: str) -> Generator[Step, Any, None]:
        """Write ``gcmd | bit`` and poll GSTS until the bit reads ``status_set``."""
        yield self._mmio_write(DMAR_GCMD_REG, self.gcmd | bit, 4, why)
        yield WaitRegister(unit=self.index, offset=DMAR_GSTS_REG, mask=bit,
                           value=bit if status_set else 0, why=why)

    def _set_persistent(self, bit: int, on: bool, why: str) -> Generator[Step, Any, None]:
        """Set or clear a persistent command (TE, QIE, IRE) under ``register_lock``."""
        yield Lock(name=self.register_lock, why=why)
        self.gcmd = self.gcmd | bit if on else self.gcmd & ~bit
        yield self._mmio_write(DMAR_GCMD_REG, self.gcmd, 4, why)
        yield WaitRegister(unit=self.index, offset=DMAR_GSTS_REG, mask=bit,
                           value=bit if on else 0, why=why)
        yield Unlock(name=self.register_lock, why=why)

    def _one_shot(self, bit: int, done_when_set: bool, why: str) -> Generator[Step, Any, None]:
        """A one-shot command (SRTP, SIRTP, WBF) under ``register_lock``."""
        yield Lock(name=self.register_lock, why=why)
        yield from self._gcmd_command(bit, done_when_set, why)
        yield Unlock(name=self.register_lock, why=why)

    # -- alloc_iommu -------------------------------------------------------------------------------
    def read_caps(self) -> Generator[Step, Any, Capabilities]:
        """VER, CAP, ECAP, and the persistent bits firmware left on in GSTS."""
        why = "alloc_iommu"
        ver = yield MmioRead(unit=self.index, offset=DMAR_VER_REG, size=4, why=why)
        cap = yield MmioRead(unit=self.index, offset=DMAR_CAP_REG, size=8, why=why)
        ecap = yield MmioRead(unit=self.index, offset=DMAR_ECAP_REG, size=8, why=why)
        gsts = yield MmioRead(unit=self.index, offset=DMAR_GSTS_REG, size=4, why=why)
        self.gcmd = gsts & _PERSISTENT
        self._set_caps(Capabilities(cap, ecap, ver))
        return self.caps

    # -- queued invalidation -----------------------------------------------------------------------
    def dmar_enable_qi(self) -> Generator[Step, Any, None]:
        """``dmar_enable_qi`` + ``__dmar_enable_qi``: the queue (one page, two with ECAP.SMTS),
        the status array, IQT=0, IQA, GCMD.QIE."""
        if self.qi is not None:
            return
        if not self.caps.qi:
            raise BadInput(f"{self.name} has no ECAP.QI: register-based invalidation is not "
                           "modelled")
        why = "dmar_enable_qi"
        wide = self.caps.smts  # Linux keys the width on ECAP.SMTS, not on sm_supported()
        base = yield from self._alloc_contiguous(2 if wide else 1, "invalidation queue", why)
        status = yield AllocPage(what="qi desc_status", why=why)
        yield CpuZero(addr=status, size=PAGE_SIZE, why=why)
        self.qi = QueueState(f"qi{self.index}.q_lock", base, status, 5 if wide else 4)
        yield Lock(name=self.register_lock, why=why)
        yield self._mmio_write(DMAR_IQT_REG, 0, 4, why)
        yield self._mmio_write(DMAR_IQA_REG, base | (IQA_DW_QS if wide else 0), 8, why)
        yield Unlock(name=self.register_lock, why=why)
        yield from self._set_persistent(DMA_GCMD_QIE, True, why)

    def _alloc_contiguous(self, pages: int, what: str, why: str) -> Generator[Step, Any, int]:
        """``alloc_pages_node(order)``: ``pages`` contiguous zeroed pages.  Our allocator hands
        out single pages; at boot they come out ascending, so we insist they are adjacent."""
        first = yield AllocPage(what=what, why=why)
        for i in range(1, pages):
            addr = yield AllocPage(what=what, why=why)
            if addr != first + i * PAGE_SIZE:
                raise ModelError(f"{what}: pages {hexval('first', first)} and "
                                 f"{hexval('next', addr)} are not contiguous")
        yield CpuZero(addr=first, size=pages * PAGE_SIZE, why=why)
        return first

    # -- interrupt remapping (register protocol only) -------------------------------------------
    def enable_irq_remapping(self, irta: int) -> Generator[Step, Any, None]:
        """``iommu_set_irq_remapping`` then ``iommu_enable_irq_remapping``: IRTA, SIRTP, a global
        IEC invalidation, IRE.  The table at ``irta`` is not modelled (nothing reads it)."""
        why = "iommu_set_irq_remapping"
        yield Lock(name=self.register_lock, why=why)
        yield self._mmio_write(DMAR_IRTA_REG, irta | IRTA_SIZE_64K, 8, why)
        yield Unlock(name=self.register_lock, why=why)
        yield from self._one_shot(DMA_GCMD_SIRTP, True, why)
        yield from qi.qi_submit_sync(self, [qi.desc_global_iec()])
        yield from self._set_persistent(DMA_GCMD_IRE, True, "iommu_enable_irq_remapping")

    # -- root table --------------------------------------------------------------------------------
    def iommu_alloc_root_entry(self) -> Generator[Step, Any, int]:
        why = "iommu_alloc_root_entry"
        root = yield AllocPage(what="root table", why=why)
        yield CpuZero(addr=root, size=PAGE_SIZE, why=why)
        yield from self.flush_cache(root, PAGE_SIZE)
        self.root_table = root
        return root

    def iommu_set_root_entry(self) -> Generator[Step, Any, None]:
        """RTADDR (SMT in scalable mode), SRTP, then - unless CAP.ESRTPS - global context-cache,
        (scalable) global PASID-cache and global IOTLB invalidations, one submission each."""
        why = "iommu_set_root_entry"
        addr = self.root_table | (DMA_RTADDR_SMT if self.sm_enabled else 0)
        yield Lock(name=self.register_lock, why=why)
        yield self._mmio_write(DMAR_RTADDR_REG, addr, 8, why)
        yield from self._gcmd_command(DMA_GCMD_SRTP, True, why)
        yield Unlock(name=self.register_lock, why=why)
        if self.caps.esrtps:
            return
        yield from qi.qi_submit_sync(self, [qi.desc_flush_context(0, 0, 0,
                                                                  qi.DMA_CCMD_GLOBAL_INVL)])
        if self.sm_enabled:
            desc = qi.desc_flush_pasid_cache(0, qi.QI_PC_GLOBAL, 0)
            yield from qi.qi_submit_sync(self, [desc])
        desc = qi.desc_flush_iotlb(self, 0, 0, 0, qi.DMA_TLB_GLOBAL_FLUSH)
        yield from qi.qi_submit_sync(self, [desc])

    # -- translation -------------------------------------------------------------------------------
    def iommu_enable_translation(self) -> Generator[Step, Any, None]:
        yield from self._set_persistent(DMA_GCMD_TE, True, "iommu_enable_translation")
        self.translation_enabled = True

    def iommu_disable_translation(self) -> Generator[Step, Any, None]:
        yield from self._set_persistent(DMA_GCMD_TE, False, "iommu_disable_translation")
        self.translation_enabled = False

    def init_hw(self, *, irta: int | None = None,
                enable_translation: bool = True) -> Generator[Step, Any, None]:
        """Boot: capabilities, QI, [interrupt remapping at ``irta``], root table, SRTP and the
        global flushes, then TE.  Linux attaches the boot devices between SRTP and TE
        (``intel_iommu_init``: ``iommu_device_register`` before ``iommu_enable_translation``),
        so callers that do the same pass ``enable_translation=False`` and call
        ``iommu_enable_translation`` afterwards."""
        if self.caps is None:
            yield from self.read_caps()
        yield from self.dmar_enable_qi()
        if irta is not None:
            yield from self.enable_irq_remapping(irta)
        yield from self.iommu_alloc_root_entry()
        yield from self.iommu_flush_write_buffer()
        yield from self.iommu_set_root_entry()
        if enable_translation:
            yield from self.iommu_enable_translation()

    # -- helpers every protocol uses ---------------------------------------------------------------
    def iommu_flush_write_buffer(self) -> Generator[Step, Any, None]:
        """GCMD.WBF and poll until GSTS.WBFS clears - only with CAP.RWBF or the chipset quirk
        (spec 6.8)."""
        if not (self.rwbf_quirk or self.caps.rwbf):
            return
        why = "iommu_flush_write_buffer"
        yield Lock(name=self.register_lock, why=why)
        yield from self._gcmd_command(DMA_GCMD_WBF, False, why)
        yield Unlock(name=self.register_lock, why=why)

    def flush_cache(self, addr: int, size: int) -> Generator[Step, Any, None]:
        """``__iommu_flush_cache``: clflush the range unless walks snoop (ECAP.C)."""
        if not self.caps.coherent:
            yield ClflushRange(addr=addr, size=size, why="__iommu_flush_cache")
