"""The queued-invalidation engine: IQA/IQH/IQT, descriptor fetch, IQE (VT-d spec 6.5.2;
reference §7).

Software writes descriptors at the tail and writes IQT (the doorbell).  Hardware fetches from
IQH up to IQT in order, wrapping at the end of the queue, validates each descriptor
(``descriptors.validate``), performs it through ``hardware.invalidation`` and advances IQH.
``qi_mode`` "sync" processes everything inside the IQT write, as QEMU's
``vtd_handle_iqt_write`` does; "async" leaves the work for ``step()`` (one descriptor per call)
so that the checker can interleave hardware progress with CPU steps.

Errors: a bad tail (IQEI 1, or 6 for a misaligned tail in 256-bit mode) or a descriptor that
fails validation sets FSTS.IQE with IQERCD.IQEI through ``unit.faults.raise_iqe``; IQH stays on
the bad descriptor and nothing is fetched until software clears IQE and writes IQT again (QEMU
behaviour; reference §7 step 3).  A device-TLB invalidation that gets no completion raises ITE
(``unit.faults.raise_ite``): the pending descriptors up to the tail are aborted (see
``_abort_pending``) and nothing is fetched while ITE is set.

Not modelled: descriptor fetch errors (IQEI 2: all memory is backed), invalid TTM (IQEI 7),
ICE (invalid ATS completions), time (an invalidation completes when it is processed, so FN and
the drain hints DR/DW are no-ops), the page-request drain of PD (PRI is not modelled; a
page-group response is accepted and counted only), and descriptor prefetch ahead of IQH.
"""

from __future__ import annotations

from vtdsim.hardware import invalidation as inv
from vtdsim.hardware.descriptors import (
    IQEI_FETCH_ERROR,
    IQEI_TAIL_INVALID,
    IQEI_TAIL_MISALIGNED,
    Descriptor,
    decode,
    validate,
)
from vtdsim.hardware.interrupt_events import raise_completion_event
from vtdsim.hardware.memory import MAX_PHYS_ADDR

_QS_PAGE = 4096  # IQA.QS: the queue is 2^QS 4 KiB pages (spec 10.4.24)


class InvalidationQueue:
    """The invalidation queue of one remapping unit; registers live in ``unit.regs``."""

    def __init__(self, unit):
        self.unit = unit
        # Set by an error (IQE/ITE), cleared by the next IQT write once software has cleared
        # the error: hardware does not resume on its own (reference §7; QEMU).
        self._stopped = False

    # -- geometry (IQA is read live: software must not change it while QI is enabled) ---------
    @property
    def wide(self) -> bool:
        """256-bit descriptors: IQA.DW, honoured only with ECAP.SMTS (spec 10.4.24)."""
        return bool(self.unit.regs.get("IQA", "dw")) and self.unit.caps.smts

    @property
    def width(self) -> int:
        return 32 if self.wide else 16

    @property
    def size(self) -> int:
        """Queue size in bytes."""
        return _QS_PAGE << self.unit.regs.get("IQA", "qs")

    @property
    def base(self) -> int:
        return self.unit.regs.get("IQA", "iqa") << 12

    @property
    def head(self) -> int:
        """IQH as a byte offset."""
        return self.unit.regs.get("IQH", "qh") << 4

    @property
    def tail(self) -> int:
        """IQT as a byte offset."""
        return self.unit.regs.get("IQT", "qt") << 4

    # -- software-visible entry points ------------------------------------------------------------
    def on_iqt_write(self) -> None:
        """Software wrote IQT (the doorbell; one VM exit on a vIOMMU)."""
        self.unit.stats["iqt_writes"] += 1
        self.process()

    def process(self) -> None:
        """Check the tail, then process now ("sync") or leave it for ``step`` ("async").  Also
        entered when QI is enabled with a tail already written (no IQT write happened then)."""
        if not self._enabled() or self._error_pending():
            return
        self._stopped = False
        iqei = self._tail_error()
        if iqei:
            self._stop(iqei)
            return
        if self.unit.qi_mode == "sync":
            while self.step():
                pass

    def pending(self) -> int:
        """Descriptors hardware can process now (0 while disabled, stopped by an error, or the
        tail is invalid)."""
        if not self._enabled() or self._stopped or self._error_pending() or self._tail_error():
            return 0
        return ((self.tail - self.head) % self.size) // self.width

    def step(self) -> bool:
        """Fetch, validate and perform the descriptor at IQH; False if there is none to do."""
        if not self.pending():
            return False
        desc = self._fetch(self.head)
        iqei = IQEI_FETCH_ERROR if desc is None else validate(desc, self.unit.caps, self.wide)
        if iqei:
            self._stop(iqei)
            return True
        completed = self._perform(desc)
        self.unit.stats["desc:" + desc.label] += 1
        self._advance()
        if not completed:
            self._abort_pending()
        return True

    # -- state checks -------------------------------------------------------------------------
    def _enabled(self) -> bool:
        return bool(self.unit.regs.get("GSTS", "qies"))

    def _error_pending(self) -> bool:
        """IQE or ITE set: no fetching until software clears it (spec 6.5.2.10 via Linux
        dmar.c qi_check_fault: "No new descriptors are fetched until the ITE is cleared")."""
        regs = self.unit.regs
        return bool(regs.get("FSTS", "iqe") or regs.get("FSTS", "ite"))

    def _tail_error(self) -> int:
        if self.wide and self.tail % 32:
            return IQEI_TAIL_MISALIGNED  # 256-bit mode: IQT bit 4 must be 0 (spec 10.4.23)
        if self.tail >= self.size:
            return IQEI_TAIL_INVALID
        return 0

    def _stop(self, iqei: int) -> None:
        self._stopped = True
        self.unit.faults.raise_iqe(iqei)

    # -- fetch and head movement ----------------------------------------------------------------
    def _fetch(self, offset: int) -> Descriptor | None:
        """A snooped read: Linux's qi_submit_sync (dmar.c) writes descriptors with plain stores
        and never flushes them from the CPU cache, so hardware must read the queue coherently
        (ECAP.C speaks only of translation structures).  None when the slot lies beyond the
        physical address space: a descriptor fetch error (IQEI 2)."""
        addr = self.base + offset
        if addr + self.width > MAX_PHYS_ADDR:
            return None
        raw = self.unit.memory.dma_read(addr, self.width, snoop=True)
        qws = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
        return decode(qws)

    def _advance(self) -> None:
        self._set_head((self.head + self.width) % self.size)

    def _set_head(self, offset: int) -> None:
        self.unit.regs.update("IQH", qh=offset >> 4)

    def _abort_pending(self) -> None:
        """After ITE hardware aborts the wait descriptors it has pending (Linux qi_check_fault:
        "all pending wait_desc commands are aborted") and Linux resubmits its work.  Which
        descriptors count as pending is unconfirmed (reference §7 step 4); we treat everything
        up to the tail as fetched and discard it unperformed, so IQH moves to IQT."""
        self._stopped = True
        self._set_head(self.tail % self.size)

    # -- performing descriptors -----------------------------------------------------------------
    def _perform(self, desc: Descriptor) -> bool:
        """Carry out a valid descriptor; False if a device-TLB invalidation timed out (ITE)."""
        if desc.type == 5:
            self._wait(desc.fields)
            return True
        return _HANDLERS[desc.type](self.unit, desc.fields)

    def _wait(self, f: dict) -> None:
        """Invalidation wait (spec 6.5.2.8).  In-order processing means every earlier
        descriptor has completed, so FN needs nothing more (as QEMU)."""
        if f["sw"]:
            # Snooped write: Linux polls desc_status with plain loads (qi_submit_sync).  A status
            # address beyond the physical address space is a master abort: dropped, counted.
            if f["status_addr"] + 4 <= MAX_PHYS_ADDR:
                self.unit.memory.write_dword(f["status_addr"], f["status_data"], snoop=True)
            else:
                self.unit.stats["dma_master_abort"] += 1
        if f["if_"]:
            # ICS.IWC and the completion event, held pending while IECTL.IM (spec 10.4.25-26).
            raise_completion_event(self.unit)


