"""The remapping unit: one DRHD's registers, caches, fault recorder and invalidation queue put
together behind an MMIO front and a DMA front (VT-d spec chapters 3, 6, 7, 10).

Composition and dispatch only.  The VT-d rules live in the modules this one wires up:
``registers`` (access kinds), ``global_command`` (GCMD/GSTS), ``register_invalidation``
(CCMD/IOTLB), ``faults`` and ``interrupt_events`` (FSTS/FRCD/FECTL/ICS/IECTL),
``invalidation_queue`` (IQT), ``translation`` (the request flow) and ``invalidation`` (what each
invalidation drops).

Hardware freedoms a checker explores (``possible_fills``/``apply_fill``, ``cached``/``evict``,
``qi_step`` in "async" mode) are exposed here so that every caller drives the same objects.

``trace(event, **fields)`` calls each listener in ``unit.listeners`` as
``listener(unit, event, fields)``: ignored register writes, fault records, queue errors and
interrupts are visible there; with no listener it costs one test.

A DMA whose host address falls outside the physical address space is aborted by the platform
(reads return all ones, writes are dropped) - a master abort, not a remapping fault.

Not modelled: multiple units sharing devices (each unit is independent), the register page's
base address (offsets only), DMA drain ordering, interrupt remapping of DMA writes to 0xFEEx_xxxx
(the translation flow faults on them instead).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vtdsim.errors import BadInput
from vtdsim.hardware import global_command, register_invalidation, translation
from vtdsim.hardware.caches.context_cache import ContextCache
from vtdsim.hardware.caches.iotlb import Iotlb
from vtdsim.hardware.caches.paging_structure_cache import PagingStructureCache
from vtdsim.hardware.caches.pasid_cache import PasidCache
from vtdsim.hardware.capabilities import Capabilities
from vtdsim.hardware.faults import Fault, FaultRecorder
from vtdsim.hardware.interrupt_events import deliver_if_unmasked, on_ics_write
from vtdsim.hardware.invalidation_queue import InvalidationQueue
from vtdsim.hardware.memory import MAX_PHYS_ADDR, PAGE_SIZE, PhysicalMemory
from vtdsim.hardware.registers import Register, RegisterFile
from vtdsim.hardware.request import DmaRequest

QI_MODES = ("sync", "async")
CACHE_NAMES = ("context_cache", "pasid_cache", "iotlb", "pscache")


class UnitStats(Counter):
    """The unit's event counters: a ``Counter`` whose item store is dict's own.  Counter's
    ``__delitem__`` (a Python method, so that deleting a missing key is no error) puts the
    type's one store slot, ``__setitem__``'s too, on a Python-level dispatch: that nearly
    doubled the cost of ``stats[k] += 1``, three of which are on every IOTLB miss.  Nothing
    deletes a unit counter; ``del`` of a missing one raises KeyError, as a dict's.  Every
    other operation (missing keys read 0, arithmetic, update, copy, equality, pickling) is
    Counter's."""

    __delitem__ = dict.__delitem__


@dataclass(frozen=True)
class CacheConfig:
    """Sizes and behaviour switches of a unit's caches (capacity 0: never caches).

    ``cache_negative``: with CAP.CM=1, not-present and faulting results may be cached (spec 6.1;
    QEMU never does - set False to model it).  ``qemu_resets``: reset every cache on SRTP and on
    TE changes as QEMU does, instead of the spec's ESRTPS-only rule.  ``compress_faults``:
    drop a fault whose SID already has a pending record (optional; QEMU does it).
    ``iotlb_flush_when_full``: a fill into a full IOTLB empties it whole (QEMU) instead of
    replacing the least recently used entry.  ``iotlb_tag_sid``: IOTLB entries are tagged
    with their requester's source-id, as QEMU keys them (``vtd_lookup_iotlb``), instead of
    being shared by the devices of a domain (caches/iotlb.py).
    ``device_tlb`` is the default ATC size of endpoints built for this unit.
    """

    context: int = 256
    pasid: int = 256
    iotlb: int = 1024
    pscache: int = 256
    device_tlb: int = 64
    cache_negative: bool = True
    qemu_resets: bool = False
    compress_faults: bool = True
    iotlb_flush_when_full: bool = False
    iotlb_tag_sid: bool = False


Listener = Callable[["RemappingUnit", str, dict], None]


