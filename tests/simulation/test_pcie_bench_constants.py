"""scripts/pcie_bench_constants.py, the derivation of the walk constants from pcie-bench's raw
data, on a data set built here with known answers (the real one is not bundled)."""

from __future__ import annotations

from pathlib import Path

import pytest

import script_module

pbc = script_module.load("pcie_bench_constants")

FLAT = {"rd": 60e6, "wr": 45e6}  # transactions/s within the IOTLB's reach


def _write_box(box: Path, miss_ns: float, overlap: dict[str, float]) -> None:
    """A box whose 8 MiB reads are ``miss_ns`` slower and whose back-to-back transactions
    there lose ``miss_ns / overlap`` each; other cache states and windows as distractors."""
    box.mkdir(parents=True)
    rows = ["Test,PAT,Cache,HO,DO,WinSZ,SZ,Avg(ns)"]
    for cache, extra in (("Cold", 999.0), ("HWarm", 0.0)):
        rows += [f"LAT_DMA_RD,Rand,{cache},0,0,65536,64,{500 + extra}",
                 f"LAT_DMA_RD,Rand,{cache},0,0,{8 << 20},64,{500 + miss_ns + extra}"]
    (box / "lat_dma_sweep_rd_rnd_64.csv").write_text("\n".join(rows) + "\n")
    for rw, p in overlap.items():
        slow = 1 / (1 / FLAT[rw] + miss_ns * 1e-9 / p)
        rows = ["Test,PAT,Cache,HO,DO,WinSZ,SZ,Trans/s",
                f"BW,Rand,Cold,0,0,262144,64,{FLAT[rw] / 2}",
                f"BW,Rand,HWarm,0,0,262144.0,64,{FLAT[rw]}",
                f"BW,Rand,HWarm,0,0,{8 << 20},64,{slow}"]
        (box / f"bw_dma_win_sweep_{rw}_rnd_64.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def data(tmp_path):
    figures = [(200.0, 6.0, 9.0), (240.0, 7.0, 10.0), (260.0, 8.0, 12.0), (300.0, 3.0, 3.0)]
    for directory, (miss, rd, wr) in zip(pbc.BOXES.values(), figures, strict=True):
        _write_box(tmp_path / directory, miss, {"rd": rd, "wr": wr})
    for directory in pbc.CHECKED.values():  # must not move the medians
        _write_box(tmp_path / directory, 5000.0, {"rd": 100.0, "wr": 100.0})
    return tmp_path


def test_medians_of_the_four_boxes(data):
    result = pbc.derive(data)
    assert result["llc_read_ns"] == pytest.approx(250.0 / (1 - 64 / 2048))
    assert result["translation_parallelism_read"] == pytest.approx(6.5)
    assert result["translation_parallelism_write"] == pytest.approx(9.5)
    assert result["checked_only"]["E5-2630v4"]["overlap_rd"] == pytest.approx(100.0)


def test_a_missing_file_is_a_one_line_error(data, capsys):
    (data / pbc.BOXES["E5-2630"] / "bw_dma_win_sweep_wr_rnd_64.csv").unlink()
    assert pbc.main([str(data)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bw_dma_win_sweep_wr_rnd_64.csv: cannot read" in err


def test_a_file_without_the_row_names_it(data, capsys):
    lat = data / pbc.BOXES["E5-2620v3"] / "lat_dma_sweep_rd_rnd_64.csv"
    lat.write_text("Test,Cache\nLAT,HWarm\n")
    assert pbc.main([str(data)]) == 1
    assert "lat_dma_sweep_rd_rnd_64.csv: not a pcie-bench CSV" in capsys.readouterr().err
