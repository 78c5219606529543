"""Seed 000: remove the caching-mode check before device-TLB flushes (Lu Baolu / Kevin Tian,
April 2024; shared/seeds/000_*.txt) - correctness on a conforming vIOMMU vs VM exits.

Not modelled: the guest's time per I/O on an emulated vIOMMU until the simulation layer
registers the ``emulated`` platform (marked in the report).
"""

from __future__ import annotations

from vtdsim.study.base import Claim, Context, Seed
from vtdsim.study.costs import Run

UNIT = "qemu72-legacy-cm-ats"  # QEMU's legacy unit with CM and a device-TLB (legacy-cm-ats)
BEFORE, AFTER = "linux-6.1", "mainline"


def _runs(platform: str) -> tuple[Run, Run]:
    return tuple(Run("nvme", UNIT, profile, "strict", platform, ats=True)
                 for profile in (BEFORE, AFTER))


def figures(ctx: Context) -> list:
    out = []
    for (run, side) in zip(_runs("bare"), ("before", "after"), strict=True):
        out += [ctx.costs.figure(run, "iqt_writes_per_io",
                                 f"{run.profile}: queue-tail writes per I/O (each a VM exit "
                                 "under a trapping vIOMMU)", "writes", side),
                ctx.costs.figure(run, "descriptors_per_io", f"{run.profile}: descriptors "
                                 "per I/O", "descriptors", side),
                ctx.costs.figure(run, "cpu_ns_per_io", f"{run.profile}: CPU time per I/O, "
                                 "bare-metal pricing", "ns", side)]
    for (run, side) in zip(_runs("emulated"), ("before", "after"), strict=True):
        out += [ctx.costs.figure(run, "exits_per_io", f"{run.profile}: VM exits per I/O on "
                                 "an emulated vIOMMU", "exits", side),
                ctx.costs.figure(run, "cpu_ns_per_io", f"{run.profile}: time per I/O on an "
                                 "emulated vIOMMU", "ns", side)]
    rec = ctx.recordings
    for name, side in (("legacy-cm-default", "no ATS"), ("legacy-cm-ats", "before"),
                       ("linux612-legacy-cm-ats", "after")):
        out += [rec.exits_per_pair(name, side), rec.exits_per_pair(name, side, "model")]
    return out


SEED = Seed(
    number="000",
    title="device-TLB flush under caching mode",
    thread="000_1d65c04e54ab0276.txt",
    question="Must the driver invalidate the device-TLB under caching mode, and at what cost in "
             "VM exits?",
    claims=(
        Claim("Lu Baolu (patch)", "2024-04-07",
              "The caching mode is unrelated to the device TLB , therefore there is no need to "
              "check it before a device TLB invalidation operation."),
        Claim("Kevin Tian", "2024-04-09",
              "Strictly speaking it's correct. but w/o supporting batch invalidation this "
              "implies performance drop on viommu due to more VM-exits and there may incur "
              "user complaints when their VMs upgrade to a newer kernel version."),
        Claim("Kevin Tian", "2024-04-09",
              "Anyway none of the viommu implementations today (either shadow or nested "
              "translation) relies on the correct devtlb behavior from the guest otherwise "
              "it's already broken."),
    ),
    before=("seed000_flush_all_devtlb_linux61", "seed000_unmap_devtlb_linux61",
            "issue11_seed000_flush_all_shadow_linux61", "issue11_seed000_flush_all_nested_linux61",
            "issue11_seed000_flush_all_emulated_ats_linux61"),
    after=("seed000_flush_all_devtlb_mainline",),
    recordings=("legacy-cm-default", "legacy-cm-ats", "linux612-legacy-cm-ats"),
    figures=figures,
    published=(),
    conclusion=(
        "Correctness supports Lu Baolu: on a vIOMMU that conforms to the spec (CM set, ATS "
        "device), 6.1's flush_iotlb_all skips the device-TLB, and a DMA through the stale "
        "device-TLB entry reaches a freed page; mainline's flush holds. 6.1's unmap path was "
        "never broken (its check is `!cm || !map`). Kevin's cost worry is answered by the "
        "batching he asked for: with cache tags the device-TLB invalidation rides in the same "
        "queue submission, so the guest writes the queue tail less often per map+unmap, not "
        "more - in the model runs and in the 6.1 vs 6.12 recordings alike. Kevin's second "
        "claim holds for the vIOMMUs he names: behind a shadowing vIOMMU (VFIO) the host's own "
        "strict unmap flushes the physical device-TLB, behind a nesting one (iommufd) the "
        "host expands the forwarded PASID-IOTLB flush to it, so 6.1's skipped flush loses "
        "nothing there; but a device QEMU emulates with an ATC (an emulated ATS endpoint; "
        "vhost with device-iotlb takes the same DEVIOTLB_UNMAP path) relies on the guest's "
        "device-TLB flush, and 6.1 leaves it stale."),
    rests_on={"seed000_flush_all_devtlb_linux61": "violated",
              "seed000_unmap_devtlb_linux61": "holds",
              "seed000_flush_all_devtlb_mainline": "holds",
              "issue11_seed000_flush_all_shadow_linux61": "holds",
              "issue11_seed000_flush_all_nested_linux61": "holds",
              "issue11_seed000_flush_all_emulated_ats_linux61": "violated"},
    open_questions=(
        "The guest's time per I/O on an emulated vIOMMU needs the simulator's vIOMMU platform; "
        "vhost's device IOTLB is checked only through the emulated ATS device that shares its "
        "notification path."),
)
