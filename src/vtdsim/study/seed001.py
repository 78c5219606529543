"""Seed 001: intel_context_flush_present's cache flushes inside or outside iommu->lock
(Lu Baolu / Kevin Tian, June 2024; shared/seeds/001_*.txt).

The lock's cost comes from the timed workload ``context-flush`` (simulation/workloads/
context_flush.py): one CPU changes a present scalable-mode context entry (``context_flip_pri``,
v6.11-v6.12: device-selective context cache, then per present PASID entry a PASID-cache DSI and
an IOTLB DSI, then the device-TLB, each a ``qi_submit_sync``) with the invalidations inside the
lock (the patch) or after it (Kevin Tian's walk-then-flush), while two CPUs attach other
devices (``domain_attach_iommu``/``domain_detach_iommu`` and the RID_PASID entry's set-up and
teardown take iommu->lock; map/unmap never do).  Measured: the hold per critical section, the
attaching CPUs' wait per acquisition, their throughput, for 1, 5 and 17 DIDs.

Not modelled: a trapping vIOMMU in scalable mode (its figure is derived from the constants:
one VM exit per ``qi_submit_sync``); Linux's walk over every PASID up to max_pasid (the model
walks installed PASID-table pages: both variants' holds are lower bounds).
"""

from __future__ import annotations

from vtdsim.study.base import Claim, Context, Seed
from vtdsim.study.costs import Run
from vtdsim.study.evidence import Figure

UNIT = "server-sm"  # scalable mode with PASIDs: what context_flip_pri's walk needs
PASIDS = (0, 4, 16)  # PASIDs besides RID_PASID, a domain each: 1, 5 and 17 DIDs flushed
HEADLINE = 4
CONTENDERS = 2
FLIPS = 60  # PRI changes per run: the holds' p99 is over these; the waits over many more
SIDES = (("inside", "before"), ("outside", "after"))


def _run(flush: str, pasids: int) -> Run:
    params = (("contend", "attach"), ("contenders", CONTENDERS), ("flush", flush),
              ("pasids", pasids))
    return Run("context-flush", UNIT, "mainline", "strict", "bare", params=params, ios=FLIPS)


def _dids(pasids: int) -> str:
    n = pasids + 1
    return f"{n} DID" + ("s" if n > 1 else "")


def hold_label(flush: str, pasids: int, stat: str = "mean") -> str:
    return f"{flush}, {_dids(pasids)}: each iommu->lock hold of the PRI change ({stat})"


def wait_label(flush: str, stat: str = "mean") -> str:
    return (f"{flush}, {_dids(HEADLINE)}: each iommu->lock wait of the {CONTENDERS} attaching "
            f"CPUs ({stat})")


def rate_label(flush: str) -> str:
    return f"{flush}, {_dids(HEADLINE)}: attaches completed by the {CONTENDERS} attaching CPUs"


def _measured(ctx: Context) -> list[Figure]:
    out = []
    for flush, side in SIDES:
        run = _run(flush, HEADLINE)
        out += [ctx.costs.figure(run, "flip_hold_ns_mean", hold_label(flush, HEADLINE), "ns",
                                 side),
                ctx.costs.figure(run, "flip_hold_ns_p99", hold_label(flush, HEADLINE, "p99"),
                                 "ns", side),
                ctx.costs.figure(run, "contender_wait_ns_mean", wait_label(flush), "ns", side),
                ctx.costs.figure(run, "contender_wait_ns_p99", wait_label(flush, "p99"), "ns",
                                 side),
                ctx.costs.figure(run, "contender_ops_per_s", rate_label(flush), "attaches/s",
                                 side)]
    for pasids in PASIDS:
        if pasids != HEADLINE:
            out += [ctx.costs.figure(_run(flush, pasids), "flip_hold_ns_mean",
                                     hold_label(flush, pasids), "ns", side)
                    for flush, side in SIDES]
    return out


def _trapped(ctx: Context) -> list[Figure]:
    """Under a trapping vIOMMU each ``qi_submit_sync`` is a VM exit: the flushes the patch
    keeps inside the lock, priced from the constants (the model's emulated unit is legacy)."""
    submits = 1 + 2 * (HEADLINE + 1) + 1  # context cache, PASID cache + IOTLB per DID, devTLB
    exit_ns = ctx.costs.constant("vmexit_user_cycles")
    detail = (f"{submits} qi_submit_sync calls ({_dids(HEADLINE)}, ATS) x vmexit_user_cycles "
              f"(QEMU performs the queue inside the exit); "
              f"{ctx.costs.constant_source('vmexit_user_cycles')}")
    return [Figure(f"inside, {_dids(HEADLINE)}: iommu->lock held per PRI change for the "
                   "flushes, under a trapping vIOMMU", round(submits * exit_ns, 1), "ns",
                   "derived", detail, "before"),
            Figure(f"outside, {_dids(HEADLINE)}: iommu->lock held per PRI change for the "
                   "flushes, under a trapping vIOMMU", 0.0, "ns", "derived",
                   "Kevin's proposal: only the PRE write and the PASID-table walk stay under "
                   "the lock", "after")]