class RemappingUnit:
    """One DMA-remapping hardware unit (a DRHD)."""

    def __init__(
        self,
        caps: Capabilities,
        memory: PhysicalMemory,
        *,
        name: str = "dmar0",
        cache_config: CacheConfig = CacheConfig(),  # noqa: B008 - frozen, shared safely
        qi_mode: str = "sync",
    ):
        if qi_mode not in QI_MODES:
            raise BadInput(f"qi_mode={qi_mode!r}: expected one of {', '.join(QI_MODES)}")
        self.caps = caps
        self.memory = memory
        self.name = name
        self.cache_config = cache_config
        self.qi_mode = qi_mode
        memory.write_buffer = caps.rwbf  # spec 6.8: structure writes are posted until flushed
        self.stats = UnitStats()
        self.listeners: list[Listener] = []
        self.translation_enabled = False
        self.root_table_addr = 0  # latched from RTADDR at SRTP
        self.ttm = 0
        self.irta = 0  # latched from IRTA at SIRTP
        self.endpoints: dict[int, Any] = {}  # sid -> Endpoint
        self.regs = RegisterFile(caps, on_write=self._register_written, on_event=self.trace)
        self.faults = FaultRecorder(self, compress_same_sid=cache_config.compress_faults)
        self.context_cache = ContextCache(capacity=cache_config.context)
        self.pasid_cache = PasidCache(capacity=cache_config.pasid)
        self.iotlb = Iotlb(capacity=cache_config.iotlb)
        self.iotlb.flush_when_full = cache_config.iotlb_flush_when_full
        self.iotlb.tag_sid = cache_config.iotlb_tag_sid
        self.pscache = PagingStructureCache(capacity=cache_config.pscache)
        self.queue = InvalidationQueue(self)
        self._bind_fast_path()

    def _bind_fast_path(self) -> None:
        # ``translate`` and its two halves, ``translate_cached`` (the IOTLB hit) and
        # ``translate_missed`` (the rest), and ``translate_page`` (the hit or a remembered
        # first-stage miss, for a device's DMA to one page), bound to this unit's caches
        # (translation.bind_translate): a method would add two calls and attribute lookups
        # to every hit.  ``pending_answers`` and ``settle_answers``: the counters of
        # translate_page's answers asked with counted=False, held and made.
        (self.translate, self.translate_cached, self.translate_missed, self.translate_page,
         self.translate_page_again, self.pending_answers,
         self.settle_answers) = translation.bind_translate(self)

    def __getstate__(self) -> dict:
        # copy/deepcopy/pickle (the checker snapshots worlds): the bound closure refers to the
        # original caches, so drop it and bind again on the copy - its counters made first.
        self.settle_answers()
        state = self.__dict__.copy()
        state.pop("translate", None)
        state.pop("translate_cached", None)
        state.pop("translate_missed", None)
        state.pop("translate_page", None)
        state.pop("translate_page_again", None)
        state.pop("pending_answers", None)
        state.pop("settle_answers", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bind_fast_path()

    # -- tracing -----------------------------------------------------------------------------------
    def trace(self, event: str, **fields: Any) -> None:
        if self.listeners:
            for listener in self.listeners:
                listener(self, event, fields)

    # -- MMIO front --------------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        self.stats["mmio_reads"] += 1
        return self.regs.mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.stats["mmio_writes"] += 1
        self.regs.mmio_write(offset, size, value)

    def _register_written(self, reg: Register, old: int, new: int) -> None:
        handler = _WRITE_HANDLERS.get(reg.name)  # IQT, the hot one, in one probe
        if handler is None and reg.name.startswith("FRCD"):
            handler = _WRITE_HANDLERS["FRCD"]
        if handler is not None:
            handler(self)

    # -- DMA front ---------------------------------------------------------------------------------
    # translate(sid, iova, write=False, pasid=None) -> IotlbEntry | Fault: the untranslated-
    # request fast path, installed per instance by _bind_fast_path; translate_cached(sid,
    # iova, write) -> IotlbEntry | None: its cache-hit half alone (None: nothing changed);
    # translate_missed(sid, iova, write): the other half, for a caller whose translate_cached
    # has just answered None (translate is translate_cached, then translate_missed on None);
    # translate_page(sid, iova, write) -> IotlbEntry | None: translate_cached that answers a
    # remembered first-stage miss too (None: nothing changed, translate_missed is the rest);
    # translate_page_again(): its last request once more, nothing having reached the unit since;
    # translate_page(sid, iova, write, known=True): another page then, context/PASID kept;
    # counted=False: its counters held in pending_answers (as the repeats a caller records in
    # pending_answers.repeats) until settle_answers() - for a caller that settles before
    # anything else may read a counter or reach the unit.

    def access(self, req: DmaRequest):
        """A full request (AT, privilege, execute, no-snoop): ``IotlbEntry`` or ``Fault``."""
        return translation.access(self, req)

    def dma_read(self, req: DmaRequest, n: int) -> bytes | Fault:
        """Read ``n`` bytes at ``req.addr``, translating each page the range touches."""
        out = bytearray()
        for page_req, _offset, length in _page_chunks(req, n):
            result = self.access(page_req)
            if not result:
                return result
            hpa = result.hpa | (page_req.addr & result.offset_mask)
            if self._master_abort(hpa, length):
                out += b"\xff" * length
                continue
            out += self.memory.dma_read(hpa, length, snoop=_snooped(req, result))
        return bytes(out)

    def dma_write(self, req: DmaRequest, data: bytes) -> Fault | None:
        """Write ``data`` at ``req.addr`` (a write request); the first faulting page stops it."""
        req = replace(req, write=True)
        for page_req, offset, length in _page_chunks(req, len(data)):
            result = self.access(page_req)
            if not result:
                return result
            hpa = result.hpa | (page_req.addr & result.offset_mask)
            if self._master_abort(hpa, length):
                continue
            chunk = bytes(data[offset : offset + length])
            self.memory.dma_write(hpa, chunk, snoop=_snooped(req, result))
        return None

    def _master_abort(self, hpa: int, length: int) -> bool:
        """An access outside the physical address space (pass-through or TE=0 with a wild
        address, an ATS-translated request): the platform aborts it - reads return all ones,
        writes are dropped.  Not a remapping fault, so nothing is recorded."""
        if hpa + length <= MAX_PHYS_ADDR:
            return False
        self.stats["dma_master_abort"] += 1
        self.trace("dma_master_abort", hpa=hpa, length=length)
        return True

    def attach_endpoint(self, endpoint: Any) -> None:
        """A device behind this unit: it receives device-TLB invalidations for its SID."""
        self.endpoints[endpoint.sid] = endpoint

    # -- hardware freedoms -------------------------------------------------------------------------
    def possible_fills(self, sid: int, iova: int, pasid: int | None = None,
                       earlier: dict | None = None) -> list:
        """Cache fills hardware could do now for this request, from current memory (with
        ``earlier``: some qwords of multi-qword entries as an earlier 64-bit piece read them)."""
        return translation.possible_fills(self, sid, iova, pasid, earlier)

    def entry_pieces(self, sid: int, iova: int, pasid: int | None = None) -> list:
        """The multi-qword entries (address, qwords) a walk for this request reads now."""
        return translation.entry_pieces(self, sid, iova, pasid)

    def apply_fill(self, fill: Any) -> None:
        translation.apply_fill(self, fill)

    def cached(self) -> list[tuple[str, Any]]:
        """Every cached entry as ``(cache_name, key)``, caches in a fixed order."""
        caches = [(name, getattr(self, name)) for name in CACHE_NAMES]
        return [(name, key) for name, cache in caches for key in cache.keys()]  # noqa: SIM118

    def evict(self, cache_name: str, key: Any) -> bool:
        """Hardware may drop any cached entry at any time (spec 6.1)."""
        if cache_name not in CACHE_NAMES:
            raise BadInput(f"no cache {cache_name!r}; caches: {', '.join(CACHE_NAMES)}")
        return getattr(self, cache_name).evict(key)

    def qi_step(self) -> bool:
        """"async" mode: process one queued descriptor; False if none can be processed."""
        return self.queue.step()

    def __repr__(self) -> str:
        return f"RemappingUnit({self.name}, {self.caps.dmesg()})"


def _snooped(req: DmaRequest, entry: Any) -> bool:
    """A no-snoop request is snooped anyway when the leaf says SNP (ECAP.SC, spec 3.9)."""
    return not req.no_snoop or bool(getattr(entry, "snp", False))


def _page_chunks(req: DmaRequest, n: int):
    """Split ``n`` bytes at ``req.addr`` into per-4K-page requests: (request, offset, length)."""
    offset = 0
    while offset < n:
        addr = req.addr + offset
        length = min(n - offset, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
        yield replace(req, addr=addr), offset, length
        offset += length


_WRITE_HANDLERS: dict[str, Callable[[RemappingUnit], None]] = {
    "GCMD": global_command.on_gcmd_write,
    "CCMD": register_invalidation.on_ccmd_write,
    "IOTLB": register_invalidation.on_iotlb_write,
    "IQT": lambda unit: unit.queue.on_iqt_write(),
    "FSTS": lambda unit: unit.faults.on_fsts_write(),
    "FRCD": lambda unit: unit.faults.on_frcd_write(),
    "FECTL": lambda unit: deliver_if_unmasked(unit, "fault"),
    "ICS": on_ics_write,
    "IECTL": lambda unit: deliver_if_unmasked(unit, "completion"),
}
