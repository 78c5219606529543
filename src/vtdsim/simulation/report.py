"""How a timed result is shown: a rich table for people, one JSON object (sorted keys, the
wall-clock ``timing`` kept apart so the rest is byte-identical for one seed), a CSV row with a
header, a plot (matplotlib, SVG or PNG by the file's suffix).

Not modelled: plots of several runs (a sweep's job).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from vtdsim.errors import BadInput

HEADLINE = ("gbps", "iops", "ios", "dropped", "cpu_ns_per_io", "map_ns", "unmap_ns",
            "iqt_writes_per_io", "exits_per_io", "vmm_ns_per_io", "descriptors_per_io",
            "iotlb_misses_per_4k",
            "iotlb_miss_rate",
            "translation_reads_per_4k", "latency_ns_p50", "latency_ns_p99",
            "dma_latency_penalty_ns")
# the per-level PSC misses, lock waits, and context-flush's iommu->lock figures
LOCK_PREFIXES = ("pscache", "lock_wait", "flip_", "contender_", "iommu_lock", "affected")
PLOT_KEYS = ("cpu_ns_per_io", "map_ns", "unmap_ns", "dma_latency_penalty_ns")


def flat(result: dict) -> dict:
    """Nested figures (per-level PSC misses, lock waits) as ``outer.inner`` columns; the
    timing stays out."""
    out = {}
    for key, value in result.items():
        if key == "timing":
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def to_json(result: dict) -> str:
    return json.dumps(result, sort_keys=True)


def to_csv(results: list[dict]) -> str:
    rows = [flat(r) for r in results]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def table(result: dict):
    from rich.table import Table

    title = (f"{result['workload']} - policy {result['policy']} ({result['domain_type']}), "
             f"{result['profile']}, {result['platform']}, unit {result['unit']}, "
             f"seed {result['seed']}")
    t = Table(title=title)
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = flat(result)
    for key in HEADLINE:
        if key in rows:
            t.add_row(key, f"{rows[key]:,}" if isinstance(rows[key], int | float) else
                      str(rows[key]))
    for key in sorted(k for k in rows if k.startswith(LOCK_PREFIXES)):
        t.add_row(key, f"{rows[key]:,}")
    t.add_row("simulated time (ns)", f"{result['sim_ns']:,}")
    if "timing" in result:
        t.add_row("wall time (s)", str(result["timing"]["wall_s"]))
    return t


def print_table(result: dict) -> None:
    from rich.console import Console

    Console(width=100).print(table(result))


def pyplot(path: str):
    """matplotlib's pyplot on the file-only backend, once ``path`` is known to be SVG/PNG."""
    if Path(path).suffix.lower() not in (".svg", ".png"):
        raise BadInput(f"--plot {path}: the file must end in .svg or .png")
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "vtdsim"  # clip-path ids from a fixed salt
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str) -> None:
    """Write and close ``fig``; an SVG carries no date, so one seed gives one file."""
    svg = Path(path).suffix.lower() == ".svg"
    fig.savefig(path, metadata={"Date": None} if svg else None)
    fig.clf()


def plot(result: dict, path: str) -> None:
    plt = pyplot(path)
    rate = ("iops", result["iops"]) if "iops" in result else ("gbps", result["gbps"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar([rate[0]], [rate[1]], color="tab:blue")
    left.set_title("throughput")
    right.bar(PLOT_KEYS, [result[k] for k in PLOT_KEYS], color="tab:orange")
    right.set_ylabel("ns")
    right.set_title("per I/O")
    right.tick_params(axis="x", labelrotation=20)
    fig.suptitle(f"{result['workload']} {result['policy']} {result['platform']}")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
