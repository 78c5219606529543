"""The DMA request flow: context -> PASID -> IOTLB/PSC -> page walk (VT-d spec ch. 3, 4, 6).

Modules: ``outcome`` (fills, faults, fixed results), ``flow`` (request checks, context, legacy
mode, IOTLB, second stage), ``scalable`` (PASID entries, first stage, nested), ``miss`` (the
common first-stage miss below a cached PDE without the full flow, exact); this module holds
the entry points the unit calls.

``bind_translate`` builds the fast path the unit installs as ``unit.translate`` for
untranslated requests (a context-cache hit then an IOTLB hit returns the cached ``IotlbEntry``
itself; a scalable-mode miss below a cached first-stage PDE is ``miss.bind_fs_miss``);
everything else goes through ``access``, which
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
from typing import Any

from vtdsim.hardware.caches.context_cache import ContextCacheEntry
from vtdsim.hardware.caches.iotlb import STAGE_PT, IotlbEntry
from vtdsim.hardware.faults import Fault, FaultReason
from vtdsim.hardware.pasid_table import PGTT_PT
from vtdsim.hardware.request import AT_TRANSLATION_REQUEST, DmaRequest
from vtdsim.hardware.translation.flow import RequestFlow
from vtdsim.hardware.translation.miss import PendingAnswers, bind_fs_miss
from vtdsim.hardware.translation.outcome import WALK_REASONS, Abort, Fill, no_access, pass_through

__all__ = ["Fill", "access", "apply_fill", "bind_translate", "entry_pieces", "possible_fills"]


# -- the public entry points ----------------------------------------------------------------------
def bind_translate(unit: Any):
    """The untranslated-request fast path bound to ``unit``'s caches, for the unit to install:
    ``(translate, translate_cached, translate_missed, translate_page, translate_page_again,
    pending, settle)``.
    ``translate_cached(sid, iova, write)`` probes the caches only and returns, on a 4 KiB
    IOTLB hit with the permission, the cached ``IotlbEntry`` itself, else None having changed
    nothing (so a caller may then take the full flow, or ask ``translate`` which does);
    ``translate_missed(sid, iova, write)`` is the rest of ``translate`` for a caller whose
    ``translate_cached`` has just answered None;
    ``translate(sid, iova, write=False, pasid=None)`` answers any untranslated request.
    ``translate_page(sid, iova, write)`` is ``translate_cached`` that also answers, in
    scalable mode, a 4 KiB page's miss which ``fs_miss`` answered before and would again
    (its memo), probing context, PASID and the IOTLB key once; None: nothing changed, and
    ``translate_missed`` is the rest.  ``translate_page_again()`` repeats ``translate_page``'s
    last request when it answered with an entry and nothing reached the unit since;
    ``translate_page(..., known=True)`` asks another page then, the context and PASID
    entries neither probed nor touched again.  With ``counted=False`` a scalable-mode answer
    leaves its counters to ``pending`` (``miss.PendingAnswers``) until ``settle()`` adds
    them, as it adds the repeats a caller records in ``pending.repeats`` instead of asking
    ``translate_page_again``.

    Legacy mode (TTM=00): a context-cache probe and an IOTLB probe.  Hits are counted in
    ``unit.iotlb.stats.hit`` only (a Counter increment would double the cost of the hit
    path); the context-cache probe does not refresh recency (LRU of the context-cache sees
    only the slow path - a policy choice, any eviction is legal).

    Scalable mode (TTM=01, ``_cached``): exactly the full flow's effects on a hit -
    context-cache, PASID-cache and IOTLB each refreshed and counted - so a run is the same
    whichever path a request took (tests/hardware/test_translation_fast_path.py).
    """
    # The caches' bound dict.get (base.LruCache binds it once for this path): a method call
    # per probe would double the cost of a hit.
    context_get = unit.context_cache._get
    iotlb = unit.iotlb
    iotlb_get, iotlb_touch, iotlb_stats = iotlb._get, iotlb._touch, iotlb.stats
    lookup_iova = iotlb.lookup_iova
    pending = PendingAnswers()
    fs_miss, recall, again, count_remembered = bind_fs_miss(unit, pending)

    def translate_bound(sid: int, iova: int, write: bool = False, pasid: int | None = None):
        if pasid is None:
            entry = translate_cached(sid, iova, write)
            if entry is not None:
                return entry
            return translate_missed(sid, iova, write)
        return access(unit, DmaRequest(sid, iova, write, pasid))

    def translate_missed(sid: int, iova: int, write: bool):
        # The rest of translate_bound for a request without PASID, once translate_cached
        # answered None - which changed nothing, so nothing is probed twice.  Scalable
        # mode first: the simulator's misses are there.
        if unit.translation_enabled:
            ttm = unit.ttm
            if ttm == 1:
                entry = fs_miss(sid, iova, write)
                if entry is not None:
                    return entry
            elif not ttm:
                return legacy_miss(sid, iova, write)
        return access(unit, DmaRequest(sid, iova, write))

    def legacy_context(sid: int):
        ce = context_get(sid)
        return ce if ce is not None and ce.present and ce.did is not None and ce.tt != 2 \
            else None

    def legacy_hit(sid: int, iova: int, write: bool) -> IotlbEntry | None:
        ce = legacy_context(sid)
        if ce is None:
            return None
        # The 4 KiB probe of Iotlb.lookup_iova, inlined: most hits are 4 KiB pages.
        key = (ce.did, 0, 1, iova >> 12, sid) if iotlb.tag_sid else (ce.did, 0, 1, iova >> 12)
        entry = iotlb_get(key)
        if entry is not None and entry.present and (entry.write if write else entry.read):
            iotlb_touch(key)
            iotlb_stats.hit += 1
            return entry
        return None

    translate_cached, translate_page, translate_page_again, count_hits, count_repeats = _cached(
        unit, legacy_hit, recall, again, pending)

    def settle() -> None:
        """The counters of the answers ``pending`` holds, made."""
        hits, remembered, repeats = pending.hits, pending.remembered, pending.repeats
        if hits:
            pending.hits = 0
            count_hits(hits)
        if repeats:
            pending.repeats = 0
            count_repeats(repeats)
        if remembered:
            pending.remembered = 0
            count_remembered(remembered)
        if pending.replacing:
            iotlb.count_replacing(pending.replacing)
            pending.replacing = 0

    def legacy_miss(sid: int, iova: int, write: bool):
        ce = legacy_context(sid)
        if ce is None:
            return access(unit, DmaRequest(sid, iova, write))
        entry = lookup_iova(ce.did, 0, iova, sid)
        if entry is not None and entry.present and (entry.write if write else entry.read):
            return entry
        return _run(unit, DmaRequest(sid, iova, write), ce, probed=True, entry=entry)

    return (translate_bound, translate_cached, translate_missed, translate_page,
            translate_page_again, pending, settle)


def _cached(unit: Any, legacy_hit, recall, again, pending: PendingAnswers):
    """``(translate_cached, translate_page, translate_page_again, count_hits, count_repeats)``:
    ``legacy_hit`` under TTM=00. Under TTM=01 a request without PASID that the full flow would
    answer from the caches alone - context-cache, PASID-cache (the entry's RID_PASID) and a 4
    KiB IOTLB entry with the permission - returns that entry with the flow's side effects (each
    cache's recency and hit counter; nothing else changes on such a hit: no fill, no stat of
    the unit). The probes themselves change nothing, so on anything else (None) the full flow
    runs from the start. Checks in the flow's order (flow.RequestFlow.request,
    scalable.pasid_entry, flow.page): a present context entry fetched in scalable mode;
    RID_PASID within the directory PDTS sizes (0x46); a present PASID entry that is not
    pass-through (answered without the IOTLB); then ``usable`` and ``check_access`` of a hit,
    which for AT=00 without PRIV/EXE reduce to present and permitted. The interrupt-range check
    (0x87) needs no probe: no IOTLB entry touching the range is ever filled
    (``RequestFlow.fill_iotlb``). ``translate_page`` also answers where the 4 KiB key is absent
    with the page's remembered first-stage miss (miss.bind_fs_miss: ``again``) - the context
    and PASID entries and the key probed once for both, as a device's DMA to a page missing
    from a small IOTLB would otherwise probe them twice."""
    caches = unit.context_cache, unit.pasid_cache, unit.iotlb
    (context_get, pasid_get, iotlb_get) = (c._get for c in caches)
    (context_touch, pasid_touch, iotlb_touch) = (c._touch for c in caches)
    (context_stats, pasid_stats, iotlb_stats) = (c.stats for c in caches)
    iotlb = unit.iotlb

    def usable(sid: int, ce) -> tuple | None:
        """``(pkey, pe)``: the PASID-cache key and entry of ``ce``'s RID_PASID, when the
        context entry ``ce`` of ``sid`` and that entry pass the checks, else None."""
        if ce is None or not ce.present or not ce.scalable:
            return None
        pasid = ce.rid_pasid
        if pasid >> 6 >= 1 << (ce.pdts + 7):  # pasid_table.pasid_dir_index / _entries
            return None
        pkey = (sid, pasid)
        pe = pasid_get(pkey)
        if pe is None or not pe.present or pe.pgtt == PGTT_PT:
            return None
        return pkey, pe

    # The requester whose context and PASID entries last passed ``usable``, with them: the
    # records are frozen, so the very same objects pass again (held here, so ``is`` cannot
    # match a new record at a reused address).
    last_sid = last_ce = last_pkey = last_pe = None

    def translate_page(sid: int, iova: int, write: bool, remembered: bool = True,
                       known: bool = False, counted: bool = True) -> IotlbEntry | None:
        nonlocal last_sid, last_ce, last_pkey, last_pe
        if not unit.translation_enabled or unit.ttm != 1:
            return legacy_hit(sid, iova, write) if unit.translation_enabled \
                and not unit.ttm else None
        if known:
            # The caller's last call for ``sid`` answered with an entry and nothing has
            # reached the unit since: the context and PASID entries it found are still the
            # cached ones and each the most recent of its cache - neither probed nor touched
            # again (their hit counters move, as on any answer).
            ce, pkey, pe = last_ce, last_pkey, last_pe
        elif (ce := context_get(sid)) is last_ce and sid == last_sid \
                and pasid_get(last_pkey) is last_pe:
            pkey, pe = last_pkey, last_pe
        else:
            found = usable(sid, ce)
            if found is None:
                return None
            pkey, pe = found
            last_sid, last_ce, last_pkey, last_pe = sid, ce, pkey, pe
        page = iova >> 12
        key = (pe.did, pkey[1], 1, page, sid) if iotlb.tag_sid else (pe.did, pkey[1], 1, page)
        entry = iotlb_get(key)
        if entry is None:
            a = recall(page) if remembered else None
            return None if a is None else again(a, sid, write, ce, pe, None, not known,
                                                  counted)
        if not entry.present or not (entry.write if write else entry.read):
            return None
        if not known:
            context_touch(sid)
            pasid_touch(pkey)
        iotlb_touch(key)
        if counted:
            context_stats.hit += 1
            pasid_stats.hit += 1
            iotlb_stats.hit += 1
        else:
            pending.hits += 1
        return entry

    def translate_cached(sid: int, iova: int, write: bool) -> IotlbEntry | None:
        return translate_page(sid, iova, write, False)

    def translate_page_again() -> None:
        """``translate_page``'s last request made once more, when that call answered with an
        entry and nothing has reached the unit since - no other request, fill, eviction,
        invalidation, register or memory write: the caller vouches (a device's two DMAs to
        one page with nothing scheduled in between, ``DmaWorld.page_dma``).  The answer is
        the same hit on that entry, and its only effects are the hit counters: the answer
        left each key it used the most recent of its cache (a hit touched the context, PASID
        and IOTLB keys; a remembered miss touched the first two and filled the third;
        legacy mode's hit touched its IOTLB key), so touching them again moves nothing.
        A caller that defers its counters adds one to ``pending.repeats`` instead (no call:
        ``DmaWorld.page_dma``), which ``settle`` counts the same way."""
        count_repeats(1)

    def count_repeats(n: int) -> None:
        """The counters of ``n`` answers of ``translate_page_again``: the hit of the unit's
        mode, three in scalable mode, the IOTLB's alone in legacy mode (``legacy_hit``).
        The mode is the one the answers were given in: nothing reached the unit since."""
        if unit.ttm != 1:
            iotlb_stats.hit += n
        else:
            count_hits(n)

    def count_hits(n: int) -> None:
        """The counters of ``n`` scalable-mode hits (``translate_page``'s)."""
        context_stats.hit += n
        pasid_stats.hit += n
        iotlb_stats.hit += n

    return translate_cached, translate_page, translate_page_again, count_hits, count_repeats


def access(unit: Any, req: DmaRequest):
    """Any request (AT, PASID, privilege, execute): ``IotlbEntry`` or ``Fault``."""
    if not unit.translation_enabled:
        return pass_through(req.addr, 0, 0, STAGE_PT)
    return _run(unit, req)


def possible_fills(unit: Any, sid: int, iova: int, pasid: int | None = None,
                   earlier: dict | None = None) -> list[Fill]:
    """Every cache entry a walk of *current memory* for an untranslated read could insert,
    without changing caches, memory or stats (the checker's hardware freedom, spec 6.1);
    ``earlier``: qword address -> the value an earlier 64-bit piece of a multi-qword entry
    read (``RequestFlow.read_entry``)."""
    return _dry(unit, sid, iova, pasid, earlier).fills


def entry_pieces(unit: Any, sid: int, iova: int, pasid: int | None = None) -> list[tuple]:
    """The multi-qword entries (address, qwords) a walk of current memory reads, in order:
    what a fetch in 64-bit pieces may read at different moments."""
    return _dry(unit, sid, iova, pasid, None).entries


def _dry(unit: Any, sid: int, iova: int, pasid: int | None, earlier: dict | None):
    flow = RequestFlow(unit, DmaRequest(sid, iova, pasid=pasid), dry=True, earlier=earlier)
    if unit.translation_enabled:
        with contextlib.suppress(Abort):
            flow.run()
    return flow


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
    flow = RequestFlow(unit, req, ce=ce, probed=probed, entry=entry)
    try:
        return flow.run()
    except Abort as stop:
        if req.at == AT_TRANSLATION_REQUEST and stop.reason in WALK_REASONS:
            return no_access(req.addr)
        fault = Fault(FaultReason(stop.reason), req.sid, req.addr, req.write, req.pasid,
                      req.exe, req.priv, req.at)
        unit.faults.record(fault, fpd=flow.fpd)  # counts stats["faults"], honours FPD
        return fault
