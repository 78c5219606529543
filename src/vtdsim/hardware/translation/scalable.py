"""The scalable-mode part of the request flow: the PASID directory and table, PGTT dispatch,
first-stage and nested walks (VT-d spec 3.6, 3.8, 9.5-9.7), as a mixin of ``flow.RequestFlow``.

Paging-structure caches of a nested walk (spec 6.2.5, rev 5.10): the first-stage entries it
passes are cached as *combined* entries (stage "nested", keyed by the request's input address:
the host-physical address of the next FS table, already translated through the second stage,
with the FS R/W and U/S), and the second-stage entries of each SS walk (the FS tables'
addresses and the final GPA) as second-stage entries (stage "ss", keyed by the GPA).  A miss
resumes the FS walk below the deepest combined entry and the final GPA's SS walk below the
deepest SS entry.

Not modelled: PASID width checks against ECAP.PSS, caching of nested second-stage
translations of first-stage table addresses other than as paging-structure entries.
"""

from __future__ import annotations

from vtdsim.hardware import first_stage as fs
from vtdsim.hardware import pasid_table as pt
from vtdsim.hardware import second_stage as ss
from vtdsim.hardware.caches.context_cache import ContextCacheEntry
from vtdsim.hardware.caches.iotlb import STAGE_FS, STAGE_NESTED, STAGE_PT, STAGE_SS, IotlbEntry
from vtdsim.hardware.caches.paging_structure_cache import PscEntry
from vtdsim.hardware.caches.pasid_cache import PasidCacheEntry
from vtdsim.hardware.request import AT_TRANSLATION_REQUEST
from vtdsim.hardware.translation.outcome import pass_through


class ScalableSteps:
    """The flow's steps under TTM=01 after the context entry (``RequestFlow`` supplies
    ``req``, ``caps``, ``abort``, ``lookup``, ``fill``, ``page``, ``ss_page``, ``ss_walk`` ...)."""

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
            return pass_through(req.addr, pe.did, pasid, STAGE_PT)
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

    # -- first stage and nested ------------------------------------------------------------------
    def fs_page(self, pe: PasidCacheEntry, pasid: int, nested: bool) -> IotlbEntry:
        req, caps = self.req, self.caps
        levels = fs.fs_levels(pe.fspm)
        rules = fs.FsRules(52 if nested else self.haw, caps.fs1gp, pe.nxe, pe.wpe, pe.eafe,
                           self.walk_snoop(pe))
        table_hpa = self.nested_table_hpa(pe, pasid) if nested else None
        stage = STAGE_NESTED if nested else STAGE_FS
        start = None if self.dry else self.fs_psc(pe.did, pasid, stage, levels)
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
        self.fill_fs_psc(pe.did, pasid, stage, res.tables)
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

    def fs_psc(self, did: int, pasid: int, stage: str, levels: int) -> fs.FsTable | None:
        """The deepest cached first-stage (or, nested, combined) entry for the request."""
        psc = self.unit.pscache.lookup_iova(did, pasid, stage, self.req.addr, levels - 1)
        if psc is None:
            return None
        return fs.FsTable(psc.level, psc.table_addr, psc.write, psc.user, psc.exe,
                          psc.table_gpa)

    def fill_fs_psc(self, did: int, pasid: int, stage: str,
                    tables: tuple[fs.FsTable, ...]) -> None:
        """Cache the non-leaf FS entries a successful walk passed (6.2.5: never from a
        first-stage fault, even under CM; a nested walk reaching them had SS read access to
        every table, the condition for a combined entry)."""
        for t in tables:
            psc = PscEntry(did, pasid, stage, t.level, self.req.addr >> (12 + 9 * t.level),
                           t.table, True, t.write, t.exe, t.user, t.gpa)
            self.fill("pscache", psc.key, psc)

    def nested_table_hpa(self, pe: PasidCacheEntry, pasid: int) -> fs.TableHpa:
        """Translate a first-stage table's guest-physical address through the second stage
        (3.8): beyond the SS width 0x74, no read 0x75 (top) / 0x76, no write for A/D 0x77."""
        rules = self.ss_rules(pe)
        width = min(ss.address_width(pe.levels), self.caps.mgaw)

        def table_hpa(gpa: int, top: bool, ad_update: bool) -> tuple[int, int]:
            if gpa >> width:
                return 0, 0x74
            res = self.ss_walk(pe.did, pasid, STAGE_SS, pe.ssptptr, pe.levels, rules, gpa,
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
        out = self.ss_walk(pe.did, pasid, STAGE_SS, pe.ssptptr, pe.levels,
                           self.ss_rules(pe), gpa, self.req.write)
        if out.fault is not None:
            self.abort(ss.ss_fault_reason(out.fault, True, self.req.write))
        level = min(res.level, out.level)
        hpa = (out.page | (gpa & (ss.page_size(out.level) - 1))) & ~(ss.page_size(level) - 1)
        return level, hpa, out.read, res.write and out.write, res.exe and out.exe



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
