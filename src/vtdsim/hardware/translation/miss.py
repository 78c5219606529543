"""The common IOTLB miss of scalable mode, answered without the full flow: a request without
PASID on a first-stage PASID entry whose 4 KiB leaf hangs off a cached PDE - one PTE read
(VT-d spec 3.6, 6.2.3, 6.2.4; Linux's DMA API maps a fresh page there all the time).

``bind_fs_miss(unit)`` gives ``fs_miss(sid, iova, write)``: it first *probes* - context-cache,
PASID-cache, IOTLB and paging-structure cache through their dict ``get`` (no recency, no
counter), then the PTE from memory - and returns None having changed nothing unless the
request is exactly that case and succeeds.  Only then it makes the full flow's side effects:
the A/D store (first: nothing of them reads memory), then in the flow's order each cache's
lookup (recency, hit or miss), ``iotlb_miss``, ``walks``, ``walk_reads``, the IOTLB fill.
Each check names the step of ``flow.RequestFlow`` / ``scalable.ScalableSteps`` /
``first_stage.walk_fs`` it stands for; tests/hardware/test_translation_miss_path.py runs both
on twin units.

A page missed again (the IOTLB is smaller than the pages a device cycles through) is
answered from what the last miss on it found - when every record it read is the very same
object in the same cache slot and the PTE holds the same value (see ``_Answer``).

Not modelled: nothing of its own - every other request (a fault, a deeper resume, a large
page, an IOTLB entry present but unusable, nested, second stage, a requester-tagged IOTLB)
takes the full flow.
"""

from __future__ import annotations

from typing import Any

from vtdsim.hardware.caches.iotlb import STAGE_FS, IotlbEntry
from vtdsim.hardware.first_stage import FS_PTE
from vtdsim.hardware.pasid_table import PGTT_FS
from vtdsim.hardware.translation.outcome import INTERRUPT_BASE, INTERRUPT_SIZE

_INTERRUPT_END = INTERRUPT_BASE + INTERRUPT_SIZE
_P, _RW, _US, _A, _D, _G, _EA = 1, 2, 4, 0x20, 0x40, 0x100, 0x400
_XD = 1 << 63
_ADDR = FS_PTE["addr"].in_place
MEMO_PAGES = 4096  # pages fs_miss remembers the answer for (a pool of rx pages fits)
FS_MISS_READS = 1  # the structure reads of its walk: the PTE below the cached PDE


class _Answer:
    """What a miss on one page found, and the answer it gave: its probes' keys and the
    records they returned, the PTE's address and the value the miss left there (its A/D
    store made), the IOTLB entry.

    Every check of the fast path and the entry are a function of these (frozen records:
    the same object has the same fields; the page fixes the interrupt-range and canonical
    checks, whose bounds are page-aligned; the unit's CAP/ECAP never change).  So a later
    miss on the page by the same requester, with the same ``write``, finding the very same
    objects under the same keys and the same PTE value, gets the same answer - and no A/D
    store: the PTE has the bits this request sets.  The answer holds its records, so ``is``
    cannot match a new object at a reused address; nothing is trusted that is not probed
    again (the 2 MiB and 1 GiB keys are absent without a probe while the IOTLB has no
    large group, ``Iotlb._large_groups``), so it cannot be stale.  (The requester is
    compared too: its PASID-cache key is part of the answer.)"""

    # No __init__: ``probe`` stores the fields (a Python __init__ behind the class call would
    # cost as much as the rest of the build; a page's first miss makes one).
    __slots__ = ("sid", "write", "ce", "pkey", "pe", "key", "key_2m", "key_1g", "psc_key",
                 "psc", "addr", "snoop", "pte", "entry")


class PendingAnswers:
    """Answers of ``translate_page(..., counted=False)`` whose counters are not made yet:
    ``hits`` scalable-mode hits (each the context-cache's, PASID-cache's and IOTLB's hit),
    ``remembered`` remembered misses (each ``count_remembered``'s counters), ``replacing``
    their IOTLB fills that replaced the LRU entry (``Iotlb.fill_first_stage``'s common case;
    its other fills count at once), ``repeats`` answers of ``translate_page_again`` a caller
    recorded itself (each the hit of the unit's mode; the caller settles before anything
    reaches the unit, so that mode is still the unit's) - added by ``settle``
    (``translation.bind_translate``).
    A caller that defers settles before any other actor may read a counter
    (``DmaWorld.page_dma``: before the wire yields): a count per answer kept in a small
    int, instead of up to nine counters each allocating a new int, which were a third of a
    remembered miss's cost."""

    __slots__ = ("hits", "remembered", "replacing", "repeats")

    def __init__(self) -> None:
        self.hits = self.remembered = self.replacing = self.repeats = 0


