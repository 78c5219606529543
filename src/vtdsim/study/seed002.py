"""Seed 002: iotlb_sync_map as a hint set at attach, cache-tag order, RWBF (Jason Gunthorpe /
Lu Baolu, July 2025; shared/seeds/002_*.txt).

The map path's cost with and without the cache-tag walk: mainline's map on a unit that needs
no map-time flush (``server-sm``: CM=0, no RWBF, so ``iotlb_sync_map`` is clear and
``cache_tag_flush_range_np`` is skipped) vs a caching-mode unit (the flag set: the walk runs
and flushes the map's IOVA).

Not modelled: the CPU time of a tag walk that finds nothing to flush (the timed model prices
only what the walk submits).
"""

from __future__ import annotations

from vtdsim.study.base import Claim, Context, Seed
from vtdsim.study.costs import Run

WITHOUT = Run("nvme", "server-sm", "mainline", "strict")
WITH = Run("nvme", "qemu100-legacy-cm", "mainline", "strict")


def figures(ctx: Context) -> list:
    out = []
    for run, side, what in ((WITHOUT, "flag clear", "no walk (flag clear, CM=0)"),
                            (WITH, "flag set", "the walk and its flush (CM=1)")):
        out += [ctx.costs.figure(run, "map_ns", f"map time, {what}", "ns", side),
                ctx.costs.figure(run, "iqt_writes_per_io", f"queue-tail writes per I/O, "
                                 f"{what}", "writes", side)]
    return out


SEED = Seed(
    number="002",
    title="iotlb_sync_map, cache-tag order, RWBF",
    thread="002_033614f7fff87df2.txt",
    question="Is a per-domain iotlb_sync_map flag set at attach safe, and must the cache tags "
             "(and an RWBF flush) come before the context entry?",
    claims=(
        Claim("Jason Gunthorpe", "2025-07-16",
              "Any change to how invalidation works has to be done before attaching the HW so "
              "that the required invalidations are already happening before the HW can walk "
              "the page table."),
        Claim("Jason Gunthorpe", "2025-07-16",
              "Finally, if the HW needs RWBF then this also needs to do the buffer flush in "
              "this thread before installing the context to prevent a race."),
        Claim("Lu Baolu", "2025-07-16",
              "domain->iotlb_sync_map does not change the driver's behavior. It simply "
              "indicates that there's no need to waste time calling "
              "cache_tag_flush_range_np(), as it's just a no-op."),
        Claim("Lu Baolu", "2025-07-16",
              "RWBF is only required on some early implementations where memory coherence was "
              "not yet implemented by the VT-d engine."),
    ),
    before=("seed002_dynamic_sync_map_cm", "seed002_static_tags_after_context_cm",
            "seed002_rwbf_tags_after_context", "seed002_rwbf_flush_before_context"),
    after=("seed002_static_tags_before_context_cm", "seed002_rwbf_tags_before_context"),
    recordings=(),
    figures=figures,
    published=(),
    conclusion=(
        "Both are partly right: the flag is harmless where Lu Baolu says, but Jason "
        "Gunthorpe's order (tags and flag before the context entry) is what closes every race. "
        "Lu Baolu is right for the patch as posted: there the tags are "
        "assigned after the context too, so in the race window the tag walk would have "
        "flushed nothing either - the race is the tags' order, and it exists with or without "
        "the flag. Jason Gunthorpe is right on the order: with the tags (and the flag) set "
        "before the context entry every scenario holds; a flag or tags set after it leave a "
        "racing map's negative IOTLB entry (CM) or posted PTE (RWBF) in place. His extra "
        "write-buffer flush before the context is not what closes the RWBF race - the tag "
        "order is. The flag saves the walk only on units that need no map-time flush."),
    rests_on={"seed002_dynamic_sync_map_cm": "violated",
              "seed002_static_tags_after_context_cm": "violated",
              "seed002_rwbf_tags_after_context": "violated",
              "seed002_rwbf_flush_before_context": "violated",
              "seed002_static_tags_before_context_cm": "holds",
              "seed002_rwbf_tags_before_context": "holds"},
    open_questions=(
        "Mainline's RID attach still assigns the tags after programming the context; the CPU "
        "cost of an empty tag walk is not priced by the model."),
)
