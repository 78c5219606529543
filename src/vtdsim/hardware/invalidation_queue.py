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
    decode_fetched,
    validate,
)
from vtdsim.hardware.interrupt_events import raise_completion_event
from vtdsim.hardware.memory import MAX_PHYS_ADDR

_QS_PAGE = 4096  # IQA.QS: the queue is 2^QS 4 KiB pages (spec 10.4.24)
_DECODE_MEMO = 4096  # bound on remembered (raw descriptor -> decoded, IQEI) pairs


class InvalidationQueue:
    """The invalidation queue of one remapping unit; registers live in ``unit.regs``."""

    def __init__(self, unit):
        self.unit = unit
        # Set by an error (IQE/ITE), cleared by the next IQT write once software has cleared
        # the error: hardware does not resume on its own (reference §7; QEMU).
        self._stopped = False
        self._iqa_raw: int | None = None  # the IQA value ``_geometry`` was derived from
        self._geometry = (0, 16, _QS_PAGE, False)
        by_name = unit.regs.by_name
        self._qh_mask = by_name["IQH"].layout["qh"].in_place
        self._qt_mask = by_name["IQT"].layout["qt"].in_place
        fsts = by_name["FSTS"].layout
        self._fsts_stop = fsts["iqe"].in_place | fsts["ite"].in_place
        self._qies = by_name["GSTS"].layout["qies"].in_place
        # raw words -> (decoded, IQEI, counter), one memo per queue width (see ``_fetch``)
        self._decoded: dict[bool, dict[tuple, tuple]] = {False: {}, True: {}}
        # The ``stats`` counter of the last descriptor performed ("desc:<label>"; "" when the
        # latest ``step`` performed none): what a timed engine prices a step by.
        self.performed = ""

    def __getstate__(self) -> dict:
        # The decode memo is derived data: the checker's world copies start without it.
        state = self.__dict__.copy()
        state["_decoded"] = {False: {}, True: {}}
        return state

    # -- geometry (IQA is read live: software must not change it while QI is enabled) ---------
    def _geometry_now(self) -> tuple[int, int, int, bool]:
        """(base, descriptor width, queue size in bytes, 256-bit) from the current IQA; the
        decode is redone only when IQA's value changed."""
        regs = self.unit.regs
        raw = regs.raw["IQA"]
        if raw != self._iqa_raw:
            # 256-bit descriptors: IQA.DW, honoured only with ECAP.SMTS (spec 10.4.24).
            wide = bool(regs.get("IQA", "dw")) and self.unit.caps.smts
            self._geometry = (regs.get("IQA", "iqa") << 12, 32 if wide else 16,
                              _QS_PAGE << regs.get("IQA", "qs"), wide)
            self._iqa_raw = raw
        return self._geometry

    @property
    def wide(self) -> bool:
        return self._geometry_now()[3]

    @property
    def width(self) -> int:
        return self._geometry_now()[1]

    @property
    def size(self) -> int:
        """Queue size in bytes."""
        return self._geometry_now()[2]

    @property
    def base(self) -> int:
        return self._geometry_now()[0]

    @property
    def head(self) -> int:
        """IQH as a byte offset (QH counts 128-bit units from bit 4)."""
        return self.unit.regs.raw["IQH"] & self._qh_mask

    @property
    def tail(self) -> int:
        """IQT as a byte offset."""
        return self.unit.regs.raw["IQT"] & self._qt_mask

    # -- software-visible entry points ------------------------------------------------------------
    def on_iqt_write(self) -> None:
        """Software wrote IQT (the doorbell; one VM exit on a vIOMMU)."""
        self.unit.stats["iqt_writes"] += 1
        self.process()

    def process(self) -> None:
        """Check the tail, then process now ("sync") or leave it for ``step`` ("async").  Also
        entered when QI is enabled with a tail already written (no IQT write happened then)."""
        if self._halted():
            return
        self._stopped = False
        geometry = self._geometry_now()
        published = self._published(geometry)
        if published < 0:
            self._stop(-published)
        elif self.unit.qi_mode == "sync":
            self._run(published, geometry)

    def pending(self) -> int:
        """Descriptors hardware can process now (0 while disabled, stopped by an error, or the
        tail is invalid)."""
        if self._stopped or self._halted():
            return 0
        return max(self._published(self._geometry_now()), 0)

    def _published(self, geometry: tuple[int, int, int, bool]) -> int:
        """Descriptors from IQH up to IQT, or minus the IQEI of an invalid tail (``geometry``:
        ``_geometry_now``'s)."""
        _, width, size, wide = geometry
        raw = self.unit.regs.raw  # ``tail`` and ``head``, read in place
        tail = raw["IQT"] & self._qt_mask
        if tail >= size or (wide and tail % 32):  # ``_tail_error_at`` asked only when it errs
            return -self._tail_error_at(tail, size, wide)
        return ((tail - (raw["IQH"] & self._qh_mask)) % size) // width

    def step(self) -> bool:
        """Fetch, validate and perform the descriptor at IQH; False if there is none to do
        (``pending``, with the geometry read once for both)."""
        self.performed = ""
        if self._stopped or self._halted():
            return False
        geometry = self._geometry_now()
        if self._published(geometry) <= 0:  # none, or an invalid tail: nothing published
            return False
        self._take(geometry)  # ``_run`` of one, which takes it whatever its outcome
        return True

    def _run(self, count: int, geometry: tuple[int, int, int, bool]) -> int:
        """Fetch, validate and perform ``count`` descriptors from IQH (``pending`` allowed
        them), stopping at one that is rejected (IQE) or times out (ITE); how many were taken.
        The geometry is read once (the caller's): only software's register writes change it,
        and none comes between the descriptors of one run."""
        for taken in range(1, count + 1):
            if not self._take(geometry):
                return taken
        return count

    def _take(self, geometry: tuple[int, int, int, bool]) -> bool:
        """Fetch, validate and perform the descriptor at IQH, then advance IQH past it
        (unless rejected); False when processing stops there (IQE, or ITE)."""
        base, width, size, wide = geometry
        raw = self.unit.regs.raw
        head = raw["IQH"] & self._qh_mask  # ``head``
        desc, iqei, counter = self._fetch(base + head, width, wide)
        if iqei:
            self._stop(iqei)
            return False
        completed = self._perform(desc)
        self.unit.stats[counter] += 1
        self.performed = counter
        raw["IQH"] = ((head + width) % size) & self._qh_mask  # ``_set_head``
        if not completed:
            self._abort_pending()
            return False
        return True

    # -- state checks -------------------------------------------------------------------------
    def _halted(self) -> bool:
        """QI disabled (GSTS.QIES clear), or IQE or ITE set: no fetching until software
        clears it (spec 6.5.2.10 via Linux dmar.c qi_check_fault: "No new descriptors are
        fetched until the ITE is cleared").  One read of each register: ``pending`` asks
        before every descriptor."""
        raw = self.unit.regs.raw
        return not raw["GSTS"] & self._qies or bool(raw["FSTS"] & self._fsts_stop)

    @staticmethod
    def _tail_error_at(tail: int, size: int, wide: bool) -> int:
        if wide and tail % 32:
            return IQEI_TAIL_MISALIGNED  # 256-bit mode: IQT bit 4 must be 0 (spec 10.4.23)
        if tail >= size:
            return IQEI_TAIL_INVALID
        return 0

    def _stop(self, iqei: int) -> None:
        self._stopped = True
        self.unit.faults.raise_iqe(iqei)

    # -- fetch and head movement ----------------------------------------------------------------
    def _fetch(self, addr: int, width: int, wide: bool) -> tuple[Descriptor | None, int, str]:
        """The descriptor at ``addr``, its IQEI (0: valid) and its ``stats`` counter.  A
        snooped read: Linux's qi_submit_sync (dmar.c) writes descriptors with plain stores and
        never flushes them from the CPU cache, so hardware must read the queue coherently
        (ECAP.C speaks only of translation structures).  A slot beyond the physical address
        space is a descriptor fetch error (IQEI 2).

        ``decode`` + ``validate`` are memoised: both are pure functions of the raw words, the
        unit's capabilities (fixed) and the queue width (one memo per width), and a driver
        submits the same descriptors again and again (waits on the same status slots, flushes
        of recycled IOVAs).  A memo is emptied when it reaches ``_DECODE_MEMO`` entries."""
        if addr + width > MAX_PHYS_ADDR:
            return None, IQEI_FETCH_ERROR, ""
        # the CPU view = a snooped read
        qws = self.unit.memory.cpu_load_qwords(addr, 4 if wide else 2)
        memo = self._decoded[wide]
        hit = memo.get(qws)
        if hit is None:
            if len(memo) >= _DECODE_MEMO:
                memo.clear()
            desc = decode_fetched(qws)
            hit = memo[qws] = (desc, self.validate(desc, wide), "desc:" + desc.label)
        return hit

    def validate(self, desc: Descriptor, wide: bool) -> int:
        """The IQEI for ``desc`` (0: accepted): the spec's checks (``descriptors.validate``).
        An emulated unit with other rules (a VMM's) overrides this and ``_perform``; the
        result must stay a pure function of the raw words (it is memoised)."""
        return validate(desc, self.unit.caps, wide)

    def _set_head(self, offset: int) -> None:
        # QH is IQH's only field, so this is RegisterFile.set without the layout lookup.
        self.unit.regs.raw["IQH"] = offset & self._qh_mask

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