def bind_fs_miss(unit: Any, pending: PendingAnswers):
    """``(fs_miss, recall, again, count_remembered)`` bound to ``unit``'s caches and memory
    (the unit must be in scalable mode with translation enabled: the caller checks).
    ``recall(page)`` is the page's last answer (or None) and ``again`` gives it again when
    nothing it was found from changed: for a caller that has just probed the context-cache,
    the PASID-cache and the 4 KiB IOTLB key itself (``translate_page``); ``counted=False``
    leaves its counters to ``pending``.  ``count_remembered(n)``: the counters of ``n``
    remembered misses."""
    caches = unit.context_cache, unit.pasid_cache, unit.iotlb, unit.pscache
    context_get, pasid_get, iotlb_get, psc_get = (c._get for c in caches)
    context_touch, pasid_touch, _, psc_touch = (c._touch for c in caches)
    context_stats, pasid_stats, iotlb_stats, psc_stats = (c.stats for c in caches)
    iotlb, memory, stats, caps = unit.iotlb, unit.memory, unit.stats, unit.caps
    smpwc, sc = caps.smpwc, caps.sc  # a unit's CAP/ECAP never change
    read_qword, iotlb_fill = memory.read_qword, iotlb.fill_first_stage
    # No 2 MiB / 1 GiB entry filled since the IOTLB was last cleared: no such key to probe.
    large_groups = iotlb._large_groups
    # Reserved address bits of a PTE: at or above the HAW (RequestFlow.haw, fs.entry_reserved).
    above_haw = _ADDR & ~((1 << min(caps.mgaw, 52)) - 1)
    memo: dict[int, _Answer] = {}  # page -> the last miss's answer on it (bounded: emptied)

    def fs_miss(sid: int, iova: int, write: bool) -> IotlbEntry | None:
        a = memo.get(iova >> 12)
        if a is not None and iotlb_get(a.key) is None:
            entry = again(a, sid, write, context_get(sid), pasid_get(a.pkey))
            if entry is not None:
                return entry
        a, pte = probe(sid, iova, write)
        return None if a is None else again(a, sid, write, a.ce, a.pe, pte)

    def again(a: _Answer, sid: int, write: bool, ce, pe, pte: int | None = None,
              touch: bool = True, counted: bool = True) -> IotlbEntry | None:
        """The page's last answer ``a`` given again, if each probe finds what it found then
        (_Answer) - ``ce`` and ``pe`` are what the context-cache and the PASID-cache hold
        for ``sid`` and ``a.pkey`` now, and the caller found ``a.key`` absent - with the
        flow's effects; else None, having changed nothing.  With ``pte`` (the value the PTE
        held): ``a`` is the answer ``probe`` has just found, so only the effects are made.
        One function for both: the effects are on every miss, a call more would cost."""
        if pte is None:
            if not (a.sid == sid and a.write == write and a.ce is ce and a.pe is pe
                    and not iotlb.tag_sid
                    and (not large_groups or (iotlb_get(a.key_2m) is None
                                              and iotlb_get(a.key_1g) is None))
                    and psc_get(a.psc_key) is a.psc
                    and read_qword(a.addr, a.snoop) == a.pte):
                return None
        elif a.pte != pte:
            memory.write_qword(a.addr, a.pte)  # the A/D store (walk_fs), before the counts
        # The rest of the flow's effects, in its order (see the module docstring); the
        # counters, which nothing reads in between, with them or left to ``pending``.
        if touch:  # else the caller's last answer left both the most recent
            context_touch(sid)
            pasid_touch(a.pkey)
        psc_touch(a.psc_key)
        if counted:
            count_remembered(1)
            iotlb_fill(a.key, a.entry)  # the 4 KiB key was probed absent
        else:
            pending.remembered += 1
            iotlb_fill(a.key, a.entry, pending)
        return a.entry

    def count_remembered(n: int) -> None:
        """The counters of ``n`` remembered misses: each the full flow's context-cache and
        PASID-cache hits, IOTLB miss, one walk, its paging-structure-cache hit (the PDE)
        and its reads."""
        context_stats.hit += n
        pasid_stats.hit += n
        iotlb_stats.miss += n
        stats["iotlb_miss"] += n  # remapping_unit.UnitStats: dict's own item paths
        stats["walks"] += n
        psc_stats.hit += n
        stats["walk_reads"] += FS_MISS_READS * n

    def probe(sid: int, iova: int, write: bool) -> tuple[_Answer | None, int]:
        """The fast path's checks up to the PTE read: (the answer, the PTE value read), or
        (None, 0) unless the fast path's case; remembers the answer."""
        # RequestFlow.context: a present scalable-mode entry from the context-cache.
        ce = context_get(sid)
        if ce is None or not ce.present or not ce.scalable:
            return None, 0
        # RequestFlow.request: no PASID, so the interrupt range faults (0x87).
        if INTERRUPT_BASE <= iova < _INTERRUPT_END:
            return None, 0
        # ScalableSteps.pasid_entry: RID_PASID within PDTS (0x46), a present cached entry;
        # scalable_request: first stage only (not pass-through, nested or second stage).
        pasid = ce.rid_pasid
        if pasid >> 6 >= 1 << (ce.pdts + 7):
            return None, 0
        pkey = (sid, pasid)
        pe = pasid_get(pkey)
        if pe is None or not pe.present or pe.pgtt != PGTT_FS:
            return None, 0
        # RequestFlow.page: no IOTLB entry at any page size (Iotlb.lookup_iova's keys).
        did = pe.did
        if iotlb.tag_sid:
            return None, 0  # a requester-tagged IOTLB (QEMU's) is not the hot case
        keys = (did, pasid, 1, iova >> 12), (did, pasid, 2, iova >> 21), (did, pasid, 3, iova >> 30)
        if (iotlb_get(keys[0]) is not None or iotlb_get(keys[1]) is not None
                or iotlb_get(keys[2]) is not None):
            return None, 0
        # ScalableSteps.fs_psc: the PDE cached (level 1, probed first), so the walk resumes
        # at the PTE; walk_fs: a canonical input (below 2^47 is for 4 and 5 levels alike).
        psc_key = (did, pasid, STAGE_FS, 1, iova >> 21)
        psc = psc_get(psc_key)
        if psc is None or iova >> 47:
            return None, 0
        # walk_fs on the PTE, then RequestFlow.fill_iotlb: ``leaf``.
        snoop = smpwc and pe.pwsnp
        addr = psc.table_addr + (iova >> 12 & 0x1FF) * 8
        pte = read_qword(addr, snoop)
        found = leaf(pe, psc, pasid, iova, pte, write, snoop)
        if found is None:
            return None, 0
        new, entry = found
        answer = _Answer()
        answer.sid, answer.write, answer.ce, answer.pkey, answer.pe = sid, write, ce, pkey, pe
        answer.key, answer.key_2m, answer.key_1g = keys
        answer.psc_key, answer.psc, answer.addr, answer.snoop = psc_key, psc, addr, snoop
        answer.pte, answer.entry = new, entry
        if len(memo) >= MEMO_PAGES:
            memo.clear()
        memo[iova >> 12] = answer
        return answer, pte

    def leaf(pe, psc, pasid: int, iova: int, pte: int, write: bool, snoop: bool):
        """walk_fs's checks on the PTE and the IOTLB entry fs_page builds: (the PTE with its
        A/D store, the entry), or None unless the fast path's case."""
        # walk_fs on the PTE: present (0x71), not reserved (0x72), U/S (0x81: no PRIV), R/W
        # for a write (0x85), the A/D store on a snooped walk only (0x90).
        nxe = pe.nxe
        if not pte & _P or pte & above_haw or (not nxe and pte & _XD):
            return None
        writable = psc.write and bool(pte & _RW)
        if not (psc.user and pte & _US) or (write and not writable):
            return None
        new = pte | _A | (_EA if pe.eafe else 0) | (_D if write else 0)
        if new != pte and not snoop:
            return None
        # RequestFlow.fill_iotlb: an output page in the interrupt range faults (0x87).
        hpa = pte & _ADDR
        if INTERRUPT_BASE <= hpa < _INTERRUPT_END:
            return None
        # fs_page: a read leaves D clear, so the entry grants writes only once D is set.
        exe = psc.exe and not (nxe and pte & _XD)
        return new, IotlbEntry(pe.did, pasid, iova & ~0xFFF, 1, hpa, True,
                               writable and bool(new & _D), exe, sc and pe.pgsnp, STAGE_FS,
                               global_=bool(pte & _G))

    return fs_miss, memo.get, again, count_remembered
