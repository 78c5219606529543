"""Mutation self-test of the litmus library: seeded bugs in the driver model's protocols, each
expected to be caught by some scenario of ``litmus/`` (a verdict that differs from the
scenario's expectation), after a clean run shows that no correct protocol is flagged.

A mutant is a ``Mutation`` (rules over the step streams of every scenario op: mutations.py) and,
for the few bugs a stream cannot express, ``Swap``s that replace one driver function by a
deliberately wrong one while the mutant runs (named ``_wrong_*`` below).  Ops of the set-up and
of the threads run mutated; the boot (init_hw, probe) does not.

The VMM's bugs (``vmm_*``) are swaps of QEMU's functions in ``vtdsim.virtualization``, caught
by the ``issue11_*`` scenarios on emulated, shadow and nested platforms.

Not covered: locks released early outside seed 001's context change, the cache-tag/context
order of seed 002 (a profile switch with scenarios on both sides, not a seeded bug), VMM bugs
in vhost's device IOTLB (no checker actor issues vhost DMA).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vtdsim.checker import boot
from vtdsim.checker import mutations as mu
from vtdsim.checker.lifecycle import DATA, PAGE_MASK, Owner, PageLedger
from vtdsim.checker.litmus import Options, collect, run_scenario
from vtdsim.checker.scenario import Scenario, load
from vtdsim.driver import context as ctx
from vtdsim.driver import flush_linux61 as f61
from vtdsim.driver import steps as st
from vtdsim.driver.flush_queue import FlushQueue
from vtdsim.driver.pasid import present_pasid_dids
from vtdsim.driver.psi import psi_mask_linux61
from vtdsim.errors import BadInput
from vtdsim.hardware.second_stage import SS_PTE
from vtdsim.virtualization import address_space as vas
from vtdsim.virtualization import handlers
from vtdsim.virtualization.nesting import IommufdNested

NEVER = mu.Match(where=lambda step: False)  # a Delay until the op's end


@dataclass(frozen=True)
class Swap:
    """``setattr(owner, name, replacement)`` while the mutant runs."""

    owner: object
    name: str
    replacement: Callable


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    catchers: tuple[str, ...]  # scenario names expected to catch it (tried first)
    mutation: mu.Mutation = field(default_factory=mu.Mutation)
    swaps: tuple[Swap, ...] = ()


@contextmanager
def applied(mutant: Mutant) -> Iterator[None]:
    """Every op factory wraps its generator in the mutation; the swaps are in place."""
    saved_ops = dict(boot.OP_FACTORIES)
    saved_attrs = [(s.owner, s.name, getattr(s.owner, s.name)) for s in mutant.swaps]
    for kind, factory in saved_ops.items():
        boot.OP_FACTORIES[kind] = _wrapped(factory, mutant.mutation)
    for swap in mutant.swaps:
        setattr(swap.owner, swap.name, swap.replacement)
    try:
        yield
    finally:
        boot.OP_FACTORIES.update(saved_ops)
        for owner, name, value in saved_attrs:
            setattr(owner, name, value)


def _wrapped(factory, mutation: mu.Mutation):
    def run(system, op):
        return mutation.wrap(factory(system, op))
    return run


# -- helpers building the catalogue -------------------------------------------------------------
def drop_desc(label: str, within: str, where=None) -> mu.Mutation:
    return mu.Mutation(descriptors=(mu.DescriptorRule(label, within, where),))


def alter_desc(label: str, within: str, change, where=None) -> mu.Mutation:
    return mu.Mutation(descriptors=(mu.DescriptorRule(label, within, where, change),))


def _psi(fields: dict) -> bool:
    return fields["g"] == 3


def _with(**changes) -> Callable[[dict], dict]:
    """A field change: values are callables of the old value."""
    def change(fields: dict) -> dict:
        return {**fields, **{k: fn(fields[k]) for k, fn in changes.items()}}
    return change


# -- deliberately wrong driver functions (only where a stream rule cannot express the bug) ------
_RIGHT_PSI = f61.iommu_flush_iotlb_psi


def _wrong_devtlb_first_iommu_flush_iotlb_psi(iommu, domain, profile, pfn, pages, ih, map_):
    """The device-TLB flush of an unmap goes out before the IOTLB PSI (the PSI's own
    device-TLB flush is dropped by the mutant's descriptor rule): an ATS translation request
    in between refills the ATC from the stale IOTLB entry."""
    if not map_:
        addr_pfn, mask = psi_mask_linux61(pfn, pages)
        yield from f61.iommu_flush_dev_iotlb(domain, addr_pfn << 12, mask)
    yield from _RIGHT_PSI(iommu, domain, profile, pfn, pages, ih, map_)


def _wrong_fq_flush_iotlb_finish_first(self, why):
    """The flush queue counts its flush finished before ``flush_iotlb_all`` ran: entries (and
    their pages) are released while the IOTLB still translates them."""
    self.flush_finish_cnt += 1
    self.flush_start_cnt += 1
    yield st.Annotate(event="fq_flush", data=(self.name, why))
    yield from self.flush_iotlb_all()


_RIGHT_FLUSH_PRESENT = ctx.intel_context_flush_present


def _wrong_walk_first_intel_context_flush_present(info, did, flush_domains,
                                                  pasid_walk=present_pasid_dids):
    """The PASID table is walked *before* the context-cache flush (its DIDs are flushed
    afterwards): a PASID made present after the walk but before the flush can be fetched
    through the old context entry and is missed (seed 001, "lock dropped early")."""
    found = (yield from pasid_walk(info)) if flush_domains else []

    def replay(_info):
        yield from ()
        return found

    return (yield from _RIGHT_FLUSH_PRESENT(info, did, flush_domains, replay))


def _dma_clear_pte() -> mu.Match:
    return mu.Match(kinds=(st.CpuWrite,), why="dma_clear_pte")


# Bugs in the properties' own bookkeeping (lifecycle.PageLedger): a checker that misjudges is
# as wrong as a driver that misbehaves, so the library must catch these too.
_LEDGER_STEP = PageLedger.step


def _wrong_allocated_keeps_owner(self, addr, what, op):
    """An allocation is not seen as a change of owner: a freed page handed to anyone else
    still counts as the data page it was, in the epoch its old domain mapped it."""
    page = addr & PAGE_MASK
    self.owners[page] = Owner(DATA, "", 0, self.epochs.get(page, 0))


def _wrong_step_without_zeroing(self, step, reply, op, memory):
    """A zeroing store (CpuZero) is not seen as a store."""
    if type(step) is not st.CpuZero:
        _LEDGER_STEP(self, step, reply, op, memory)


# Bugs of the VMM (QEMU's intel-iommu and what it drives), caught by the issue11_* scenarios.
def _wrong_pde_not_present(emit, iova: int, size: int, level: int) -> None:
    """QEMU before its 2018 fix: a non-present entry covering a whole page directory (or
    more) sends no UNMAP - VFIO keeps the stale mappings below it."""
    if level == 1:
        emit(vas.IommuEvent(vas.UNMAP, iova, size))


def _wrong_dsi_as_psi(vmm, f: dict) -> None:
    """A domain-selective IOTLB invalidation handled as a page-selective one: the DSI's
    address and mask fields (zero) select one page at IOVA 0."""
    handlers._iotlb_page(vmm, {**f, "addr": f.get("addr", 0), "am": f.get("am", 0),
                               "ih": f.get("ih", 0)})


def _wrong_same_range_is_same_mapping(mapped, event) -> bool:
    """vtd_page_walk_one comparing only the range: a changed translation (same IOVA, another
    GPA) is skipped as if it were the mapping the tree holds."""
    return mapped is not None and (mapped.iova, mapped.size) == (event.iova, event.size)


def _wrong_forward_dropped(self, f: dict) -> None:
    """The VMM accepts the guest's PASID-IOTLB invalidation but forwards nothing to the
    host's nested HWPT (vtd_flush_host_piotlb_all_locked never called)."""
    self.stats["iommufd_cache_invalidate_dropped"] += 1


CATALOGUE: tuple[Mutant, ...] = (
    Mutant("iotlb_psi_dropped", "6.1 iotlb_sync sends no IOTLB PSI for the unmapped range",
           ("unmap_free_race_flush_wait",),
           drop_desc("iotlb_inv", "intel_iommu_tlb_sync_linux61")),
    Mutant("qi_wait_dropped", "qi_submit_sync of the unmap flush returns without waiting for "
           "its wait descriptor", ("unmap_free_race_flush_wait",),
           mu.Mutation(rules=(mu.Drop(mu.Match(kinds=(st.CpuRead, st.WaitQword),
                                               why=mu.QI_WHY, within="iommu_iotlb_sync")),))),
    Mutant("psi_wrong_did", "the unmap PSI carries the DID of another domain (DID+1)",
           ("unmap_free_race_flush_wait",),
           alter_desc("iotlb_inv", "intel_iommu_tlb_sync_linux61", _with(did=lambda d: d + 1))),
    Mutant("psi_mask_off_by_one", "the unmap PSI's address mask is one order too small",
           ("psc_table_free_psi",),
           alter_desc("iotlb_inv", "iommu_iotlb_sync", _with(am=lambda m: m - 1),
                      lambda f: _psi(f) and f["am"] > 0)),
    Mutant("psi_ih_with_freed_tables", "IH=1 on the PSI of an unmap that freed a page-table "
           "page: the paging-structure caches keep the freed table",
           ("psc_table_free_psi",),
           alter_desc("iotlb_inv", "iommu_iotlb_sync", _with(ih=lambda _: 1), _psi)),
    Mutant("pte_clflush_dropped", "the cleared PTE is not clflushed on a non-coherent unit "
           "(ECAP.C=0): the unit keeps walking the old PTE in DRAM",
           ("unmap_free_race_flush_wait",),
           mu.Mutation(rules=(mu.Drop(mu.Match(kinds=(st.ClflushRange,),
                                               why="domain_flush_cache")),))),
    Mutant("pte_cleared_after_flush", "the IOTLB flush is issued before the PTE is cleared "
           "(the store lands at the end of the unmap)", ("unmap_free_race_flush_wait",),
           mu.Mutation(rules=(mu.Delay(_dma_clear_pte(), NEVER),))),
    Mutant("devtlb_dropped_on_unmap", "6.1 iommu_flush_iotlb_psi skips the device-TLB flush "
           "of an unmap", ("seed000_unmap_devtlb_linux61",),
           drop_desc("dev_tlb_inv", "iommu_iotlb_sync")),
    Mutant("devtlb_before_iotlb", "the device-TLB is invalidated before the IOTLB on unmap",
           ("seed000_unmap_devtlb_linux61",),
           drop_desc("dev_tlb_inv", "iommu_flush_iotlb_psi"),
           (Swap(f61, "iommu_flush_iotlb_psi", _wrong_devtlb_first_iommu_flush_iotlb_psi),)),
    Mutant("devtlb_dropped_in_flush_all", "mainline cache_tag_flush_all leaves the device-TLB "
           "(seed 000's 6.1 behaviour reintroduced)", ("seed000_flush_all_devtlb_mainline",),
           drop_desc("dev_tlb_inv", "cache_tag_flush_all")),
    Mutant("cm_map_flush_dropped", "6.1 __mapping_notify_one sends no PSI under caching mode",
           ("cm_map_with_sync_map",), drop_desc("iotlb_inv", "mapping_notify_one")),
    Mutant("cm_map_psi_wrong_page", "the caching-mode map PSI names the next page",
           ("cm_map_with_sync_map",),
           alter_desc("iotlb_inv", "mapping_notify_one", _with(addr=lambda a: a + 0x1000),
                      _psi)),
    Mutant("entry_present_first", "table entries are stored qword 0 (Present) first, the "
           "other qwords after", ("sm_attach_entries_coherent",),
           mu.Mutation(rules=(mu.ReverseRun(mu.Match(kinds=(st.CpuWrite,),
                                                     within="write_entry_present_last")),))),
    Mutant("context_cm_flush_dropped", "no context-cache invalidation after a context entry "
           "becomes present under caching mode",
           ("cm_attach_context_flush", "issue10_p3_setup_mapping_cm_attach"),
           drop_desc("cc_inv", "context_present_cache_flush")),
    Mutant("context_written_after_flush", "the context entry is stored after its caching-mode "
           "flush (at the unlock)", ("cm_attach_context_flush",),
           mu.Mutation(rules=(mu.Delay(
               mu.Match(kinds=(st.CpuWrite,), within="write_entry_present_last",
                        why="domain_context_mapping_one"),
               mu.Match(kinds=(st.Unlock,), why="domain_context_mapping_one")),))),
    Mutant("map_pte_clflush_dropped", "the PTEs a map stores are not clflushed on a non-coherent "
           "unit: after the caching-mode PSI the unit refills from DRAM without it",
           ("cm_map_with_sync_map",),
           mu.Mutation(rules=(mu.Drop(mu.Match(kinds=(st.ClflushRange,),
                                               why="domain_flush_cache",
                                               within="_install_run")),))),
    Mutant("fq_finish_before_flush", "the flush queue's finish counter moves before "
           "flush_iotlb_all: lazily unmapped pages count as flushed too early",
           ("seed003_lazy_exposure_legacy",),
           swaps=(Swap(FlushQueue, "fq_flush_iotlb", _wrong_fq_flush_iotlb_finish_first),)),
    Mutant("snp_dropped_after_enforce", "leaf PTEs of a domain that enforces cache coherency "
           "lack SNP", ("seed004_enforce_ss_wbinvd_noop",),
           mu.Mutation(rules=(mu.Alter(mu.Match(kinds=(st.CpuCmpxchg,), why="__domain_mapping"),
                                       lambda s: st.CpuCmpxchg(
                                           addr=s.addr, expected=s.expected,
                                           new=SS_PTE.replace(s.new, snp=0), why=s.why)),))),
    Mutant("mainline_psi_dropped", "mainline cache_tag_flush_range queues no IOTLB PSI",
           ("unmap_free_race_mainline",),
           drop_desc("iotlb_inv", "cache_tag_flush_range", _psi)),
    Mutant("mainline_psi_wrong_page", "mainline's PSI address is one page off "
           "(calculate_psi_aligned_address)", ("unmap_free_race_mainline",),
           alter_desc("iotlb_inv", "cache_tag_flush_range", _with(addr=lambda a: a + 0x1000),
                      _psi)),
    Mutant("lock_dropped_early", "context_flip_pri collects the DIDs of the present PASID "
           "entries under iommu->lock, then releases the lock before the context-cache flush: "
           "a PASID attached in between is cached through the old context entry, never flushed",
           ("seed001_attach_after_walk_locked", "seed001_attach_after_walk_unlocked"),
           mu.Mutation(rules=(mu.EarlyUnlock(mu.Match(kinds=(st.Lock,), why="context_flip_pri"),
                                             mu.Match(within="flush_context_device")),)),
           (Swap(ctx, "intel_context_flush_present",
                 _wrong_walk_first_intel_context_flush_present),)),
    Mutant("context_rwbf_flush_dropped", "no write-buffer flush after a context entry becomes "
           "present on a unit with CAP.RWBF (context_present_cache_flush, spec 6.8): the entry "
           "and the PTEs stored before it stay posted", ("seed002_rwbf_tags_before_context",),
           mu.Mutation(rules=(mu.Drop(mu.Match(why="iommu_flush_write_buffer",
                                               within="context_present_cache_flush")),))),
    Mutant("map_rwbf_flush_dropped", "cache_tag_flush_range_np skips the write-buffer flush of a "
           "map on a unit with CAP.RWBF: the new PTE stays posted",
           ("seed002_rwbf_tags_before_context",),
           mu.Mutation(rules=(mu.Drop(mu.Match(why="iommu_flush_write_buffer",
                                               within="cache_tag_flush_range_np")),))),
    Mutant("teardown_cc_flush_dropped", "6.1's context teardown (domain_context_clear_one) "
           "skips the context-cache invalidation: a fetch of the entry in 64-bit pieces that "
           "began before the teardown joins the old DID to the new entry's table pointer",
           ("issue10_p5_torn_context_reattach",),
           drop_desc("cc_inv", "_flush_cleared_linux61")),
    Mutant("ledger_reuse_untracked", "checker bookkeeping: a page's re-allocation is not a new "
           "owner, so a stale DMA into a freed page reused as a page table passes",
           ("issue10_p2_stale_iotlb_writes_reused_table",),
           swaps=(Swap(PageLedger, "_allocated", _wrong_allocated_keeps_owner),)),
    Mutant("ledger_zeroing_unseen", "checker bookkeeping: a zeroing store is not seen, so a "
           "read of zeroes looks stale", ("issue10_p1_zeroed_buffer_reads_zero",),
           swaps=(Swap(PageLedger, "step", _wrong_step_without_zeroing),)),
    Mutant("vmm_pde_unmap_dropped", "VMM: a PSI whose walk finds a whole page directory not "
           "present sends no UNMAP (QEMU before 2018's 'send PSI always even if across PDEs')",
           ("issue11_shadow_unmap_whole_pde",),
           swaps=(Swap(vas, "not_present", _wrong_pde_not_present),)),
    Mutant("vmm_dsi_as_psi", "VMM: a domain-selective IOTLB invalidation handled as a "
           "page-selective one (one page at IOVA 0 synced, not the domain)",
           ("issue11_seed000_flush_all_shadow_linux61",),
           swaps=(Swap(handlers, "_iotlb_domain", _wrong_dsi_as_psi),)),
    Mutant("vmm_iova_tree_skips_changed", "VMM: the iova_tree skips a MAP whose range it "
           "holds although the translation changed (vtd_page_walk_one compares the range "
           "only)", ("issue11_shadow_remap_changed_translation",),
           swaps=(Swap(vas, "same_mapping", _wrong_same_range_is_same_mapping),)),
    Mutant("vmm_forwarded_flush_dropped", "VMM: the guest's PASID-IOTLB invalidation is not "
           "forwarded to the host's nested HWPT (iommufd cache invalidation dropped)",
           ("issue11_seed003_nested_strict",),
           swaps=(Swap(IommufdNested, "forward", _wrong_forward_dropped),)),
)


# -- running ------------------------------------------------------------------------------------
@dataclass
class Caught:
    mutant: Mutant
    by: str | None  # the scenario whose verdicts differ, None if none did
    seconds: float
    detail: str = ""


def unexpected(sc: Scenario, opts: Options) -> list[str]:
    """The verdicts of one scenario that differ from its expectation."""
    return run_scenario(sc, opts).unexpected


def clean_run(scenarios: list[Scenario], opts: Options) -> list[str]:
    """Every unexpected verdict of the unmutated library, as ``scenario: line``."""
    return [f"{sc.name}: {line}" for sc in scenarios for line in unexpected(sc, opts)]


def _ordered(scenarios: list[Scenario], first: tuple[str, ...]) -> list[Scenario]:
    rank = {name: i for i, name in enumerate(first)}
    return sorted(scenarios, key=lambda sc: rank.get(sc.name, len(rank)))


def hunt(mutant: Mutant, scenarios: list[Scenario], opts: Options) -> Caught:
    """Run the scenarios (expected catchers first) until one's verdicts differ."""
    start = time.perf_counter()
    with applied(mutant):
        for sc in _ordered(scenarios, mutant.catchers):
            lines = _unexpected_or_error(sc, opts)
            if lines:
                return Caught(mutant, sc.name, time.perf_counter() - start, lines[0])
    return Caught(mutant, None, time.perf_counter() - start)


def _unexpected_or_error(sc: Scenario, opts: Options) -> list[str]:
    """A mutant that makes the model refuse the run (a broken spec rule, a model error) is
    caught too: the protocol did something the hardware or the driver model rejects."""
    from vtdsim.errors import VtdsimError

    try:
        return unexpected(sc, opts)
    except VtdsimError as err:
        return [f"{type(err).__name__}: {err}"]


def table(results: list[Caught]) -> str:
    """mutant | bug | caught by, one row per mutant (times go to ``timing``)."""
    rows = [("mutant", "bug", "caught by")]
    rows += [(r.mutant.name, r.mutant.bug, r.by or "NOT CAUGHT") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(" | ".join([*(c.ljust(w) for c, w in zip(row[:2], widths, strict=True)),
                                  row[2]]).rstrip() for row in rows)


def timing(results: list[Caught]) -> str:
    """The marked section holding what differs between two runs: the seconds per mutant."""
    from vtdsim.checker.litmus_report import TIMING_MARK

    per = ", ".join(f"{r.mutant.name} {r.seconds:.1f}" for r in results)
    return f"{TIMING_MARK}\nseconds per mutant: {per}"


def as_json(results: list[Caught], flagged: list[str], scenarios: int) -> dict:
    return {
        "format": "vtdsim-mutants", "version": 1, "clean_run": {
            "scenarios": scenarios, "unexpected": flagged},
        "mutants": [{"name": r.mutant.name, "bug": r.mutant.bug, "caught_by": r.by,
                     "detail": r.detail} for r in results],
        "summary": {"caught": sum(r.by is not None for r in results), "total": len(results)},
        "timing": {r.mutant.name: round(r.seconds, 3) for r in results},
    }


def select(names: list[str] | None) -> list[Mutant]:
    if not names:
        return list(CATALOGUE)
    known = {m.name: m for m in CATALOGUE}
    missing = [n for n in names if n not in known]
    if missing:
        raise BadInput(f"no mutant {', '.join(missing)}; mutants: {', '.join(known)}")
    return [known[n] for n in names]


def load_all(paths: list[str | Path]) -> list[Scenario]:
    return [load(p) for p in collect(paths)]
