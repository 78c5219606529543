"""Queued invalidation as Linux drives it, drivers/iommu/intel/dmar.c: ``qi_submit_sync``
(with ``qi_check_fault`` and ``reclaim_free_desc``), mainline's ``qi_batch``, and the
descriptor builders ``qi_flush_context``, ``qi_flush_iotlb``, ``qi_flush_dev_iotlb``,
``qi_flush_piotlb``, ``qi_flush_pasid_cache``, ``qi_flush_dev_iotlb_pasid`` as pure functions
(``desc_flush_*``) returning the four qwords (reference linux-driver.md §2.1, vtd-hardware.md
§7, §11).

The queue memory and the wait slot's status word are physical memory written with
``CpuWrite``; the driver's per-slot states (``desc_status``) are bookkeeping the driver reads
freely, except a wait slot's status, which the hardware writes and which is read with
``CpuRead``.  The qi_submit trace event is an ``Annotate("qi_submit", (label, name, qw0..qw3))``.

Not modelled: the register-based fallback (``__iommu_flush_context``/``__iommu_flush_iotlb``,
ECAP.QI=0), mainline's -ETIMEDOUT for an ITE on an absent device, interrupt-driven completion
(Linux never sets IF), writing FREE back into a wait slot's status word (nothing reads it).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from vtdsim.driver.steps import (
    Annotate,
    CpuRead,
    CpuWrite,
    Lock,
    MmioRead,
    MmioWrite,
    Step,
    Unlock,
    WaitQword,
    lock_steps,
)
from vtdsim.errors import SpecRuleBroken
from vtdsim.hardware.bitfield import join_qwords
from vtdsim.hardware.descriptors import TYPE_LABELS, encode

Desc = tuple[int, int, int, int]

QI_LENGTH = 256  # descriptors in the queue (dmar.c)
QI_FREE, QI_IN_USE, QI_DONE, QI_ABORT = 0, 1, 2, 3  # enum desc_status
EINVAL, EAGAIN = -22, -11

DMAR_FSTS_REG, DMAR_IQH_REG, DMAR_IQT_REG = 0x34, 0x80, 0x88
DMA_FSTS_IQE, DMA_FSTS_ICE, DMA_FSTS_ITE = 1 << 4, 1 << 5, 1 << 6

# Granularities as the descriptors' G field encodes them (Linux's DMA_CCMD_*_INVL and
# DMA_TLB_*_FLUSH carry the same values at register positions; QI_CC_GRAN/QI_IOTLB_GRAN shift
# them down to the descriptor).
DMA_CCMD_GLOBAL_INVL, DMA_CCMD_DOMAIN_INVL, DMA_CCMD_DEVICE_INVL = 1, 2, 3
DMA_TLB_GLOBAL_FLUSH, DMA_TLB_DSI_FLUSH, DMA_TLB_PSI_FLUSH = 1, 2, 3
QI_GRAN_NONG_PASID, QI_GRAN_PSI_PASID = 2, 3  # PASID-based IOTLB granularities
QI_PC_ALL_PASIDS, QI_PC_PASID_SEL, QI_PC_GLOBAL = 0, 1, 3  # PASID-cache granularities
QI_DEV_IOTLB_MAX_INVS = 32  # MIP >= 32 is encoded as 0
VTD_PAGE_SHIFT = 12
_PAGE_MASK = ~((1 << VTD_PAGE_SHIFT) - 1) & ((1 << 64) - 1)


# -- descriptor builders (pure) -----------------------------------------------------------------
def desc_flush_context(did: int, sid: int, fm: int, granu: int) -> Desc:
    """``qi_flush_context``: type 1 with G = ``granu`` (1 global, 2 domain, 3 device)."""
    return encode("cc_inv", g=granu, did=did, sid=sid, fm=fm)


def desc_flush_iotlb(iommu, did: int, addr: int, size_order: int, granu: int,
                     ih: int = 0) -> Desc:
    """``qi_flush_iotlb``: type 2; DR/DW whenever CAP.DRD/DWD advertise draining.  ``ih`` is
    what reaches the wire: 6.1 passes 0 (its local ``ih = 0``; the profile's ``ih_on_wire``)."""
    caps = iommu.caps
    return _iotlb_desc(int(caps.drd), int(caps.dwd), did, addr & _PAGE_MASK, size_order, granu,
                       ih)


@lru_cache(maxsize=4096)
def _iotlb_desc(dr: int, dw: int, did: int, addr: int, am: int, granu: int, ih: int) -> Desc:
    """Memoised by its positional fields: every unmap and every map under CM builds one (a
    cache keyed by keyword arguments costs more than the encoding it saves)."""
    return encode("iotlb_inv", g=granu, did=did, dr=dr, dw=dw, addr=addr, ih=ih, am=am)


def _pfsid_fields(pfsid: int) -> dict[str, int]:
    """``QI_DEV_IOTLB_PFSID``: PFSID[3:0] in qw0 15:12, PFSID[15:4] in qw0 63:52."""
    return {"pfsid_lo": pfsid & 0xF, "pfsid_hi": (pfsid >> 4) & 0xFFF}


@lru_cache(maxsize=4096)  # pure; every unmap of an ATS device builds one
def desc_flush_dev_iotlb(sid: int, pfsid: int, qdep: int, addr: int, mask: int) -> Desc:
    """``qi_flush_dev_iotlb``: type 3.  With a mask, Linux ORs ones into address bits
    12..12+mask-2 of the address it is given (not aligned first: 6.1 passes the unaligned start
    frame of a PSI) and sets S; mask 52 gives ``0x7ffffffffffff001`` (whole space).  MIP is the
    ATS queue depth, >= 32 encoded as 0; the caller passes PFSID as 0 without ECAP.DIT."""
    s = 0
    if mask:
        addr |= (1 << (VTD_PAGE_SHIFT + mask - 1)) - 1
        s = 1
    mip = 0 if qdep >= QI_DEV_IOTLB_MAX_INVS else qdep
    return encode("dev_tlb_inv", sid=sid, mip=mip, s=s, addr=addr & _PAGE_MASK,
                  **_pfsid_fields(pfsid))


@lru_cache(maxsize=4096)  # pure; every unmap of a first-stage domain builds one
def desc_flush_piotlb(did: int, pasid: int, addr: int, npages: int, ih: int) -> Desc:
    """``qi_flush_piotlb``: type 6; ``npages == -1`` is PASID-selective (non-global), else the
    count is rounded up to a power of two and the address aligned down to it (Linux warns)."""
    if npages == -1:
        return encode("p_iotlb_inv", g=QI_GRAN_NONG_PASID, did=did, pasid=pasid)
    if npages < 1:
        raise SpecRuleBroken(f"qi_flush_piotlb with npages={npages}", "dmar.c WARN_ON")
    mask = (npages - 1).bit_length()
    addr &= ~((1 << (VTD_PAGE_SHIFT + mask)) - 1)
    return encode("p_iotlb_inv", g=QI_GRAN_PSI_PASID, did=did, pasid=pasid, addr=addr,
                  ih=ih, am=mask)


def desc_flush_pasid_cache(did: int, granu: int, pasid: int) -> Desc:
    """``qi_flush_pasid_cache``: type 7 (G 0 domain, 1 PASID-selective, 3 global)."""
    return encode("pc_inv", g=granu, did=did, pasid=pasid)


def desc_flush_dev_iotlb_pasid(sid: int, pfsid: int, pasid: int, qdep: int, addr: int,
                               size_order: int) -> Desc:
    """``qi_flush_dev_iotlb_pasid``: type 8; ones in bits 12..12+order-2 with bit
    12+order-1 cleared, S in qw1 bit 11; MIP is ``qdep & 0x1f``."""
    addr &= _PAGE_MASK
    s = 0
    if size_order:
        addr |= ((1 << size_order) - 1) << VTD_PAGE_SHIFT
        addr &= ~(1 << (VTD_PAGE_SHIFT + size_order - 1))
        s = 1
    return encode("p_dev_tlb_inv", sid=sid, pasid=pasid, mip=qdep & 0x1F, s=s, addr=addr,
                  **_pfsid_fields(pfsid))


def desc_global_iec() -> Desc:
    """``qi_global_iec``: type 4, global (interrupt remapping's entry cache)."""
    return encode("iec_inv", g=0)


def desc_wait(status_addr: int, pd: bool) -> Desc:
    """The wait descriptor ``qi_submit_sync`` appends: SW=1, status data QI_DONE, PD on
    request; IF is never used."""
    return encode("inv_wait", sw=1, status_data=QI_DONE, status_addr=status_addr, pd=int(pd))


# -- submission ---------------------------------------------------------------------------------
@lru_cache(maxsize=8 * QI_LENGTH)
def desc_store(base: int, shift: int, slot: int, desc: Sequence[int], why: str) -> CpuWrite:
    """The ``memcpy`` of one descriptor (16 or 32 bytes, ``1 << shift``) into its slot of the
    queue at ``base``, as one store: no actor can see a slot between its qwords, since
    hardware fetches only slots an IQT write has published (spec 6.5.2), and the slot is
    published after the copy.  Memoised (a step is an immutable value): a steady stream of
    unmaps writes the same descriptors into the same slots lap after lap."""
    size = 1 << shift
    return CpuWrite(addr=base + (slot << shift), value=join_qwords(desc[: size // 8]),
                    size=size, why=why)


@lru_cache(maxsize=4096)
def _submit_trace(name: str, desc: Desc) -> Annotate:
    """The ``qi_submit`` trace event of ``desc`` on unit ``name``, built once per descriptor
    (memoised like ``_iotlb_desc``: the same flushes recur)."""
    label = TYPE_LABELS.get(desc[0] & 0xF) or str(desc[0] & 0xF)
    return Annotate(event="qi_submit", data=(label, name, *desc), why="qi_submit_sync")


@dataclass(frozen=True, slots=True)
class WaitSlotSteps:
    """The steps of one ``qi_submit_sync`` that depend only on the queue and the slot of its
    wait descriptor: the queue lock, the status word set in use, the wait's store, the IQT
    write that publishes everything up to it, the status poll and the spin on it.  Steps are
    immutable values, so each slot's are built once (``_wait_slot_steps``)."""

    lock: Lock
    unlock: Unlock
    status_in_use: CpuWrite
    store: CpuWrite
    publish: MmioWrite
    poll: CpuRead
    spin: WaitQword


@lru_cache(maxsize=8 * QI_LENGTH)
def _wait_slot_steps(unit: int, lock: str, base: int, shift: int, status: int, slot: int,
                     pd: bool) -> WaitSlotSteps:
    why = "qi_submit_sync"
    word = 8 * (status & 7)  # the 32-bit status inside the qword the spin polls
    take, release = lock_steps(lock, why)
    return WaitSlotSteps(
        lock=take,
        unlock=release,
        status_in_use=CpuWrite(addr=status, value=QI_IN_USE, size=4, why=why),
        store=desc_store(base, shift, slot, desc_wait(status, pd), why),
        publish=MmioWrite(unit=unit, offset=DMAR_IQT_REG,
                          value=((slot + 1) % QI_LENGTH) << shift, size=4, why=why),
        poll=CpuRead(addr=status, size=4, why=why),
        spin=WaitQword(addr=status & ~7, value=QI_DONE << word, mask=0xFFFF_FFFF << word,
                       why=why),
    )


def qi_submit_sync(iommu, descs: Sequence[Desc], pd: bool = False) -> Generator[Step, Any, int]:
    """Submit ``descs`` plus a wait, one IQT write, spin until the wait's status is QI_DONE:
    0, or -EINVAL when the unit rejected our first descriptor (IQE); an ITE that aborted our
    wait restarts the whole submission (-EAGAIN in dmar.c's ``restart`` label).

    The restart and the polling are this function's loops, not nested generators: every
    step of every submission passes through each generator frame it is yielded from."""
    if len(descs) + 2 > QI_LENGTH:
        raise SpecRuleBroken(f"qi_submit_sync of {len(descs)} descriptors", "QI_LENGTH")
    why = "qi_submit_sync"
    q = iommu.qi
    lock, unlock = lock_steps(q.lock, why)
    while True:
        yield lock
        while q.free_cnt < len(descs) + 2:
            # Wait for count + 2 free slots: descriptors, the wait, one gap (another CPU
            # reclaims).
            yield unlock
            yield lock
        index = q.free_head
        wait_index = (index + len(descs)) % QI_LENGTH
        steps = _wait_slot_steps(iommu.index, q.lock, q.base, q.shift,
                                 q.status_addr(wait_index), wait_index, pd)
        for i, desc in enumerate(descs):
            slot = (index + i) % QI_LENGTH
            yield desc_store(q.base, q.shift, slot, desc, why)
            q.desc_status[slot] = QI_IN_USE
            yield _submit_trace(iommu.name, desc)
        q.desc_status[wait_index] = QI_IN_USE
        q.wait_slots.add(wait_index)
        yield steps.status_in_use
        yield steps.store
        q.free_head = (wait_index + 1) % QI_LENGTH
        q.free_cnt -= len(descs) + 1
        yield steps.publish
        rc = 0
        while (yield steps.poll) != QI_DONE:
            # Not done: check FSTS, then spin on the wait slot's status with the lock dropped
            # (``raw_spin_unlock; cpu_relax; raw_spin_lock``: other CPUs may submit) and poll
            # again, checking FSTS each round.
            rc = yield from qi_check_fault(iommu, q, index, wait_index)
            if rc:
                break
            yield steps.unlock
            yield steps.spin
            yield steps.lock
        else:
            q.desc_status[wait_index] = QI_DONE
        for i in range(len(descs)):
            q.desc_status[(index + i) % QI_LENGTH] = QI_DONE
        yield from reclaim_free_desc(q)
        yield steps.unlock
        if rc != EAGAIN:
            return rc


def qi_check_fault(iommu, q, index: int, wait_index: int) -> Generator[Step, Any, int]:
    """``qi_check_fault``: IQE at our first descriptor -> overwrite it with our wait
    descriptor, clear IQE, -EINVAL (an IQE at any other slot is not ours: Linux keeps
    spinning); ITE -> abort every in-use slot, clear ITE, -EAGAIN if our wait was aborted;
    ICE -> clear it."""
    why = "qi_check_fault"
    if q.desc_status[wait_index] == QI_ABORT:
        return EAGAIN
    fault = yield _fsts_read(iommu.index)
    if fault & DMA_FSTS_IQE:
        head = yield MmioRead(unit=iommu.index, offset=DMAR_IQH_REG, size=4, why=why)
        if head >> q.shift == index:
            yield desc_store(q.base, q.shift, index, desc_wait(q.status_addr(wait_index), False),
                             why)
            yield MmioWrite(unit=iommu.index, offset=DMAR_FSTS_REG, value=DMA_FSTS_IQE,
                            size=4, why=why)
            return EINVAL
    if fault & DMA_FSTS_ITE:
        yield from _abort_in_use(iommu, q, why)
        if q.desc_status[wait_index] == QI_ABORT:
            return EAGAIN
    if fault & DMA_FSTS_ICE:
        yield MmioWrite(unit=iommu.index, offset=DMAR_FSTS_REG, value=DMA_FSTS_ICE, size=4,
                        why=why)
    return 0


@lru_cache(maxsize=64)
def _fsts_read(unit: int) -> MmioRead:
    """``qi_check_fault``'s read of FSTS, built once per unit (a step is an immutable value):
    every wait not done at its first poll - each one on an asynchronous unit - reads it."""
    return MmioRead(unit=unit, offset=DMAR_FSTS_REG, size=4, why="qi_check_fault")


def _abort_in_use(iommu, q, why: str) -> Generator[Step, Any, None]:
    """ITE: from the wait slot before IQH back to the tail, every second slot (Linux assumes
    descriptor/wait pairs: ``head |= 1``) still in use becomes QI_ABORT.  Linux loops until it
    meets the tail; with an odd tail (mainline batches) that could never happen - whether
    mainline changed the walk is unconfirmed, so we stop after one lap."""
    head = yield MmioRead(unit=iommu.index, offset=DMAR_IQH_REG, size=4, why=why)
    head = (((head >> q.shift) - 1 + QI_LENGTH) % QI_LENGTH) | 1
    tail = yield MmioRead(unit=iommu.index, offset=DMAR_IQT_REG, size=4, why=why)
    tail = ((tail >> q.shift) - 1 + QI_LENGTH) % QI_LENGTH
    yield MmioWrite(unit=iommu.index, offset=DMAR_FSTS_REG, value=DMA_FSTS_ITE, size=4, why=why)
    for _ in range(QI_LENGTH // 2):
        if q.desc_status[head] == QI_IN_USE:
            q.desc_status[head] = QI_ABORT
        head = (head - 2 + QI_LENGTH) % QI_LENGTH
        if head == tail:
            break


@lru_cache(maxsize=8 * QI_LENGTH)
def _status_read(addr: int) -> CpuRead:
    """``reclaim_free_desc``'s load of a wait slot's status word, built once per slot (a step
    is an immutable value)."""
    return CpuRead(addr=addr, size=4, why="reclaim_free_desc")


def reclaim_free_desc(q) -> Iterable[Step]:
    """Free slots from the tail while they are DONE or ABORT.  A wait slot still marked in use
    may have been completed by the hardware for another CPU: its status word is read - the
    steps of those reads, for the caller's ``yield from``.  Most reclaims (a submission
    alone on its queue) read none: they free at once and hand back no generator at all."""
    while q.free_cnt < QI_LENGTH:
        slot = q.free_tail
        state = q.desc_status[slot]
        if state == QI_IN_USE and slot in q.wait_slots:
            return _reclaim_reading(q, slot)
        if state not in (QI_DONE, QI_ABORT):
            return ()
        q.desc_status[slot] = QI_FREE
        q.wait_slots.discard(slot)
        q.free_tail = (slot + 1) % QI_LENGTH
        q.free_cnt += 1
    return ()


def _reclaim_reading(q, slot: int) -> Generator[Step, Any, None]:
    """``reclaim_free_desc`` at wait slot ``slot`` (the tail), still marked in use: its
    status word is read - what the hardware wrote there is the slot's state - and the
    reclaim goes on from it."""
    state = yield _status_read(q.status_addr(slot))
    if state in (QI_DONE, QI_ABORT):
        q.desc_status[slot] = state
        yield from reclaim_free_desc(q)


# -- mainline batching ---------------------------------------------------------------------------
class QiBatch:
    """``struct qi_batch``: up to ``size`` descriptors for one IOMMU, submitted with one wait
    when full, when the flush loop moves to another IOMMU (``qi_batch_add_*`` checks
    ``iommu != batch iommu``) and at the end (``qi_batch_flush_descs``)."""

    def __init__(self, size: int = 16):
        self.size = size
        self.iommu = None
        self.descs: list[Desc] = []

    def add(self, iommu, desc: Desc) -> Iterable[Step]:
        """Queue ``desc`` for ``iommu``; the steps of the submissions that takes (the batch
        of another unit first, this one once full), for the caller's ``yield from``.  Most
        adds submit nothing: they queue at once and hand back no generator at all."""
        if (self.iommu is not None and iommu is not self.iommu) or len(self.descs) + 1 >= self.size:
            return self._add_submitting(iommu, desc)
        self.iommu = iommu
        self.descs.append(desc)
        return ()

    def _add_submitting(self, iommu, desc: Desc) -> Generator[Step, Any, None]:
        if self.iommu is not None and iommu is not self.iommu:
            yield from self.flush()
        self.iommu = iommu
        self.descs.append(desc)
        if len(self.descs) >= self.size:
            yield from self.flush()

    def flush(self) -> Generator[Step, Any, int]:
        """Submit what is pending (nothing: no submission).  ``qi_submit_sync``'s generator
        itself, not one delegating to it: each step of every flush would pass through one
        more frame."""
        if not self.descs:
            return self._nothing()
        descs, self.descs = self.descs, []
        return qi_submit_sync(self.iommu, descs)

    @staticmethod
    def _nothing() -> Generator[Step, Any, int]:
        """An empty batch's flush: no step, 0."""
        return 0
        yield
