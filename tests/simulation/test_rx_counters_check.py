"""nic-rx's per-4 KiB translation counters against hardware counters of a real receiver - a
check, not a fit: no constant was set from these figures.

Source: github.com/xlab-uiuc/Fast-and-Safe-IO-Memory-Protection (branch lock-contention,
October 2025, unpublished [WIP]; ../shared/reference/viommu-and-costs.md section 10.4),
``utils/reports/vary_cores_results.md``: Linux 6.12.9 host (strict) and guest (iommufd nested,
first stage over the host's second stage), an mlx5 VF, MTU 4000, RX ring 512, iperf, one flow
per core; the host IIO's IOMMU counters (pcm-iio's opCode file: IOTLB Miss, IOMMU Mem Access)
divided by 4 KiB of iperf goodput. 1 / 2 / 4 / 8 flows: IOTLB misses 0.96 / 1.19 / 1.18 / 1.17
per 4 KiB, memory accesses 2.01 / 2.46 / 2.46 / 2.41 per 4 KiB, i.e. 2.0-2.1 walk reads per
IOTLB miss. The model counts the same things: every translation request of the device's DMAs
through the host unit (data, ACKs) and every structure read of their walks, per 4 KiB of
received data.

Expected from the spec before the nested walk resumed from cached entries (written before
running it): a nested IOTLB miss whose 2 MiB region of IOVA space was walked before finds the
combined PDE-cache entry (spec 6.2.5.4: the host-physical address of the guest's FS page
table), so it reads 1 FS PTE; the PTE's output GPA is then translated by the second stage
resuming from the SS PDE- (4 KiB host pages) or PDPE-cache entry (2 MiB host pages) of that
GPA's region, 1 more read: 2 reads per miss in steady state, plus the first touches of a new
IOVA or GPA region (a full nested walk, once per region) - about 2.0-2.3 per miss."""

import pytest

from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate

READS_PER_MISS = (2.0, 2.1)
MISSES_PER_4K = (0.96, 1.19)


@pytest.fixture(scope="module")
def nested():
    mode = Mode(platform="nested", profile="linux-6.12", policy="strict", ios=3000)
    return simulate("nic-rx", mode, make_params("nic-rx", ring=512, mtu=4000),
                    constants.load())


def test_walk_reads_per_iotlb_miss_on_a_nested_receiver(nested):
    """Tolerance +-25% around 2.0-2.1: the guest's table depth (4 or 5 levels) and the host's
    page sizes are not given, and each changes the reads of a walk by at most one.  Before the
    nested walk resumed from combined and second-stage paging-structure entries (spec 6.2.5)
    the model read 9.0 per miss (4 FS entries + 5 SS walks); it reads 2.0 now."""
    per_miss = nested["translation_reads_per_4k"] / nested["iotlb_misses_per_4k"]
    assert 0.75 * READS_PER_MISS[0] <= per_miss <= 1.25 * READS_PER_MISS[1]


def test_iotlb_misses_per_4k_on_a_nested_receiver(nested):
    """Tolerance: within a factor of 2 of the 0.96-1.19 range (the NIC's own ring and
    completion DMAs, which the model does not issue, and the frame vs goodput denominator
    move it by less than that).  Expected before the run, from the mechanism: the pool's
    pages cycle through a 64-entry LRU IOTLB (``iotlb_entries``, set from pcie-bench's knee,
    not from this source), so every page misses once.  At MTU 1500 (two frames per page) that
    was 1.41 per 4 KiB of frames; the source ran MTU 4000 (README, "Checks against 10.4"),
    where a frame's stride spans two pages, and the model gives 1.07 - a figure first seen in
    the README's re-measurement, before this fixture took the source's MTU.  A weak check of
    the size: any IOTLB below the pool's pages gives the same; with the earlier 1,024 entries
    it was 0.04 (only the ACKs missed)."""
    assert MISSES_PER_4K[0] / 2 <= nested["iotlb_misses_per_4k"] <= 2 * MISSES_PER_4K[1]
