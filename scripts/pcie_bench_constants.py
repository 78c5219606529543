"""Recompute the walk constants that come from pcie-bench's raw data (Neugebauer et al.,
SIGCOMM 2018; a clone of github.com/pcie-bench/data is the argument): ``llc_read_ns`` and
``translation_parallelism_read`` / ``_write`` of src/vtdsim/data/constants.toml, from the
IOMMU-on runs of the four Xeon E5 boxes other than the E5-2630v4 (whose runs the tests check,
so it is printed but not used).

Per box, from its 64-byte random DMA tests with the host's caches warm (HWarm):
- the miss latency: the mean read latency at an 8 MiB window minus at 64 KiB
  (``lat_dma_sweep_rd_rnd_64.csv``); 97% of the reads miss a 64-entry IOTLB at 8 MiB and each
  miss reads one PTE (the PDE is cached), so ``llc_read_ns`` = the boxes' median / (1 - 64/2048);
- the overlap P: back to back (``bw_dma_win_sweep_{rd,wr}_rnd_64.csv``) each transaction at
  8 MiB takes longer than at 256 KiB (within the IOTLB's reach) by the miss share times the
  miss latency over P; the miss share cancels: P = the latency difference / the difference of
  the time per transaction.  The constants are the medians over the four boxes.

Prints a table and, last, one JSON object.  Not computed here: ``dram_read_ns`` (the
constant's source says how), the unit's reach (``iotlb_entries``, read off the knee).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

BOXES = {  # the data set's directory of each box's IOMMU-on runs (no superpages where run)
    "E5-2620v3": "nfp6000-1.2GHz_hsw-Xeon-E5-2620v3_dell-t630-iommu-nosp",
    "E5-2637v3": "nfp6000-1.2GHz_hsw-Xeon-E5-2637v3_supermicro-iommu-nosp",
    "E5-2620v2": "nfp6000-1.2GHz_ib-Xeon-E5-2620v2_dell-t620-s0-s0-s0-iommu-nosp",
    "E5-2630": "nfp6000-1.2GHz_snb-Xeon-E5-2630_dell-t620-iommu",  # Sandy Bridge: only this
}
CHECKED = {"E5-2630v4": "nfp6000-1.2GHz_bdw-Xeon-E5-2630v4-dell-t430-s0-s0-s0-iommu-nosp"}
MISSING_SHARE = 1 - 64 / 2048  # reads missing a 64-entry IOTLB over 2,048 pages (8 MiB)
KIB = 1024


class DataError(Exception):
    """A file of the data set is missing or not what pcie-bench writes."""


def _row(path: Path, window: int, value: str) -> float:
    """Column ``value`` of the HWarm row at ``window`` bytes in pcie-bench's CSV ``path``."""
    try:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row["Cache"] == "HWarm" and int(float(row["WinSZ"])) == window:
                    return float(row[value])
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    except (KeyError, ValueError) as err:
        raise DataError(f"{path}: not a pcie-bench CSV ({err})") from None
    raise DataError(f"{path}: no HWarm row at a {window}-byte window")


def box_figures(box: Path) -> dict[str, float]:
    """One box's miss latency (ns) and overlap of reads and of writes."""
    lat = box / "lat_dma_sweep_rd_rnd_64.csv"
    miss = _row(lat, 8192 * KIB, "Avg(ns)") - _row(lat, 64 * KIB, "Avg(ns)")
    out = {"miss_ns": miss}
    for rw in ("rd", "wr"):
        bw = box / f"bw_dma_win_sweep_{rw}_rnd_64.csv"
        slower = 1 / _row(bw, 8192 * KIB, "Trans/s") - 1 / _row(bw, 256 * KIB, "Trans/s")
        out[f"overlap_{rw}"] = miss * 1e-9 / slower
    return out


def derive(data: Path) -> dict:
    used = {name: box_figures(data / d) for name, d in BOXES.items()}
    checked = {name: box_figures(data / d) for name, d in CHECKED.items()}

    def median(key: str) -> float:
        return statistics.median(f[key] for f in used.values())

    return {
        "boxes": used, "checked_only": checked,
        "llc_read_ns": median("miss_ns") / MISSING_SHARE,
        "translation_parallelism_read": median("overlap_rd"),
        "translation_parallelism_write": median("overlap_wr"),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pcie_bench_constants.py DATA (a clone of github.com/pcie-bench/data)",
              file=sys.stderr)
        return 2
    try:
        result = derive(Path(argv[0]))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{'box':<12}{'miss ns':>9}{'P reads':>9}{'P writes':>10}")
    for name, f in {**result["boxes"], **result["checked_only"]}.items():
        note = "  (checked, not used)" if name in CHECKED else ""
        print(f"{name:<12}{f['miss_ns']:>9.1f}{f['overlap_rd']:>9.2f}{f['overlap_wr']:>10.2f}{note}")
    for key in ("llc_read_ns", "translation_parallelism_read", "translation_parallelism_write"):
        print(f"{key} = {result[key]:.2f}")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
