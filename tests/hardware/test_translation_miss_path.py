"""The first-stage IOTLB-miss fast path (``translation.miss``) is exact: on random first-stage
PTE and PDE bits (present, R/W, U/S, A, D, G, XD, EA, reserved, an output page in the
interrupt range), PASID-entry controls (PWSNP, PGSNP, NXE, EAFE, FSPM, PGTT), stores left in
the CPU cache, cache fills (a supervisor walk's too), evictions, every invalidation
granularity and two requesters, a unit translating through ``unit.translate`` ends every
step in the same state - results, unit stats, each cache's entries in LRU order and its
counters, the paging-structure cache's per-level misses, memory, pending faults - as a twin
translating every request through the full flow (``translation.access``).  The fast world
asks ``unit.translate``, or ``unit.translate_page`` then ``unit.translate_missed`` when it
answers None (a device's DMA to one page, ``DmaWorld.page_dma``), or each in turn (PATHS)."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import twins
from builders import Tables
from vtdsim.hardware import invalidation, translation
from vtdsim.hardware.first_stage import FS_PTE
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.pasid_table import PGTT_FS, PGTT_SS
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import CACHE_NAMES, CacheConfig, RemappingUnit
from vtdsim.hardware.request import DmaRequest, sid_of
from vtdsim.hardware.translation import access, apply_fill, miss, possible_fills

SIDS = (sid_of(0, 3, 0), sid_of(0, 3, 1))
DID = 2
# Pages: two 4 KiB pages in each of two 2 MiB regions, one in the interrupt range, one at
# 2^47 (non-canonical with four levels, canonical with five).
IOVAS = (0x0, 0x1000, 0x20_0000, 0x20_1000, 0xFEE0_0000, 1 << 47)
OUTPUTS = (0x4000_0000, 0x4000_1000, 0xFEE0_0000, 1 << 50)  # the last above a 48-bit HAW
CAPS = (get_preset("server-sm"), get_preset("server-sm").with_(smpwc=0, sc=0),
        get_preset("vm-flts-cm"))
# An entry's ``bits``: these flags from bit 0, P clear 0x80, the output (OUTPUTS) 0x300,
# reserved bit 51 set 0x400, a large-page leaf (PS) 0x800, left in the CPU cache 0x1000.
PTE_BITS = ("rw", "us", "a", "d", "g", "xd", "ea")
# Each op's ``bits`` is random or one of its usual values: most random entries fault, which
# the fast path leaves to the full flow.  A present user accessed PTE, writable and dirty or
# not, global, XD, EA, another output, one in the interrupt range, one above the HAW, one
# reserved, one not flushed, supervisor, read-only; a PDE or PDPTE likewise, or a leaf.
PTE_USUAL = (0x7, 0xF, 0x17, 0x27, 0x2F, 0x47, 0x107, 0x10F, 0x20F, 0x30F, 0x40F, 0x100F,
             0x5, 0x6)
PDE_USUAL = (0x7, 0x5, 0x6, 0x27, 0x807, 0x80F)
# A PASID entry's ``bits``: FSPM 0x1, PGSNP 0x4, EAFE 0x10, NXE 0x20, PGTT SS 0x40, P clear
# 0x80, then a PASID-cache invalidation 0x100; PWSNP clear 0x200.
PASID_USUAL = (0x100, 0x101, 0x104, 0x110, 0x120, 0x130, 0x300, 0x140, 0, 1)
# A context entry's: RID_PASID beyond a PDTS-0 PASID directory 0x1, then its invalidation 0x2,
# PDTS 1 0x4 (RID_PASID_BEYOND within it).
CONTEXT_USUAL = (0x2, 0x3, 0x6, 0x7)
RID_PASID_BEYOND = 128 * 64 + 5  # beyond a PDTS-0 directory: fault 0x46


class World:
    """A scalable-mode unit whose two requesters share domain ``DID`` on RID_PASID 0, with
    a 4- and a 5-level first-stage table mapping the same pages."""

    def __init__(self, caps, config: CacheConfig, path: str = "translate"):
        self.path, self.requests = path, 0  # the fast path taken (PATHS), requests made
        self.unit = RemappingUnit(caps, PhysicalMemory(), cache_config=config)
        self.t = Tables(self.unit.memory)
        self.unit.root_table_addr, self.unit.ttm = self.t.rta, 1
        self.unit.translation_enabled = True
        self.fs = {0: self.t.fs_table(4), 1: self.t.fs_table(5)}
        self.ss = self.t.ss_table(4)
        for sid in SIDS:
            self.set_context(sid, 0)
            self.set_pasid(sid, 0)
        # Each first-stage entry's address (fspm, page, level) -> address, and the table a
        # non-leaf one points to, kept as built: a large leaf or a P clear can be undone.
        self.entry: dict[tuple, int] = {}
        self.below: dict[int, int] = {}
        for page, iova in enumerate(IOVAS):
            for fspm, fs in self.fs.items():
                fs.map(iova, OUTPUTS[page % 2], rw=1, d=page & 1)
                for level in (1, 2, 3):
                    self.entry[fspm, page, level] = fs.pte_addr(iova, level)
                for level in (2, 3):
                    self.below[fs.pte_addr(iova, level)] = fs.pte_addr(iova, level - 1) & ~0xFFF
            self.ss.map(iova, OUTPUTS[page % 2])

    def set_context(self, sid: int, bits: int) -> None:
        rid_pasid = RID_PASID_BEYOND if bits & 1 else 0
        if sid in self.unit.context_cache or bits:  # not at boot: the directory is kept
            self.t.set_sm_context(sid, pdts=bits >> 2 & 1, rid_pasid=rid_pasid, paside=1,
                                  pasid_dir_ptr=self.t.pasid_dir(sid))
        else:
            self.t.set_sm_context(sid, pdts=bits >> 2 & 1, rid_pasid=rid_pasid, paside=1)
        if bits & 2:
            invalidation.context_cache_device(self.unit, DID, sid, 0)

    def set_pasid(self, sid: int, bits: int) -> None:
        """The entries of PASID 0 and RID_PASID_BEYOND alike."""
        fspm = bits & 1
        for pasid in (0, RID_PASID_BEYOND):
            self.t.set_pasid_entry(
                sid, pasid, p=int(not bits & 0x80), pgtt=PGTT_SS if bits & 0x40 else PGTT_FS,
                did=DID, aw=2, ssptptr=self.ss.root, fsptptr=self.fs[fspm].root, fspm=fspm,
                pwsnp=int(not bits & 0x200), pgsnp=bits >> 2 & 1, eafe=bits >> 4 & 1,
                nxe=bits >> 5 & 1)
        if bits & 0x100:
            invalidation.pasid_cache_pasid(self.unit, DID, 0)

    def set_entry(self, page: int, bits: int, level: int) -> None:
        """The level-``level`` first-stage entry of both tables for ``IOVAS[page]``: a PTE,
        or above it one pointing to the table it pointed to at first, or a large leaf."""
        fields = {name: bits >> i & 1 for i, name in enumerate(PTE_BITS)}
        fields["p"] = int(not bits & 0x80)
        leaf = level == 1 or bool(bits & 0x800)
        for fspm in self.fs:
            addr = self.entry[fspm, page, level]
            out = OUTPUTS[bits >> 8 & 3] if leaf else self.below[addr]
            value = FS_PTE.encode(addr=out >> 12, ps=int(level > 1 and leaf), **fields)
            if bits & 0x400 and leaf:
                value |= 1 << 51  # reserved at or above a 48-bit HAW
            self.unit.memory.cpu_store(addr, value, 8)
            if not bits & 0x1000:
                self.unit.memory.clflush(addr)

    def invalidate(self, kind: int, page: int, sid: int) -> None:
        unit, addr = self.unit, IOVAS[page]
        ops = (
            lambda: invalidation.piotlb_page(unit, DID, 0, addr, 0, 0),
            lambda: invalidation.piotlb_page(unit, DID, 0, addr, 0, 1),
            lambda: invalidation.piotlb_pasid(unit, DID, 0),
            lambda: invalidation.iotlb_page(unit, DID, addr, 0, 0),
            lambda: invalidation.iotlb_global(unit),
            lambda: invalidation.pasid_cache_pasid(unit, DID, 0),
            lambda: invalidation.context_cache_device(unit, DID, sid, 0),
            lambda: invalidation.piotlb_page(unit, DID, RID_PASID_BEYOND, addr, 0, 1),
        )
        ops[kind % len(ops)]()

    def state(self) -> tuple:
        unit = self.unit
        caches = tuple((name, getattr(unit, name).items(), getattr(unit, name).stats.as_dict())
                       for name in CACHE_NAMES)
        return (dict(unit.stats), list(unit.stats), caches, unit.pscache.level_misses,
                unit.memory.snapshot(), unit.faults.pending())


PATHS = ("translate", "page", "mixed")  # the fast world's: unit.translate, translate_page


def translate(w: World, sid: int, page: int, write: bool, fast: bool) -> list:
    """The page from ``sid``, again, from the other requester, then its neighbour in the same
    2 MiB region (below the PDE the first walk cached) from ``sid``, through the world's
    fast path (``w.path``) iff ``fast``."""
    other = SIDS[1 - SIDS.index(sid)]
    requests = [(sid, page), (sid, page), (other, page), (sid, page ^ 1 if page < 4 else page)]
    out = []
    for who, p in requests:
        if not fast:
            out.append(access(w.unit, DmaRequest(who, IOVAS[p], write)))
            continue
        w.requests += 1
        if w.path == "page" or (w.path == "mixed" and w.requests % 2):
            out.append(twins.page_request(w.unit, who, IOVAS[p], write))
        else:
            out.append(w.unit.translate(who, IOVAS[p], write))
    return out


def apply(w: World, op: str, page: int, bits: int, who: int, fast: bool):
    sid = SIDS[who]
    if op == "translate":
        return translate(w, sid, page, bool(bits & 1), fast)
    if op == "again":  # the pages, then again once their IOTLB entries went (IH=1: PDE kept)
        first = translate(w, sid, page, bool(bits & 1), fast)
        w.invalidate(1, page, sid)
        w.invalidate(1, page ^ 1 if page < 4 else page, sid)
        return first + translate(w, sid, page, bool(bits & 2), fast)
    if op in ENTRY_LEVELS:
        w.set_entry(page, bits, ENTRY_LEVELS[op])
    elif op == "pasid":
        w.set_pasid(sid, bits)
    elif op == "context":
        w.set_context(sid, bits)
    elif op == "flush":
        w.unit.memory.wbinvd()
    elif op == "supervisor":  # the cached entries as a supervisor (PRIV) walk fills them
        for key, entry in w.unit.pscache.items():
            w.unit.pscache.fill(key, replace(entry, user=False))
    elif op in ("fill", "fill_psc"):
        # A request with PASID 0 (the RID_PASID) walks the interrupt range's page too.
        fills = possible_fills(w.unit, sid, IOVAS[page], 0 if op == "fill_psc" else None)
        if op == "fill_psc":  # every paging-structure entry a walk would pass, no leaf
            for fill in fills:
                if fill.cache == "pscache":
                    apply_fill(w.unit, fill)
        elif fills:
            apply_fill(w.unit, fills[bits % len(fills)])
    elif op == "evict":
        twins.evict_nth(w.unit, bits)
    elif op == "invalidate":
        w.invalidate(bits, page, sid)
    return None


ENTRY_LEVELS = {"pte": 1, "pde": 2, "pdpte": 3}


def op(name: str, usual: tuple = (0,), weight: int = 1, only_usual: bool = False) -> list:
    """``weight`` copies of a strategy for (name, page, bits, requester)."""
    bits = st.sampled_from(usual)
    if not only_usual:
        bits = st.one_of(st.integers(0, 0x1FFF), bits)
    return [st.tuples(st.just(name), st.integers(0, len(IOVAS) - 1), bits,
                      st.integers(0, 1))] * weight


OPS = st.lists(
    st.one_of(*op("translate", (0, 1), 6), *op("pte", PTE_USUAL, 2), *op("pde", PDE_USUAL),
              *op("pdpte", PDE_USUAL), *op("pasid", PASID_USUAL), *op("context", CONTEXT_USUAL),
              *op("flush"), *op("fill"), *op("fill_psc"), *op("evict"), *op("supervisor"),
              *op("invalidate", tuple(range(8)), 2)),
    min_size=8,
    max_size=60,
)
# Pages missed again and again, which fs_miss answers from its memo when the PASID entry,
# the PDE entry and the PTE are the ones it built the answer from: usual values only, small
# IOTLBs (CONFIGS), IOTLB-only invalidations (IH=1, the first three kinds) and evictions
# between the misses, and every kind of change of what the answer was built from.
REPEATS = st.lists(
    st.one_of(*op("translate", (0, 1), 4, True), *op("again", (0, 1, 2, 3), 4, True),
              *op("pte", PTE_USUAL, 2, True),
              *op("pasid", PASID_USUAL, 1, True), *op("fill_psc", (0,), 1, True),
              *op("pde", PDE_USUAL, 1, True), *op("context", CONTEXT_USUAL, 1, True),
              *op("fill", tuple(range(4)), 1, True),
              *op("evict", tuple(range(16)), 2, True), *op("supervisor", (0,), 1, True),
              *op("invalidate", (1, 1, 1, 2, 0, 4), 3, True)),
    min_size=8,
    max_size=60,
)
CONFIGS = st.builds(
    CacheConfig, context=st.integers(1, 4), pasid=st.integers(1, 4), iotlb=st.integers(1, 8),
    pscache=st.integers(1, 8), iotlb_flush_when_full=st.booleans(),
    iotlb_tag_sid=st.sampled_from([False, False, True]), cache_negative=st.booleans())


def run_twins(caps, config: CacheConfig, ops, path: str = "translate") -> None:
    twins.run_twins(lambda: World(caps, config, path), apply, ops)


@settings(max_examples=400, deadline=None)
@given(caps=st.sampled_from(CAPS), config=CONFIGS, ops=OPS, path=st.sampled_from(PATHS))
def test_miss_path_matches_the_full_flow(caps, config, ops, path):
    run_twins(caps, config, ops, path)


@settings(max_examples=300, deadline=None)
@given(caps=st.sampled_from(CAPS), config=CONFIGS, ops=REPEATS, path=st.sampled_from(PATHS))
def test_miss_path_matches_the_full_flow_on_pages_missed_again(caps, config, ops, path):
    run_twins(caps, config, ops, path)


SCENARIOS = {  # rare states where a check of the fast path decides, reached on purpose
    "non-canonical below a cached PDE": [
        ("pasid", 0, 0x101, 0), ("translate", 5, 1, 0), ("invalidate", 5, 1, 0),
        ("pasid", 0, 0x100, 0), ("translate", 5, 1, 0)],
    "a 1 GiB IOTLB entry over a cached PDE": [
        ("pdpte", 0, 0x807, 0), ("translate", 0, 1, 0), ("pdpte", 0, 0x7, 0),
        ("fill_psc", 2, 0, 0), ("translate", 2, 1, 0)],
    "a 2 MiB IOTLB entry over a cached PDE": [
        ("pde", 0, 0x807, 0), ("translate", 0, 1, 0), ("pde", 0, 0x7, 0),
        ("fill_psc", 1, 0, 0), ("translate", 1, 1, 0)],
    "a global PTE": [("pte", 1, 0x17, 0), ("translate", 0, 1, 0)],
    "XD without NXE": [("pte", 1, 0x27, 0), ("translate", 0, 0, 0)],
    "XD with NXE": [("pasid", 0, 0x120, 0), ("pte", 1, 0x27, 0), ("translate", 0, 0, 0)],
    "PGSNP": [("pasid", 0, 0x104, 0), ("translate", 0, 1, 0)],
    "a PTE not present": [("pte", 1, 0x8F, 0), ("translate", 0, 1, 0)],
    "a PTE with a reserved bit": [("pte", 1, 0x40F, 0), ("translate", 0, 0, 0)],
    "the interrupt range below a cached PDE": [
        ("translate", 0, 0, 0), ("fill_psc", 4, 0, 0), ("translate", 4, 0, 0)],
    "RID_PASID beyond a shrunk directory": [
        ("context", 0, 0x7, 0), ("translate", 0, 1, 0), ("context", 0, 0x3, 0),
        ("invalidate", 1, 7, 0), ("translate", 1, 1, 0)],
    "a second-stage PASID entry": [
        ("translate", 0, 1, 0), ("pasid", 0, 0x140, 0), ("translate", 0, 1, 0),
        ("invalidate", 1, 1, 0), ("translate", 1, 1, 0)],
    "EAFE: the EA store": [("pasid", 0, 0x110, 0), ("translate", 0, 0, 0)],
    "an output page in the interrupt range": [("pte", 1, 0x20F, 0), ("translate", 0, 1, 0)],
    "a PDE cached by a supervisor walk": [
        ("translate", 0, 1, 0), ("supervisor", 0, 0, 0), ("invalidate", 1, 1, 0),
        ("translate", 1, 1, 0)],
    "a cached PDE without write or user": [
        ("pde", 0, 0x6, 0), ("translate", 0, 0, 0), ("invalidate", 1, 1, 0),
        ("pde", 0, 0x7, 0), ("translate", 1, 1, 0), ("pde", 0, 0x5, 0),
        ("invalidate", 0, 2, 0), ("translate", 0, 0, 0), ("invalidate", 1, 1, 0),
        ("pde", 0, 0x7, 0), ("translate", 1, 0, 0)],
    # fs_miss's memo: a page missed again - page 1, which the first translate's last request
    # missed below the PDE page 0's walk cached - once its IOTLB entry went (IH=1 keeps the
    # PDE), with what the answer was computed from the same or changed in between.
    "a page again, nothing changed": [
        ("translate", 0, 1, 0), ("invalidate", 1, 1, 0), ("translate", 1, 1, 0)],
    "a page again, written after a read": [
        ("translate", 0, 0, 0), ("invalidate", 1, 1, 0), ("translate", 1, 1, 0),
        ("invalidate", 1, 1, 0), ("translate", 1, 0, 0)],
    "a page again, its PTE made read-only": [
        ("translate", 0, 1, 0), ("pte", 1, 0x27, 0), ("invalidate", 1, 1, 0),
        ("translate", 1, 1, 0), ("translate", 1, 0, 0)],
    "a page again, its PTE made not present": [
        ("translate", 0, 0, 0), ("pte", 1, 0x8F, 0), ("invalidate", 1, 1, 0),
        ("translate", 1, 0, 0)],
    "a page again, its PASID entry changed": [
        ("translate", 0, 0, 0), ("pasid", 0, 0x110, 0), ("invalidate", 1, 1, 0),
        ("translate", 1, 0, 0), ("pasid", 0, 0x120, 0), ("invalidate", 1, 1, 0),
        ("translate", 1, 0, 0)],
    "a page again, its PDE cached by a supervisor walk": [
        ("translate", 0, 0, 0), ("supervisor", 0, 0, 0), ("invalidate", 1, 1, 0),
        ("translate", 1, 0, 0)],
    "a page again from the other requester after an eviction": [
        ("translate", 0, 1, 0), ("evict", 0, 1, 0), ("invalidate", 1, 1, 0),
        ("translate", 1, 1, 1)],
    "a page again, its context entry fetched again": [
        ("translate", 0, 1, 0), ("context", 0, 0x2, 0), ("invalidate", 1, 1, 0),
        ("translate", 1, 1, 0)],
    "a page again under a 2 MiB IOTLB entry": [  # the fifth fill is the 2 MiB leaf's
        ("translate", 0, 0, 0), ("invalidate", 1, 1, 0), ("pde", 0, 0x807, 0),
        ("fill", 0, 4, 0), ("pde", 0, 0x7, 0), ("translate", 1, 0, 0)],
    "a page again under a 1 GiB IOTLB entry": [  # the fourth fill is the 1 GiB leaf's
        ("translate", 0, 0, 0), ("invalidate", 1, 1, 0), ("pdpte", 0, 0x807, 0),
        ("fill", 0, 3, 0), ("pdpte", 0, 0x7, 0), ("translate", 1, 0, 0)],
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("caps", CAPS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_miss_path_matches_the_full_flow_on(name, caps, path):
    run_twins(caps, CacheConfig(), SCENARIOS[name], path)


def test_miss_path_is_taken_for_a_page_below_a_cached_pde(monkeypatch):
    """A 4 KiB page next to one already walked (its PDE cached) is answered without the
    full flow, with the flow's counts: one walk, one read, one IOTLB miss and fill."""
    w = World(CAPS[0], CacheConfig())
    w.unit.translate(SIDS[0], IOVAS[0], True)  # a full walk: fills the PSC down to the PDE
    stats, iotlb = dict(w.unit.stats), w.unit.iotlb.stats.as_dict()

    def unreachable(*_args, **_kw):
        raise AssertionError("the full flow ran")

    monkeypatch.setattr(translation, "access", unreachable)
    entry = w.unit.translate(SIDS[0], IOVAS[1], True)
    assert entry.hpa == OUTPUTS[1] and entry.write and entry.level == 1
    assert w.unit.iotlb.keys()[-1] == entry.key
    moved = {k: v - stats.get(k, 0) for k, v in w.unit.stats.items() if v != stats.get(k, 0)}
    assert moved == {"iotlb_miss": 1, "walks": 1, "walk_reads": 1}
    assert w.unit.iotlb.stats.miss == iotlb["miss"] + 1
    assert w.unit.iotlb.stats.fill == iotlb["fill"] + 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", [n for n in SCENARIOS if n.startswith("a page again")])
