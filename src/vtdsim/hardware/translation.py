"""The DMA request flow: context -> PASID -> IOTLB/PSC -> page walk (VT-d spec ch. 3, 4, 6).

``bind_translate`` builds the fast path the unit installs as ``unit.translate`` for
untranslated requests (a context-cache hit then an IOTLB hit returns the cached ``IotlbEntry``
itself); everything else goes through ``access``, which
handles every request type:

* legacy mode (TTM=00): root entry at RTA + bus*16, context entry at CTP + devfn*16, TT 00/01
  (second stage), 10 (pass-through, needs ECAP.PT), 11 reserved;
* scalable mode (TTM=01): root-entry halves, 256-bit context entries, the PASID directory and
  table, and every PGTT: first stage, second stage, nested, pass-through;
* ATS translation requests (AT=01: TT=01 / DTE=1 only) return the translation for the
  device-TLB; page-table faults are not recorded but answered with R=W=0 (spec 4.2.3: a
  translation completion carries the permissions, "success with R=W=0" when not present);
* translated requests (AT=10: TT=01 / DTE=1 only) pass the address through without a walk.

Caching (spec 6.1, 6.2): results fill the context-cache, PASID-cache, paging-structure caches
and IOTLB; with CAP.CM=1 and ``cache_config.cache_negative``, faulting context, PASID and SS
entries are cached as negative entries (present=False) so a missing invalidation after making
them present shows up as a stale fault.  First-stage results are never negative-cached.

Coherency of walks (spec 6.1, ECAP.C / SMPWC): root, context and PASID entries are read
snooped iff ECAP.C; SS/FS tables iff ECAP.C in legacy mode, and in scalable mode iff
ECAP.SMPWC and the PASID entry's PWSNP.

HAW: spec 9.x reserves pointer bits at or above the platform's host address width, which the
ACPI DMAR table reports, not a register.  We use min(MGAW, 52) as QEMU does (its aw_bits serves
both; vtd_init); a ``Capabilities.haw`` would be the faithful source.

Not modelled: interrupt requests (a request without PASID to 0xFEEx_xxxx faults 0xE/0x87
instead of being remapped), page requests (PRE), RID_PRIV needing ECAP.RPRIVS, PASID width
checks against ECAP.PSS, access errors (faults 0x8/0x9/0x38/0x40/0x50/0x58/0x70/0x78: our
memory never fails), SS A/D in legacy mode, caching of nested second-stage translations of
first-stage table addresses other than as paging-structure entries, negative PSC entries.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from vtdsim.hardware import first_stage as fs
from vtdsim.hardware import pasid_table as pt
from vtdsim.hardware import root_table as rt
from vtdsim.hardware import second_stage as ss
from vtdsim.hardware.caches.context_cache import ContextCacheEntry
from vtdsim.hardware.caches.iotlb import STAGE_FS, STAGE_NESTED, STAGE_PT, STAGE_SS, IotlbEntry
from vtdsim.hardware.caches.paging_structure_cache import PscEntry
from vtdsim.hardware.caches.pasid_cache import PasidCacheEntry
from vtdsim.hardware.faults import Fault, FaultReason
from vtdsim.hardware.request import AT_TRANSLATED, AT_TRANSLATION_REQUEST, DmaRequest

INTERRUPT_BASE, INTERRUPT_SIZE = 0xFEE0_0000, 0x10_0000

# Page-table faults a translation request answers with R=W=0 instead of recording (4.2.3).
_WALK_REASONS = frozenset(
    {0x4, 0x5, 0x6, 0x7, 0xC, 0x71, 0x72, 0x79, 0x7A, 0x80, 0x81, 0x82, 0x83, 0x85, 0x86}
)


@dataclass(frozen=True, slots=True)
class Fill:
    """A cache entry hardware could insert now; ``writes`` are the A/D stores it makes with it."""

    cache: str  # "context_cache", "pasid_cache", "pscache", "iotlb"
    key: Any
    entry: Any
    writes: tuple[tuple[int, int], ...] = ()


class _Abort(Exception):
    """Internal: a fault ends the flow.  Never escapes this module."""

    def __init__(self, reason: int):
        super().__init__(reason)
        self.reason = reason


# -- the public entry points ----------------------------------------------------------------------
def bind_translate(unit: Any):
    """The untranslated-request fast path bound to ``unit``'s caches, for the unit to install
    as its ``translate``: a context-cache probe, an IOTLB probe, and on a hit with the
    permission the cached ``IotlbEntry`` itself.  Anything else takes the full flow.

    Hits are counted in ``unit.iotlb.stats.hit`` only (a Counter increment would double the
    cost of the hit path); the context-cache probe does not refresh recency (LRU of the
    context-cache sees only the slow path - a policy choice, any eviction is legal).
    """
    # The caches' bound dict.get (base.LruCache binds it once for this path): a method call
    # per probe would double the cost of a hit.
    context_get = unit.context_cache._get
    iotlb = unit.iotlb
    iotlb_get, iotlb_touch, iotlb_stats = iotlb._get, iotlb._touch, iotlb.stats
    lookup_iova = iotlb.lookup_iova

    def translate_bound(sid: int, iova: int, write: bool = False, pasid: int | None = None):
        if pasid is None and unit.translation_enabled and not unit.ttm:
            ce = context_get(sid)
            if ce is not None and ce.present and ce.did is not None and ce.tt != 2:
                # The 4 KiB probe of Iotlb.lookup_iova, inlined: most hits are 4 KiB pages.
                key = (ce.did, 0, 1, iova >> 12)
                entry = iotlb_get(key)
                if entry is not None and entry.present and (entry.write if write
                                                            else entry.read):
                    iotlb_touch(key)
                    iotlb_stats.hit += 1
                    return entry
                entry = lookup_iova(ce.did, 0, iova)
                if entry is not None and entry.present and (entry.write if write
                                                            else entry.read):
                    return entry
                return _run(unit, DmaRequest(sid, iova, write), ce, probed=True, entry=entry)
        return access(unit, DmaRequest(sid, iova, write, pasid))

    return translate_bound


def access(unit: Any, req: DmaRequest):
    """Any request (AT, PASID, privilege, execute): ``IotlbEntry`` or ``Fault``."""
    if not unit.translation_enabled:
        return _pass_through(req.addr, 0, 0, STAGE_PT)
    return _run(unit, req)


def possible_fills(unit: Any, sid: int, iova: int, pasid: int | None = None) -> list[Fill]:
    """Every cache entry a walk of *current memory* for an untranslated read could insert,
    without changing caches, memory or stats (the checker's hardware freedom, spec 6.1)."""
    if not unit.translation_enabled:
        return []
    flow = _Flow(unit, DmaRequest(sid, iova, pasid=pasid), dry=True)
    with contextlib.suppress(_Abort):
        flow.run()
    return flow.fills


def apply_fill(unit: Any, fill: Fill) -> None:
    """Insert one fill (and make its A/D stores, which hardware does with the fill)."""
    for addr, value in fill.writes:
        unit.memory.write_qword(addr, value)
    getattr(unit, fill.cache).fill(fill.key, fill.entry)


# -- driving one request --------------------------------------------------------------------------
def _run(unit: Any, req: DmaRequest, ce: ContextCacheEntry | None = None, *,
         probed: bool = False, entry: IotlbEntry | None = None):
    """The full flow; ``ce``/``entry`` are what the fast path already looked up (``probed``:
    the IOTLB was probed, so its miss is not counted twice)."""
    flow = _Flow(unit, req, ce=ce, probed=probed, entry=entry)
    try:
        return flow.run()
    except _Abort as stop:
        if req.at == AT_TRANSLATION_REQUEST and stop.reason in _WALK_REASONS:
            return _no_access(req.addr)
        fault = Fault(FaultReason(stop.reason), req.sid, req.addr, req.write, req.pasid,
                      req.exe, req.priv, req.at)
        unit.faults.record(fault, fpd=flow.fpd)  # counts stats["faults"], honours FPD
        return fault


def _pass_through(addr: int, did: int, pasid: int, stage: str) -> IotlbEntry:
    page = addr & ~0xFFF
    return IotlbEntry(did, pasid, page, 1, page, True, True, True, False, stage)


def _no_access(addr: int) -> IotlbEntry:
    """A translation completion granting nothing (R=W=0) for the page of ``addr``."""
    page = addr & ~0xFFF
    return IotlbEntry(0, 0, page, 1, 0, False, False, False, False, STAGE_SS, present=False)


def _overlaps_interrupt_range(base: int, size: int) -> bool:
    return base < INTERRUPT_BASE + INTERRUPT_SIZE and base + size > INTERRUPT_BASE


class _Flow:
    """One request's trip through the unit.  ``dry``: enumerate fills from memory only (no
    cache lookups, no stats, no memory writes)."""

    def __init__(self, unit: Any, req: DmaRequest, *, dry: bool = False,
                 ce: ContextCacheEntry | None = None, probed: bool = False,
                 entry: IotlbEntry | None = None):
        self.unit, self.req, self.dry = unit, req, dry
        self.caps = unit.caps
        self.scalable = unit.ttm == 1
        self.haw = min(self.caps.mgaw, 52)
        self.negative = self.caps.caching_mode and unit.cache_config.cache_negative
        self.fpd = False
        self.fills: list[Fill] = []
        self.writes: list[tuple[int, int]] = []
        self.ce, self.probed, self.probed_entry = ce, probed or dry, entry
        # PRIV and EXE travel in the PASID TLP prefix: without a PASID they are clear.
        self.priv = req.priv and req.pasid is not None
        self.exe = req.exe and req.pasid is not None
        self.read_structure = self.reader(self.caps.coherent)

    # -- plumbing -------------------------------------------------------------------------------
    def reader(self, snoop: bool):
        memory = self.unit.memory
        if self.dry:
            return lambda addr: memory.read_qword(addr, snoop=snoop)
        stats = self.unit.stats

        def read(addr: int) -> int:
            stats["walk_reads"] += 1
            return memory.read_qword(addr, snoop=snoop)

        return read

    def read_entry(self, addr: int, qwords: int) -> int:
        read = self.read_structure
        return sum(read(addr + 8 * i) << (64 * i) for i in range(qwords))

    def lookup(self, cache: str, key: Any) -> Any:
        if self.dry:
            return None
        entry = getattr(self.unit, cache).lookup(key)
        if entry is None:
            self.unit.stats[f"{cache}_miss"] += 1
        return entry

    def fill(self, cache: str, key: Any, entry: Any, writes: tuple = ()) -> None:
        self.fills.append(Fill(cache, key, entry, writes))

    def commit(self) -> None:
        """Make the A/D stores, then the fills (a non-dry flow that reached its end)."""
        if self.dry:
            return
        for addr, value in self.writes:
            self.unit.memory.write_qword(addr, value)
        for f in self.fills:
            getattr(self.unit, f.cache).fill(f.key, f.entry)

    def abort(self, reason: int):
        raise _Abort(reason)

    def require(self, present: bool, reserved: int, absent: int, bad: int) -> None:
        """A pointer entry: P first (with P clear the rest is ignored, 9.x), then reserved."""
        if not present:
            self.abort(absent)
        if reserved:
            self.abort(bad)

    def sm_or_legacy(self, sm: int, legacy: int) -> int:
        return sm if self.scalable else legacy

    # -- the flow -------------------------------------------------------------------------------
    def run(self):
        try:
            return self.request()
        finally:
            # A faulting flow keeps what it legitimately fetched (context, PASID, tables) and,
            # under CM only, the negative entries it created (they are made only then).
            self.commit()

    def request(self):
        if self.unit.ttm not in (0, 1):
            self.abort(0x30)  # TTM=10/11: reserved / abort-DMA mode, not modelled
        req = self.req
        if req.pasid is not None and not self.scalable:
            self.abort(0x31)  # 8: a request with PASID while TTM=legacy
        ce = self.context()
        self.check_request_type(ce)
        if req.at == AT_TRANSLATED:
            return _pass_through(req.addr, 0, 0, STAGE_PT)
        if req.pasid is None and _overlaps_interrupt_range(req.addr, 1):
            self.abort(self.sm_or_legacy(0x87, 0xE))
        return self.scalable_request(ce) if self.scalable else self.legacy_request(ce)

    def check_request_type(self, ce: ContextCacheEntry) -> None:
        """ATS requests need TT=01 (legacy, fault 0xD) or DTE=1 (scalable, fault 0x44)."""
        if self.req.at not in (AT_TRANSLATION_REQUEST, AT_TRANSLATED):
            if self.req.at != 0:  # AT=11 is reserved in PCIe: blocked like an ATS request
                self.abort(self.sm_or_legacy(0x44, 0xD))
            return
        allowed = ce.dte if self.scalable else ce.tt == rt.TT_SS_ATS
        if not allowed or not self.caps.dt:
            self.abort(self.sm_or_legacy(0x44, 0xD))

    # -- context ----------------------------------------------------------------------------------
    def context(self) -> ContextCacheEntry:
        sid = self.req.sid
        ce = self.ce if self.ce is not None else self.lookup("context_cache", sid)
        if ce is not None and ce.scalable != self.scalable:
            # Cached in the other table mode (SRTP changed TTM without a global context-cache
            # invalidation, which 14.1 requires): its format no longer applies; fetch again.
            ce = None
        if ce is None:
            ce = self.fetch_context(sid)
            if ce.present or self.negative:
                self.fill("context_cache", sid, ce)
        self.fpd = ce.fpd
        if not ce.present:
            self.abort(self.context_fault(ce.raw))
        return ce

    def fetch_context(self, sid: int) -> ContextCacheEntry:
        bus, devfn = sid >> 8 & 0xFF, sid & 0xFF
        root = self.read_entry(rt.root_entry_addr(self.unit.root_table_addr, bus), 2)
        if self.scalable:
            present, ctp = rt.sm_root_half(root, devfn)
            self.require(present, rt.sm_root_entry_reserved(root, self.haw, devfn), 0x39, 0x3A)
            raw = self.read_entry(rt.sm_context_entry_addr(ctp, devfn), 4)
            return _sm_context_entry(sid, raw, not self.context_fault(raw))
        present = bool(rt.ROOT_ENTRY.get(root, "p"))
        self.require(present, rt.root_entry_reserved(root, self.haw), 0x1, 0xA)
        ctp = rt.ROOT_ENTRY.get(root, "ctp") << 12
        raw = self.read_entry(rt.context_entry_addr(ctp, devfn), 2)
        return _legacy_context_entry(sid, raw, not self.context_fault(raw))

    def context_fault(self, raw: int) -> int:
        """Why a fetched context entry cannot be used (0 if it can): spec 8, 9.3/9.4.  A pure
        function of the entry, so a negative cache entry replays the same fault."""
        if self.scalable:
            if not rt.SM_CONTEXT_ENTRY.get(raw, "p"):
                return 0x41
            return 0x42 if rt.sm_context_entry_reserved(raw, self.haw) else 0
        if not rt.CONTEXT_ENTRY.get(raw, "p"):
            return 0x2
        if rt.context_entry_reserved(raw, self.haw):
            return 0xB
        tt = rt.CONTEXT_ENTRY.get(raw, "tt")
        if tt == rt.TT_PASS_THROUGH:
            return 0 if self.caps.pt else 0x3
        if tt == 0b11 or (tt == rt.TT_SS_ATS and not self.caps.dt):
            return 0x3  # 9.3: TT=11 reserved; TT=01 is reserved without ECAP.DT
        levels = ss.levels_from_aw(rt.CONTEXT_ENTRY.get(raw, "aw"))
        return 0 if levels in self.caps.supported_levels else 0x3

    # -- legacy mode ------------------------------------------------------------------------------
    def legacy_request(self, ce: ContextCacheEntry) -> IotlbEntry:
        if ce.tt == rt.TT_PASS_THROUGH:
            return _pass_through(self.req.addr, ce.did, 0, STAGE_PT)
        rules = ss.SsRules(self.haw, self.large_levels(), snp_reserved=not self.caps.sc,
                           tm_reserved=not self.caps.dt, snoop=self.caps.coherent)
        return self.page(ce.did, 0, lambda: self.ss_page(
            ce.did, 0, STAGE_SS, ce.ssptptr, ce.levels, rules, pgsnp=False))

    def large_levels(self) -> tuple[int, ...]:
        return tuple(lv for lv, ok in ((2, self.caps.sllps_2m), (3, self.caps.sllps_1g)) if ok)

    # -- scalable mode ----------------------------------------------------------------------------
    def scalable_request(self, ce: ContextCacheEntry) -> IotlbEntry:
        req = self.req
        if req.pasid is not None and not ce.paside:
            self.abort(0x45)
        pasid = ce.rid_pasid if req.pasid is None else req.pasid
        pe = self.pasid_entry(ce, pasid)
        if self.priv and not (self.caps.srs and pe.sre):
            self.abort(0x5D)
        if self.exe and not (self.caps.ers and pe.ere):
            self.abort(0x5C)
        if pe.pgtt == pt.PGTT_PT:
            return _pass_through(req.addr, pe.did, pasid, STAGE_PT)
        return self.page(pe.did, pasid, lambda: self.sm_walk(pe, pasid))

    def pasid_entry(self, ce: ContextCacheEntry, pasid: int) -> PasidCacheEntry:
        if pt.pasid_dir_index(pasid) >= pt.pasid_dir_entries(ce.pdts):
            self.abort(0x46)
        key = (self.req.sid, pasid)
        pe = self.lookup("pasid_cache", key)
        if pe is None:
            pe = self.fetch_pasid_entry(ce, pasid)
            if pe.present or self.negative:
                self.fill("pasid_cache", key, pe)
        self.fpd = self.fpd or pe.fpd
        if not pe.present:
            self.abort(self.pasid_fault(pe.raw))
        return pe

    def fetch_pasid_entry(self, ce: ContextCacheEntry, pasid: int) -> PasidCacheEntry:
        dire = self.read_entry(pt.pasid_dir_entry_addr(ce.pasid_dir, pasid), 1)
        self.fpd = self.fpd or bool(pt.PASID_DIR_ENTRY.get(dire, "fpd"))
        present = bool(pt.PASID_DIR_ENTRY.get(dire, "p"))
        self.require(present, pt.pasid_dir_entry_reserved(dire, self.haw), 0x51, 0x52)
        table = pt.PASID_DIR_ENTRY.get(dire, "pasid_table_ptr") << 12
        raw = self.read_entry(pt.pasid_entry_addr(table, pasid), 8)
        fpd = self.fpd or bool(pt.PASID_ENTRY.get(raw, "fpd"))
        return _pasid_cache_entry(self.req.sid, pasid, raw, not self.pasid_fault(raw), fpd)

    def pasid_fault(self, raw: int) -> int:
        """Why a fetched PASID entry cannot be used (0 if it can): 0x59 P, 0x5A reserved, 0x5B
        invalid - a PGTT the unit lacks, an AW not in SAGAW, an FSPM it cannot walk."""
        get, caps = pt.PASID_ENTRY.get, self.caps
        if not get(raw, "p"):
            return 0x59
        if pt.pasid_entry_reserved(raw, self.haw):
            return 0x5A
        pgtt = get(raw, "pgtt")
        supported = {pt.PGTT_FS: caps.fsts, pt.PGTT_SS: caps.ssts, pt.PGTT_PT: caps.pt,
                     pt.PGTT_NESTED: caps.nest and caps.fsts and caps.ssts}
        if not supported.get(pgtt, False):
            return 0x5B
        if pgtt in (pt.PGTT_SS, pt.PGTT_NESTED):
            if ss.levels_from_aw(get(raw, "aw")) not in caps.supported_levels:
                return 0x5B
            if get(raw, "ssade") and not caps.ssads:
                return 0x5B
        if pgtt in (pt.PGTT_FS, pt.PGTT_NESTED):
            levels = fs.fs_levels(get(raw, "fspm"))
            if levels == 0 or (levels == 5 and not caps.fs5lp):
                return 0x5B
        return 0

    def sm_walk(self, pe: PasidCacheEntry, pasid: int) -> IotlbEntry:
        if pe.pgtt == pt.PGTT_SS:
            return self.ss_page(pe.did, pasid, STAGE_SS, pe.ssptptr, pe.levels,
                                self.ss_rules(pe), pgsnp=pe.pgsnp)
        return self.fs_page(pe, pasid, nested=pe.pgtt == pt.PGTT_NESTED)

    def walk_snoop(self, pe: PasidCacheEntry) -> bool:
        return self.caps.smpwc and pe.pwsnp

    def ss_rules(self, pe: PasidCacheEntry) -> ss.SsRules:
        return ss.SsRules(self.haw, self.large_levels(), tm_reserved=not self.caps.dt,
                          ssee=pe.ssee, ad=pe.ssade, snoop=self.walk_snoop(pe))

    # -- IOTLB ------------------------------------------------------------------------------------
    def page(self, did: int, pasid: int, walk) -> IotlbEntry:
        """IOTLB lookup, else ``walk()``; then the request's permission check."""
        entry = self.probed_entry
        if not self.probed:
            entry = self.unit.iotlb.lookup_iova(did, pasid, self.req.addr)
        if entry is None or not self.usable(entry):
            if not self.dry:
                self.unit.stats["iotlb_miss"] += 1
                self.unit.stats["walks"] += 1
            entry = walk()
        self.check_access(entry)
        return entry

    def usable(self, entry: IotlbEntry) -> bool:
        """Whether a cached entry answers this request.  A first-stage entry lacking the
        permission is re-walked, as x86 re-walks before a page fault (it may lack D); a
        second-stage one answers with its cached (possibly stale) permissions or fault."""
        if entry.stage in (STAGE_SS, STAGE_PT):
            return True
        return entry.present and self.permitted(entry)

    def permitted(self, entry: IotlbEntry) -> bool:
        req = self.req
        if req.at == AT_TRANSLATION_REQUEST:
            return True  # the completion carries the permissions (4.2.3)
        return (entry.write if req.write else entry.read) and (entry.exe or not self.exe)

    def check_access(self, entry: IotlbEntry) -> None:
        if not entry.present:
            self.abort(_replay_reason(entry.fault_reason, self.req.write))
        if not self.permitted(entry):
            if self.exe and not entry.exe:
                self.abort(0x82)
            self.abort(ss.ss_fault_reason("permission", self.scalable, self.req.write))

    def fill_iotlb(self, entry: IotlbEntry) -> None:
        """Cache ``entry`` unless either page touches the interrupt range (so the IOTLB hit
        path never needs the check); an output address inside it faults (0xE / 0x87)."""
        if _overlaps_interrupt_range(entry.hpa | (self.req.addr & entry.offset_mask), 1):
            self.abort(self.sm_or_legacy(0x87, 0xE))
        if not (_overlaps_interrupt_range(entry.hpa, entry.size)
                or _overlaps_interrupt_range(entry.iova_base, entry.size)):
            self.fill("iotlb", entry.key, entry, tuple(self.writes) if self.dry else ())

    # -- second stage -----------------------------------------------------------------------------
    def ss_walk(self, did: int, pasid: int, stage: str, top: int, levels: int,
                rules: ss.SsRules, addr: int, write: bool) -> ss.SsWalk:
        """An SS walk of ``addr`` resuming from the paging-structure cache, filling it."""
        start = None
        if not self.dry:
            psc = self.unit.pscache.lookup_iova(did, pasid, stage, addr, levels - 1)
            if psc is not None:
                start = ss.SsTable(psc.level, psc.table_addr, psc.read, psc.write, psc.exe)
        res = ss.walk_ss(self.reader(rules.snoop), addr, top, levels, rules, start=start,
                         write=write)
        for t in res.tables:
            psc = PscEntry(did, pasid, stage, t.level, addr >> (12 + 9 * t.level), t.table,
                           t.read, t.write, t.exe)
            self.fill("pscache", psc.key, psc)
        self.writes.extend(res.ad_writes)
        return res

    def ss_page(self, did: int, pasid: int, stage: str, top: int, levels: int,
                rules: ss.SsRules, pgsnp: bool) -> IotlbEntry:
        iova = self.req.addr
        if iova >> min(ss.address_width(levels), self.caps.mgaw):
            self.abort(ss.ss_fault_reason("beyond", self.scalable, self.req.write))
        res = self.ss_walk(did, pasid, stage, top, levels, rules, iova, self.req.write)
        size = ss.page_size(res.level)
        if res.fault is not None:
            reason = ss.ss_fault_reason(res.fault, self.scalable, False)
            if self.negative and res.fault != "ad_nosnoop":
                entry = IotlbEntry(did, pasid, iova & ~0xFFF, 1, 0, False, False, False, False,
                                   stage, present=False, fault_reason=reason)
                self.fill("iotlb", entry.key, entry)
            self.abort(ss.ss_fault_reason(res.fault, self.scalable, self.req.write))
        snp = self.caps.sc and (res.snp or pgsnp)
        entry = IotlbEntry(did, pasid, iova & ~(size - 1), res.level, res.page, res.read,
                           res.write, res.exe, snp, stage)
        self.fill_iotlb(entry)
        return entry

    # -- first stage and nested ------------------------------------------------------------------
    def fs_page(self, pe: PasidCacheEntry, pasid: int, nested: bool) -> IotlbEntry:
        req, caps = self.req, self.caps
        levels = fs.fs_levels(pe.fspm)
        rules = fs.FsRules(52 if nested else self.haw, caps.fs1gp, pe.nxe, pe.wpe, pe.eafe,
                           self.walk_snoop(pe))
        table_hpa = self.nested_table_hpa(pe, pasid) if nested else None
        start = None if nested or self.dry else self.fs_psc(pe.did, pasid, levels)
        res = fs.walk_fs(self.reader(rules.snoop), req.addr, pe.fsptptr, levels, rules,
                         write=req.write, priv=self.priv, exe=self.exe, start=start,
                         table_hpa=table_hpa)
        if res.fault == fs.FR_SM_WRITE and req.at == AT_TRANSLATION_REQUEST:
            # A translation completion grants what the tables allow: R without W, no fault.
            res = fs.walk_fs(self.reader(rules.snoop), req.addr, pe.fsptptr, levels, rules,
                             priv=self.priv, exe=self.exe, start=start, table_hpa=table_hpa)
        if res.fault:
            self.writes.clear()  # A/D of a failed walk are not set (a legal choice)
            self.abort(res.fault)
        self.writes.extend(res.ad_writes)
        if not nested:
            self.fill_fs_psc(pe.did, pasid, res.tables)
        # A read walk leaves D clear: the entry must not grant writes that would skip setting
        # D (x86 semantics), so it says write=False and a write re-walks (see ``usable``).
        read, write, exe = True, res.write and res.dirty, res.exe
        level, page = res.level, res.page
        if nested:
            level, page, read, write, exe = self.nested_output(pe, pasid, res)
        size = ss.page_size(level)
        snp = caps.sc and pe.pgsnp
        entry = IotlbEntry(pe.did, pasid, req.addr & ~(size - 1), level, page, read, write,
                           exe, snp, STAGE_NESTED if nested else STAGE_FS, global_=res.global_)
        if not self.priv:  # the IOTLB does not record U/S: supervisor results stay uncached
            self.fill_iotlb(entry)
        return entry

    def fs_psc(self, did: int, pasid: int, levels: int) -> fs.FsTable | None:
        psc = self.unit.pscache.lookup_iova(did, pasid, STAGE_FS, self.req.addr, levels - 1)
        if psc is None:
            return None
        return fs.FsTable(psc.level, psc.table_addr, psc.write, psc.user, psc.exe)

    def fill_fs_psc(self, did: int, pasid: int, tables: tuple[fs.FsTable, ...]) -> None:
        for t in tables:
            psc = PscEntry(did, pasid, STAGE_FS, t.level, self.req.addr >> (12 + 9 * t.level),
                           t.table, True, t.write, t.exe, t.user)
            self.fill("pscache", psc.key, psc)

    def nested_table_hpa(self, pe: PasidCacheEntry, pasid: int) -> fs.TableHpa:
        """Translate a first-stage table's guest-physical address through the second stage
        (3.8): beyond the SS width 0x74, no read 0x75 (top) / 0x76, no write for A/D 0x77."""
        rules = self.ss_rules(pe)
        width = min(ss.address_width(pe.levels), self.caps.mgaw)

        def table_hpa(gpa: int, top: bool, ad_update: bool) -> tuple[int, int]:
            if gpa >> width:
                return 0, 0x74
            res = self.ss_walk(pe.did, pasid, STAGE_NESTED, pe.ssptptr, pe.levels, rules, gpa,
                               ad_update)
            if res.fault is not None:
                return 0, ss.ss_fault_reason(res.fault, True, ad_update)
            if not res.read:
                return 0, 0x75 if top else 0x76
            if ad_update and not res.write:
                return 0, 0x77
            return res.page | (gpa & (ss.page_size(res.level) - 1)), 0

        return table_hpa

    def nested_output(self, pe: PasidCacheEntry, pasid: int, res: fs.FsWalk):
        """Translate the first-stage output through the second stage: the combined page is the
        smaller of the two, permissions the AND of both stages (3.8)."""
        gpa = res.page | (self.req.addr & (ss.page_size(res.level) - 1))
        if gpa >> min(ss.address_width(pe.levels), self.caps.mgaw):
            self.abort(0x83)
        out = self.ss_walk(pe.did, pasid, STAGE_NESTED, pe.ssptptr, pe.levels,
                           self.ss_rules(pe), gpa, self.req.write)
        if out.fault is not None:
            self.abort(ss.ss_fault_reason(out.fault, True, self.req.write))
        level = min(res.level, out.level)
        hpa = (out.page | (gpa & (ss.page_size(out.level) - 1))) & ~(ss.page_size(level) - 1)
        return level, hpa, out.read, res.write and out.write, res.exe and out.exe


def _replay_reason(reason: int, write: bool) -> int:
    """A negative entry stores the reason of a read; legacy permission faults split by type."""
    if reason in (0x5, 0x6):
        return 0x5 if write else 0x6
    if reason in (0x85, 0x86):
        return 0x85 if write else 0x86
    return reason


# -- decoding entries into cache entries ----------------------------------------------------------
def _legacy_context_entry(sid: int, raw: int, present: bool) -> ContextCacheEntry:
    d = rt.CONTEXT_ENTRY.decode(raw)
    return ContextCacheEntry(
        sid, present, raw, did=d["did"], tt=d["tt"], levels=ss.levels_from_aw(d["aw"]),
        ssptptr=d["ssptptr"] << 12, fpd=bool(d["fpd"]),
    )


def _sm_context_entry(sid: int, raw: int, present: bool) -> ContextCacheEntry:
    d = rt.SM_CONTEXT_ENTRY.decode(raw)
    return ContextCacheEntry(
        sid, present, raw, fpd=bool(d["fpd"]), scalable=True,
        pasid_dir=d["pasid_dir_ptr"] << 12, pdts=d["pdts"], dte=bool(d["dte"]),
        paside=bool(d["paside"]), pre=bool(d["pre"]), rid_pasid=d["rid_pasid"],
    )


def _pasid_cache_entry(sid: int, pasid: int, raw: int, present: bool,
                       fpd: bool) -> PasidCacheEntry:
    d = pt.PASID_ENTRY.decode(raw)
    flags = {n: bool(d[n]) for n in ("sre", "ere", "wpe", "nxe", "eafe", "ssee", "ssade",
                                     "pwsnp", "pgsnp")}
    return PasidCacheEntry(
        sid, pasid, d["did"], present, d["pgtt"], raw, ssptptr=d["ssptptr"] << 12,
        levels=ss.levels_from_aw(d["aw"]), fsptptr=d["fsptptr"] << 12, fspm=d["fspm"],
        fpd=fpd, **flags,
    )

