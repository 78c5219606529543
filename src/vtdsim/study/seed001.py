"""Seed 001: intel_context_flush_present's cache flushes inside or outside iommu->lock
(Lu Baolu / Kevin Tian, June 2024; shared/seeds/001_*.txt).

The lock's cost is derived from the constants table: the flushes the helper performs
(drivers/iommu/intel/pasid.c ``intel_context_flush_present``, v6.11: a context-cache
invalidation, then per DID found a PASID-cache and an IOTLB invalidation, each through
``qi_submit_sync``: descriptor + wait descriptor, a queue-tail write, the wait) are what moves
out of the critical section.

Not modelled: a timed workload that changes a present context entry while other CPUs take
iommu->lock (so no simulated contention); the device-TLB flush (no ATS here).
"""

from __future__ import annotations

from vtdsim.study.base import Claim, Context, Seed
from vtdsim.study.evidence import Figure, missing

DIDS = 1  # the litmus scenarios' flip finds one DID in the PASID table


def _submits(dids: int) -> int:
    return 1 + 2 * dids  # context-cache, then PASID-cache + IOTLB per DID


def _flush_ns(ctx: Context, trapped: bool) -> tuple[float, str]:
    """One ``qi_submit_sync``: the tail write (a VM exit when trapped) and two descriptors."""
    c = ctx.costs
    if trapped:
        return (c.constant("vmexit_user_cycles"),
                "vmexit_user_cycles (QEMU performs the queue inside the exit)")
    return (c.constant("mmio_write_ns") + 2 * c.constant("qi_descriptor_ns"),
            "mmio_write_ns + 2 x qi_descriptor_ns")


def figures(ctx: Context) -> list:
    out = []
    n = _submits(DIDS)
    for trapped, where in ((False, "bare metal"), (True, "a trapping vIOMMU")):
        each, formula = _flush_ns(ctx, trapped)
        detail = (f"{n} qi_submit_sync calls ({DIDS} DID) x ({formula}); constants: "
                  + ", ".join(ctx.costs.constant_source(name) for name in
                              (("vmexit_user_cycles",) if trapped
                               else ("mmio_write_ns", "qi_descriptor_ns"))))
        out.append(Figure(f"iommu->lock held for the flushes, patch as posted ({where})",
                          round(n * each, 1), "ns", "derived", detail, "before"))
        out.append(Figure(f"iommu->lock held for the flushes, flushes after the unlock "
                          f"({where})", 0.0, "ns", "derived",
                          "Kevin's proposal: only the PASID-table walk stays under the lock",
                          "after"))
    out.append(missing("contention on iommu->lock (other CPUs' wait)", "ns", "model run",
                       "no timed workload flips a present context entry",
                       "not modelled: no timed workload changes a present context entry"))
    return out


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
    published=(),
    conclusion=(
        "The evidence supports Kevin Tian: each of his four orders holds with the flushes "
        "outside the lock, as with the patch as posted. What keeps cases 3 and 4 safe is the "
        "order - the helper flushes the context cache before it walks the PASID table - not "
        "the lock; a teardown on either side of the walk flushes its own PASID, so case 2 only "
        "duplicates invalidations. Keeping the flushes inside the lock lengthens every other "
        "iommu->lock holder's wait by the flushes' time, which under a trapping vIOMMU is VM "
        "exits, not nanoseconds."),
    rests_on={name: "holds" for name in (
        "seed001_teardown_before_walk_locked", "seed001_teardown_after_walk_locked",
        "seed001_attach_before_walk_locked", "seed001_attach_after_walk_locked",
        "seed001_teardown_before_walk_unlocked", "seed001_teardown_after_walk_unlocked",
        "seed001_attach_before_walk_unlocked", "seed001_attach_after_walk_unlocked")},
    open_questions=(
        "Contention needs a timed workload that flips PRE while other CPUs map and attach; the "
        "scenarios leave ATS out (the device-TLB flush)."),
)
