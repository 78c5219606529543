"""What one IOTLB miss costs a device's DMA in the timed model (dma-window): the number of
dependent walk reads follows the paging-structure caches, and each read's price follows
whether the unit's walks snoop the CPU caches (ECAP.C / SMPWC) - mechanism tests, no
published figure involved."""

import pytest

from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate

ENTRIES = 64
WINDOW = 16 * ENTRIES * 4096  # far beyond the IOTLB's reach: most reads miss


def _run(table, unit: str) -> dict:
    return simulate("dma-window", Mode(ios=1500, unit=unit),
                    make_params("dma-window", window=WINDOW), table)


def _table(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(f"iotlb_entries = {ENTRIES}\n{text}")
    return constants.load(path)


def _per_miss(result: dict, key: str) -> float:
    return result[key] / result["iotlb_misses_per_4k"]


@pytest.mark.parametrize("unit, read", [("xeon-e5v4", "llc_read_ns"),
                                        ("xeon-e5v4-nc", "dram_read_ns"),
                                        ("server-sm", "llc_read_ns")])
def test_a_miss_with_a_cached_pde_is_one_read_priced_by_walk_coherency(tmp_path, unit, read):
    table = _table(tmp_path, "")
    result = _run(table, unit)
    assert _per_miss(result, "translation_reads_per_4k") == pytest.approx(1.0, abs=0.01)
    miss_rate = result["iotlb_miss_rate"]
    expected = table["iotlb_hit_ns"] + miss_rate * table[read]
    assert result["dma_latency_penalty_ns"] == pytest.approx(expected, rel=0.02)


def test_without_paging_structure_caches_a_miss_walks_every_level(tmp_path):
    """A 4-level table (the Xeon unit's only SAGAW) and no cached non-leaf entry: the walk
    reads the PML4E, PDPE, PDE and PTE, one after the other."""
    table = _table(tmp_path, "pscache_entries = 0\n")
    result = _run(table, "xeon-e5v4-nc")
    assert _per_miss(result, "translation_reads_per_4k") == pytest.approx(4.0, abs=0.01)
    expected = table["iotlb_hit_ns"] + result["iotlb_miss_rate"] * 4 * table["dram_read_ns"]
    assert result["dma_latency_penalty_ns"] == pytest.approx(expected, rel=0.02)
