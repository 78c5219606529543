"""One request's trip through the unit (VT-d spec ch. 3): request checks, the context entry
(legacy and scalable root/context tables, 9.1-9.4), legacy-mode second stage, the IOTLB and the
second-stage walk with its paging-structure cache; the scalable-mode steps after the context
entry come from ``scalable.ScalableSteps``.

Not modelled: see ``translation/__init__.py``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vtdsim.hardware import root_table as rt
from vtdsim.hardware import second_stage as ss
from vtdsim.hardware.caches.context_cache import ContextCacheEntry
from vtdsim.hardware.caches.iotlb import STAGE_PT, STAGE_SS, IotlbEntry
from vtdsim.hardware.caches.paging_structure_cache import PscEntry
from vtdsim.hardware.request import AT_TRANSLATED, AT_TRANSLATION_REQUEST, DmaRequest
from vtdsim.hardware.translation.outcome import (
    Abort,
    Fill,
    overlaps_interrupt_range,
    pass_through,
    replay_reason,
)
from vtdsim.hardware.translation.scalable import ScalableSteps


class RequestFlow(ScalableSteps):
    """One request's trip through the unit.  ``dry``: enumerate fills from memory only (no
    cache lookups, no stats, no memory writes)."""

    def __init__(self, unit: Any, req: DmaRequest, *, dry: bool = False,
                 ce: ContextCacheEntry | None = None, probed: bool = False,
                 entry: IotlbEntry | None = None, earlier: dict | None = None):
        self.unit, self.req, self.dry = unit, req, dry
        # Qwords of multi-qword entries the unit read in an earlier 64-bit piece (a dry walk's
        # freedom: read_entry); ``entries`` lists each multi-qword entry read, in order.
        self.earlier = earlier or {}
        self.entries: list[tuple[int, int]] = []
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
        """A root, context, PASID-directory or PASID entry.  The unit may fetch a 128-, 256- or
        512-bit entry in 64-bit pieces at different moments (no atomicity beyond a qword is
        promised; software orders its stores - P last on set-up, first on teardown - for that
        reason): qwords in ``earlier`` are the values an earlier piece read."""
        read, earlier = self.read_structure, self.earlier
        if qwords > 1:
            self.entries.append((addr, qwords))
        if not earlier:  # the common case: every piece read now
            return sum(read(addr + 8 * i) << (64 * i) for i in range(qwords))
        return sum((earlier[a] if a in earlier else read(a)) << (64 * i)
                   for i, a in enumerate(range(addr, addr + 8 * qwords, 8)))

    def lookup(self, cache: str, key: Any) -> Any:
        if self.dry:
            return None
        entry = getattr(self.unit, cache).lookup(key)
        if entry is None:
            self.unit.stats[f"{cache}_miss"] += 1
        return entry

    def fill(self, cache: str, key: Any, entry: Any, writes: tuple = ()) -> None:
        if cache == "iotlb" and self.unit.iotlb.tag_sid:
            # QEMU's vtd_update_iotlb: the entry is the requester's (caches/iotlb.py)
            entry = replace(entry, sid=self.req.sid)
            key = entry.key
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
        raise Abort(reason)

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
            return pass_through(req.addr, 0, 0, STAGE_PT)
        if req.pasid is None and overlaps_interrupt_range(req.addr, 1):
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
            return pass_through(self.req.addr, ce.did, 0, STAGE_PT)
        rules = ss.SsRules(self.haw, self.large_levels(), snp_reserved=not self.caps.sc,
                           tm_reserved=not self.caps.dt, snoop=self.caps.coherent)
        return self.page(ce.did, 0, lambda: self.ss_page(
            ce.did, 0, STAGE_SS, ce.ssptptr, ce.levels, rules, pgsnp=False))

    def large_levels(self) -> tuple[int, ...]:
        return tuple(lv for lv, ok in ((2, self.caps.sllps_2m), (3, self.caps.sllps_1g)) if ok)

    # -- IOTLB ------------------------------------------------------------------------------------
    def page(self, did: int, pasid: int, walk) -> IotlbEntry:
        """IOTLB lookup, else ``walk()``; then the request's permission check."""
        entry = self.probed_entry
        if not self.probed:
            entry = self.unit.iotlb.lookup_iova(did, pasid, self.req.addr, self.req.sid)
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
            self.abort(replay_reason(entry.fault_reason, self.req.write))
        if not self.permitted(entry):
            if self.exe and not entry.exe:
                self.abort(0x82)
            self.abort(ss.ss_fault_reason("permission", self.scalable, self.req.write))

    def fill_iotlb(self, entry: IotlbEntry) -> None:
        """Cache ``entry`` unless either page touches the interrupt range (so the IOTLB hit
        path never needs the check); an output address inside it faults (0xE / 0x87)."""
        if overlaps_interrupt_range(entry.hpa | (self.req.addr & entry.offset_mask), 1):
            self.abort(self.sm_or_legacy(0x87, 0xE))
        if not (overlaps_interrupt_range(entry.hpa, entry.size)
                or overlaps_interrupt_range(entry.iova_base, entry.size)):
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
