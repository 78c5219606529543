"""dma-window against pcie-bench's published DMA latency over a growing window.  One figure of
this data set a constant: the knee (flat to 256 KiB) gives ``iotlb_entries`` = 64 (its source
says so), so where the rise starts is not a check; how it rises beyond the reach and how much a
miss costs are (no constant was set from them).

Neugebauer et al., 'Understanding PCIe performance for end host networking' (SIGCOMM 2018);
raw data github.com/pcie-bench/data, NFP6000 on a Xeon E5-2630v4 (Broadwell), directory
``...-iommu-nosp`` (IOMMU on, 4 KiB IOMMU pages), ``lat_dma_sweep_rd_rnd_64.txt``, 64-byte
random reads, host-warm: mean latency 555 ns flat up to a 256 KiB window (no IOMMU: 557 ns at
every window), then 580 / 712 / 778 / 814 / 827 ns at 512 KiB / 1 / 2 / 4 / 8 MiB.  The rise
starts once the window leaves the IOTLB's reach, and at four times the last flat window
(1 MiB) the penalty is 60% of its value at sixteen times (4 MiB: 257 ns); measured from the
first window that rose (512 KiB) it is 82%."""

import pytest

from vtdsim.errors import BadInput
from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate

ENTRIES = 64  # the default since it was set from this data's knee; pinned here so the shape
# checks keep their windows if the default moves