# -- per-type actions: what each descriptor does (spec 6.5.2.x; caches in invalidation.py) ----
def _context_cache(unit, f: dict) -> bool:
    if f["g"] == 1:
        inv.context_cache_global(unit)
    elif f["g"] == 2:
        inv.context_cache_domain(unit, f["did"])
    else:
        inv.context_cache_device(unit, f["did"], f["sid"], f["fm"])
    return True


def _iotlb(unit, f: dict) -> bool:
    if f["g"] == 1:
        inv.iotlb_global(unit)
    elif f["g"] == 3 and unit.caps.psi:
        inv.iotlb_page(unit, f["did"], f["addr"], f["am"], f["ih"])
    else:
        # DSI, or PSI on a unit without CAP.PSI: hardware may invalidate at a coarser
        # granularity (spec 6.5.1.2 IAIG reports the same downgrade for register invalidation).
        inv.iotlb_domain(unit, f["did"])
    return True


def _device_tlb(unit, f: dict) -> bool:
    return _devtlb_result(unit, f, None, False)


def _p_device_tlb(unit, f: dict) -> bool:
    return _devtlb_result(unit, f, f["pasid"], bool(f["g"]))


def _devtlb_result(unit, f: dict, pasid: int | None, global_: bool) -> bool:
    """An ATS invalidation; no completion in time means ITE with ITESID (spec 6.5.2.5)."""
    if inv.device_tlb(unit, f["sid"], pasid, f["addr"], f["s"], global_):
        return True
    unit.faults.raise_ite(f["sid"])
    return False


def _iec(unit, f: dict) -> bool:
    inv.iec(unit, f["g"], f["iidx"], f["im"])
    return True


def _p_iotlb(unit, f: dict) -> bool:
    if f["g"] == 2:
        inv.piotlb_pasid(unit, f["did"], f["pasid"])
    else:
        inv.piotlb_page(unit, f["did"], f["pasid"], f["addr"], f["am"], f["ih"])
    return True


def _pasid_cache(unit, f: dict) -> bool:
    if f["g"] == 0:
        inv.pasid_cache_domain(unit, f["did"])
    elif f["g"] == 1:
        inv.pasid_cache_pasid(unit, f["did"], f["pasid"])
    else:
        inv.pasid_cache_global(unit)
    return True


def _page_group_response(unit, f: dict) -> bool:
    """Accepted and counted: page requests (PRI) are not modelled."""
    return True


_HANDLERS = {
    1: _context_cache, 2: _iotlb, 3: _device_tlb, 4: _iec,
    6: _p_iotlb, 7: _pasid_cache, 8: _p_device_tlb, 9: _page_group_response,
}