def test_miss_path_matches_the_full_flow_remembering_one_page(name, path, monkeypatch):
    """The memo emptied whenever full, at one page: a miss on another page forgets."""
    monkeypatch.setattr(miss, "MEMO_PAGES", 1)
    run_twins(CAPS[0], CacheConfig(), SCENARIOS[name] + [("again", 1, 3, 0), ("again", 0, 3, 1)],
              path)


def test_miss_path_remembers_a_page_it_built_the_entry_of():
    """A page missed again with the same PASID entry, PDE entry and PTE value gets the very
    entry built the first time (fs_miss's memo), and one rebuilt once the PTE changed."""
    w = World(CAPS[0], CacheConfig())
    w.unit.translate(SIDS[0], IOVAS[0], True)  # a full walk: fills the PSC down to the PDE
    first = w.unit.translate(SIDS[0], IOVAS[1], True)
    invalidation.piotlb_page(w.unit, DID, 0, IOVAS[1], 0, 1)  # IH=1: the PDE stays cached
    assert w.unit.translate(SIDS[0], IOVAS[1], True) is first
    w.set_entry(1, 0x11F, 1)  # present, accessed, dirty, now G: a new value, a new entry
    invalidation.piotlb_page(w.unit, DID, 0, IOVAS[1], 0, 1)
    again = w.unit.translate(SIDS[0], IOVAS[1], True)
    assert again is not first and again.global_ and again == replace(first, global_=True)


def test_translate_page_answers_a_page_missed_again_without_translate_missed(monkeypatch):
    """A page missed again below its cached PDE, nothing changed, is ``translate_page``'s
    own answer (the memo's entry, the flow's counts); a page never missed is not."""
    w = World(CAPS[0], CacheConfig())
    w.unit.translate(SIDS[0], IOVAS[0], True)  # a full walk: fills the PSC down to the PDE
    assert w.unit.translate_page(SIDS[0], IOVAS[1], True) is None  # never missed: nothing
    first = w.unit.translate(SIDS[0], IOVAS[1], True)
    assert w.unit.translate_page(SIDS[0], IOVAS[1], True) is first  # the IOTLB hit
    invalidation.piotlb_page(w.unit, DID, 0, IOVAS[1], 0, 1)  # IH=1: the PDE stays cached
    stats = dict(w.unit.stats)
    assert w.unit.translate_page(SIDS[0], IOVAS[1], True) is first
    moved = {k: v - stats.get(k, 0) for k, v in w.unit.stats.items() if v != stats.get(k, 0)}
    assert moved == {"iotlb_miss": 1, "walks": 1, "walk_reads": 1}