def _penalty(table, window: int, iova_pages: str = "4k") -> float:
    """The penalty beyond an IOTLB hit's own (``iotlb_hit_ns``, a chosen 2 ns: pcie-bench's
    hits cost nothing measurable, 555 vs 557 ns), i.e. what the misses add."""
    result = simulate("dma-window", Mode(ios=3000, iova_pages=iova_pages),
                      make_params("dma-window", window=window), table)
    return result["dma_latency_penalty_ns"] - table["iotlb_hit_ns"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "small.toml"
    path.write_text(f"iotlb_entries = {ENTRIES}\n")
    return constants.load(path)


def test_penalty_is_flat_within_the_iotlb_reach_and_rises_beyond_it(table):
    reach = ENTRIES * 4096
    half, at, two, four, far = (_penalty(table, int(k * reach)) for k in (0.5, 1, 2, 4, 16))
    assert half <= 0.05 * far and at <= 0.05 * far  # published: flat to 256 KiB
    assert at < two < four < far
    assert 0.5 <= four / far <= 0.92  # published: 0.60 (from the last flat window) .. 0.82


def test_two_megabyte_pages_stay_flat_where_4k_pages_miss(table):
    """pcie-bench's superpage runs (``-iommu`` vs ``-iommu-nosp``) and Farshin et al. (2023):
    2 MiB IOMMU pages keep a window's translations in the IOTLB."""
    window = 16 * ENTRIES * 4096
    assert _penalty(table, window, "2m") < 0.05 * _penalty(table, window)


# -- magnitude -----------------------------------------------------------------------------------
# The same raw data, windows 4 and 8 MiB (16x and 32x the 64-entry reach, >93% of reads miss):
# 813.9 - 556.9 = 257 ns and 827.0 - 556.9 = 270 ns of penalty (HWarm; Cold: 257 / 275).  The
# price of one walk read, llc_read_ns, was derived from the four *other* Xeon E5 boxes of the
# same data set (data/constants.toml says how), taking their walks as snooped; this box was
# not used, so it checks the derivation.  The unit is the Xeon E5 v3/v4 one as Linux prints
# it; whether that box's walks snooped (ECAP.C) is not published, so both variants are run -
# without snooping each read goes to DRAM, 53 ns dearer.  Tolerance +-25%: the four other
# boxes spread from 216 to 283 ns at 8 MiB - a model of "such a unit" is right if it lands
# within that spread.
PUBLISHED = {4 << 20: 257.0, 8 << 20: 270.0}


def _xeon_penalty(table, unit: str, window: int) -> float:
    result = simulate("dma-window", Mode(ios=3000, unit=unit),
                      make_params("dma-window", window=window), table)
    return result["dma_latency_penalty_ns"]


@pytest.mark.parametrize("unit", ["xeon-e5v4", "xeon-e5v4-nc"])
def test_penalty_magnitude_matches_pcie_bench(table, unit):
    for window, published in PUBLISHED.items():
        assert _xeon_penalty(table, unit, window) == pytest.approx(published, rel=0.25)


def test_snooped_walks_pay_the_llc_for_each_read(table):
    """The two variants of the unit differ by ``dram_read_ns - llc_read_ns`` per walk read
    (pcie-bench's IOMMU-off Cold vs HWarm reads), times the share of reads that miss."""
    saving = table["dram_read_ns"] - table["llc_read_ns"]
    for window in PUBLISHED:
        nc, snooped = (_xeon_penalty(table, unit, window) for unit in ("xeon-e5v4-nc", "xeon-e5v4"))
        assert 0.9 * saving < nc - snooped <= saving


def test_published_penalty_lies_between_a_cached_pde_walk_and_a_full_walk(table, tmp_path):
    """The bracket the mechanism gives: a walk resuming at a cached PDE reads one PTE (the
    cheapest: from the LLC), a walk with no paging-structure cache reads all four levels (the
    dearest: from DRAM)."""
    path = tmp_path / "nopsc.toml"
    path.write_text(f"iotlb_entries = {ENTRIES}\npscache_entries = 0\n")
    full = constants.load(path)
    for window, published in PUBLISHED.items():
        assert _xeon_penalty(table, "xeon-e5v4", window) < published
        assert published < _xeon_penalty(full, "xeon-e5v4-nc", window)


# -- bandwidth -----------------------------------------------------------------------------------
# The same box's bandwidth tests (``bw_dma_win_sweep_{rd,wr}_rnd_64.txt``, 64-byte random DMA
# back to back, HWarm): 62.7 M reads/s at 256 KiB, 20.3 M/s at 8 MiB; 47.4 M writes/s and
# 22.4 M/s.  translation_parallelism_read/_write were derived from the four other boxes'
# bandwidth tests (data/constants.toml), not this one.  The device's own ceiling is an input
# of the setup, not of the check: ``pcie_gbps`` is set to the no-miss rate (x 64 bytes), so
# the check is how far the misses pull it down.
BANDWIDTH = {"read": (62.7e6, 20.3e6), "write": (47.4e6, 22.4e6)}  # flat, at 8 MiB


@pytest.mark.parametrize("rw", ["read", "write"])
@pytest.mark.parametrize("unit", ["xeon-e5v4", "xeon-e5v4-nc"])
def test_bandwidth_under_misses_matches_pcie_bench(tmp_path, unit, rw):
    flat, at_8m = BANDWIDTH[rw]
    path = tmp_path / "nfp.toml"
    path.write_text(f"iotlb_entries = {ENTRIES}\npcie_gbps = {flat * 64 * 8 / 1e9}\n")
    nfp = constants.load(path)

    def per_s(window: int) -> float:
        result = simulate("dma-window", Mode(ios=3000, unit=unit),
                          make_params("dma-window", window=window, test="bandwidth", rw=rw),
                          nfp)
        return result["gbps"] * 1e9 / (64 * 8)

    # within the reach only the hits' own iotlb_hit_ns over the overlap is added
    assert per_s(ENTRIES * 4096 // 4) == pytest.approx(flat, rel=0.02)
    assert per_s(8 << 20) == pytest.approx(at_8m, rel=0.25)


def test_an_unknown_test_is_a_one_line_error(table):
    """What a sweep spec may pass where the CLI's choice does not guard it."""
    with pytest.raises(BadInput, match="--test 'sideways'"):
        simulate("dma-window", Mode(ios=10), make_params("dma-window", test="sideways"), table)


@pytest.mark.parametrize("params, words", [({"rw": "write"}, "needs --test bandwidth"),
                                           ({"rw": "randwrite", "test": "bandwidth"}, "--rw")])
def test_a_write_needs_the_bandwidth_test(table, params, words):
    """pcie-bench times reads only: a posted write has no completion to time."""
    with pytest.raises(BadInput, match=words):
        simulate("dma-window", Mode(ios=10), make_params("dma-window", **params), table)


def test_writes_miss_as_reads_do_and_overlap_more(table):
    """Back-to-back writes translate like reads (the same misses over the window); the engine
    overlaps ``translation_parallelism_write`` of them instead of ``_read``, so the time each
    adds beyond its transfer shrinks by their ratio."""
    runs = {rw: simulate("dma-window", Mode(ios=2000),
                         make_params("dma-window", window=8 << 20, test="bandwidth", rw=rw),
                         table) for rw in ("read", "write")}
    assert runs["write"]["iotlb_miss_rate"] == pytest.approx(runs["read"]["iotlb_miss_rate"],
                                                             abs=0.02)
    transfer = 64 * 8 / table["pcie_gbps"]
    added = {rw: 64 * 8 / run["gbps"] - transfer for rw, run in runs.items()}
    assert added["write"] / added["read"] == pytest.approx(
        table["translation_parallelism_read"] / table["translation_parallelism_write"], rel=0.05)