def figures(ctx: Context) -> list:
    return _measured(ctx) + _trapped(ctx)


def disagrees(figures: list[Figure]) -> str:
    """What in the measured figures would contradict the conclusion: the hold inside not above
    the hold outside, not growing with the DIDs, the attaching CPUs not waiting longer or not
    completing fewer attaches with the flushes inside."""
    value = {f.label: f.value for f in figures}
    wanted = [hold_label(flush, n) for n in PASIDS for flush, _ in SIDES]
    wanted += [wait_label(flush) for flush, _ in SIDES] + [rate_label(f) for f, _ in SIDES]
    absent = [label for label in wanted if value.get(label) is None]
    if absent:
        return "not measured: " + "; ".join(absent)
    problems = [f"{hold_label('inside', n)} is not above {hold_label('outside', n)}"
                for n in PASIDS if value[hold_label("inside", n)]
                <= value[hold_label("outside", n)]]
    holds = [value[hold_label("inside", n)] for n in PASIDS]
    if holds != sorted(holds) or len(set(holds)) != len(holds):
        problems.append("the hold inside does not grow with the DIDs flushed")
    if value[wait_label("inside")] <= value[wait_label("outside")]:
        problems.append("the attaching CPUs do not wait longer with the flushes inside")
    if value[rate_label("inside")] >= value[rate_label("outside")]:
        problems.append("the attaching CPUs do not complete fewer attaches with the flushes "
                        "inside")
    return "; ".join(problems)


SEED = Seed(
    number="001",
    title="context-change flush inside or outside iommu->lock",
    thread="001_6f85f3162cfe5709.txt",
    question="Must the cache flushes after a present context entry changes run under "
             "iommu->lock, with no PASID entry changing meanwhile?",
    claims=(
        Claim("Kevin Tian", "2024-06-27",
              "this change moves the entire cache invalidation flow inside iommu->lock. Though "
              "the directly-affected operations are not in critical path the indirect impact "
              "applies to all other paths acquiring iommu->lock given it'll be held "
              "unnecessarily longer after this change."),
        Claim("Lu Baolu", "2024-06-27",
              "The basic schematic here is that once a present context table entry is being "
              "changed, all PASID entries should not be altered until all the related caches "
              "have been flushed."),
        Claim("Kevin Tian", "2024-06-28",
              "4) new pasid attach after locked walk is always safe as related cache will only "
              "be associated with the new context entry."),
    ),
    before=("seed001_teardown_before_walk_locked", "seed001_teardown_after_walk_locked",
            "seed001_attach_before_walk_locked", "seed001_attach_after_walk_locked"),
    after=("seed001_teardown_before_walk_unlocked", "seed001_teardown_after_walk_unlocked",
           "seed001_attach_before_walk_unlocked", "seed001_attach_after_walk_unlocked"),
    recordings=(),
    figures=figures,
    disagrees=disagrees,
    published=(),
    conclusion=(
        "The evidence supports Kevin Tian: each of his four orders holds with the flushes "
        "outside the lock, as with the patch as posted. What keeps cases 3 and 4 safe is the "
        "order - the helper flushes the context cache before it walks the PASID table - not "
        "the lock; a teardown on either side of the walk flushes its own PASID, so case 2 only "
        "duplicates invalidations. The timed model prices what the lock costs: with the "
        "flushes inside, iommu->lock is held for the whole invalidation sequence, a hold that "
        "grows with the DIDs the device's PASIDs use, and CPUs attaching other devices behind "
        "the same unit wait for it and complete fewer attaches; with the flushes outside, the "
        "hold is only the PRE write and the PASID-table walk. The paths that pay are those "
        "taking iommu->lock - domain_attach_iommu/domain_detach_iommu, intel_pasid_setup_* and "
        "intel_pasid_tear_down_entry, the context set-up and teardown - not map/unmap, which "
        "never take it; under a trapping vIOMMU each flush inside the lock is a VM exit."),
    rests_on={name: "holds" for name in (
        "seed001_teardown_before_walk_locked", "seed001_teardown_after_walk_locked",
        "seed001_attach_before_walk_locked", "seed001_attach_after_walk_locked",
        "seed001_teardown_before_walk_unlocked", "seed001_teardown_after_walk_unlocked",
        "seed001_attach_before_walk_unlocked", "seed001_attach_after_walk_unlocked")},
    open_questions=(
        "The timed runs are a stress bound (the PRI change back to back, the attaching CPUs "
        "pausing 2 us on average); PRI changes happen at IOPF enable/disable in Linux. "
        "Linux v6.11's walk visits every PASID up to max_pasid, allocating absent PASID "
        "tables, under the lock in both variants; the model walks installed tables only. A "
        "trapping vIOMMU in scalable mode is derived, not simulated. Later Linux (6.12.118 as "
        "Debian ships it) dropped the PASID walk: context_flip_pri flushes only the context "
        "cache and the device-TLB, still under iommu->lock. The scenarios leave ATS out."),
)
