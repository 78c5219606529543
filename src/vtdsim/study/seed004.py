"""Seed 004: block no-snoop in the IOMMU (enforce_cache_coherency) vs a working WBINVD in the
guest (Jason Gunthorpe's series, acked by Robin Murphy, April 2022; shared/seeds/004_*.txt).

The working-WBINVD cost is derived from the constants table: the litmus scenarios show that a
no-snoop DMA needs a WBINVD before it (a dirty CPU line would be written back over the DMA's
data) and after it (the CPU would read its own stale line), and a guest's WBINVD is an exit
handled in KVM (``kvm_emulate_wbinvd`` once non-coherent DMA is registered).  Blocked no-snoop
adds nothing per I/O: the DMA is snooped, as every other DMA of the run.

Not modelled: the cost of the WBINVD's write-backs on other cores' caches and on the LLC's
later misses (one ``wbinvd_ns`` covers the instruction).
"""

from __future__ import annotations

from vtdsim.study.base import Claim, Context, Seed
from vtdsim.study.costs import Run
from vtdsim.study.evidence import Figure

BASE = Run("nvme", "server-sm", "mainline", "strict")
WBINVDS_PER_IO = 2  # before and after the no-snoop DMA (seed004 litmus scenarios)


def figures(ctx: Context) -> list:
    c = ctx.costs
    io = c.figure(BASE, "cpu_ns_per_io", "CPU time per I/O, snooped DMA (no-snoop blocked)",
                  "ns", "after")
    each = c.constant("wbinvd_ns") + c.constant("vmexit_kernel_cycles")
    extra = WBINVDS_PER_IO * each
    sources = "; ".join(c.constant_source(n) for n in ("wbinvd_ns", "vmexit_kernel_cycles"))
    out = [io, Figure("WBINVD cost per no-snoop I/O, working WBINVD in the guest",
                      round(extra, 1), "ns", "derived",
                      f"{WBINVDS_PER_IO} x (wbinvd_ns + vmexit_kernel_cycles); {sources}",
                      "before")]
    if io.value is not None:
        out.append(Figure("CPU time per I/O with a working WBINVD", round(io.value + extra, 1),
                          "ns", "derived", "the snooped run's cpu_ns_per_io + the WBINVD cost "
                          "above", "before"))
    return out


SEED = Seed(
    number="004",
    title="no-snoop and enforce_cache_coherency",
    thread="004_b152eea482b82b3d.txt",
    question="Should the IOMMU block no-snoop so that KVM may no-op WBINVD, rather than guests "
             "relying on a working WBINVD?",
    claims=(
        Claim("Jason Gunthorpe (cover letter)", "2022-04-07",
              "Without a working wbinvd there is no way to re-synchronize the CPU cache and "
              "the driver in the VM has data corruption."),
        Claim("Jason Gunthorpe (cover letter)", "2022-04-07",
              "This NOP's the optimization and allows KVM to to NOP the wbinvd without causing "
              "any data corruption."),
        Claim("Robin Murphy", "2022-04-07",
              "At a glance, this all looks about the right shape to me now, thanks!"),
    ),
    before=("seed004_no_enforce_wbinvd_noop", "seed004_no_enforce_dirty_line_written_back"),
    after=("seed004_enforce_ss_wbinvd_noop", "seed004_no_enforce_wbinvd_works"),
    recordings=(),
    figures=figures,
    published=(),
    conclusion=(
        "The evidence supports Jason Gunthorpe: without enforcement and with KVM's no-op "
        "WBINVD the guest reads stale data after a no-snoop DMA (observed); with no-snoop "
        "blocked in the IOMMU the same sequence is coherent with WBINVD a no-op. A working "
        "WBINVD is also correct, but only with a flush before the DMA as well as after, and "
        "each is a whole-cache write-back plus an exit - orders of magnitude above an I/O's "
        "CPU time, so blocking no-snoop is both the safe and the cheap default."),
    rests_on={"seed004_no_enforce_wbinvd_noop": "observed",
              "seed004_no_enforce_dirty_line_written_back": "violated",
              "seed004_enforce_ss_wbinvd_noop": "holds",
              "seed004_no_enforce_wbinvd_works": "holds"},
    open_questions=(
        "What no-snoop saves a device like i915 on bare metal is not priced; wbinvd_ns is a "
        "chosen order of magnitude, not a measurement."),
)
