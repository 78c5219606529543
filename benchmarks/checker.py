"""Checker benchmark: executions per second, and per litmus scenario the executions plain DFS and
DPOR need to exhaust it and DPOR's time.  Prints a table, then one JSON line with
``executions_per_s``, ``max_seed_scenario_s`` (the slowest DPOR exhaustion), ``dfs_executions``
and ``dpor_executions`` (totals over the library; a DFS cut by its time budget counts the
executions it reached, marked ``>=`` in the table and listed in ``dfs_cut``; a DPOR cut by its
budget is listed in ``dpor_cut``), ``two_unmaps_s`` (wall seconds for DPOR to exhaust issue
10's two racing strict unmaps, target < 60) and ``dask_speedup_2`` (a serial ``vtdsim check``
of the library over the same run on a 2-worker Dask LocalCluster, wall time, measured in this
run; the two reports are compared, and must not differ but for their timing section).  Beside
the speed-up it prints what judges it: both wall times, the cluster's start-up and tear-down
(measured apart), the ideal 2-worker makespan (longest-first over the serial run's per-file
times, plus that start-up), the CPU seconds of each run and the load average around them:
while other sessions keep the cores busy the wall ratio means nothing (Linux's autogroup gives
this session one share, whether it runs one process or three).

Usage: python benchmarks/checker.py [litmus folder or files] [--dfs-seconds S]
       [--dpor-seconds S] [--no-dask | --only-dask]

Not measured: memory, the cost of boot (once per scenario), shrinking.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from pathlib import Path

from vtdsim.checker.boot import build_model
from vtdsim.checker.explore import explore
from vtdsim.checker.litmus import Options, Progress, collect, run_library
from vtdsim.checker.litmus_report import TIMING_MARK
from vtdsim.checker.scenario import load
from vtdsim.simulation.cluster import client

ROOT = Path(__file__).resolve().parents[1]


TWO_UNMAPS = ROOT / "litmus" / "reach" / "issue10_p5_two_strict_unmaps_mainline.toml"


def measure(path: Path, dfs_seconds: float, dpor_seconds: float | None = None) -> dict:
    model = build_model(load(path))
    dpor = explore(model, "dpor", max_seconds=dpor_seconds)
    dfs = explore(model, "dfs", max_seconds=dfs_seconds)
    return {
        "scenario": model.name,
        "dpor_executions": dpor.executions,
        "dpor_s": dpor.seconds,
        "dpor_steps": dpor.steps,
        "dfs_executions": dfs.executions,
        "dfs_s": dfs.seconds,
        "dfs_exhaustive": dfs.exhaustive,
        "dpor_exhaustive": dpor.exhaustive,
        "agree": dfs.verdicts() == dpor.verdicts() if dfs.exhaustive else None,
    }


def two_unmaps_seconds() -> float:
    """Wall seconds for DPOR to exhaust the two racing strict unmaps (boot included)."""
    start = time.perf_counter()
    result = explore(build_model(load(TWO_UNMAPS)), "dpor")
    assert result.exhaustive
    return time.perf_counter() - start


def _untimed(echoed: list[str]) -> list[str]:
    """What ``run_library`` echoed, its timing section (one echo) left out."""
    return [text for text in echoed if not text.startswith(TIMING_MARK)]


class _PerFile(Progress):
    """Wall seconds of each scenario a run explores (exploration and shrinking)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._began = 0.0

    def start(self, name: str) -> None:
        super().start(name)
        self._began = time.perf_counter()

    def stop(self) -> None:
        self.seconds.append(time.perf_counter() - self._began)


def makespan(seconds: list[float], workers: int, longest_first: bool = True) -> float:
    """Greedy list scheduling of tasks lasting ``seconds`` on ``workers``: each to the first
    free worker, longest first (LPT, within 4/3 of the optimum) or in the order given."""
    loads = [0.0] * workers
    for task in sorted(seconds, reverse=True) if longest_first else seconds:
        loads[loads.index(min(loads))] += task
    return max(loads)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _cpu() -> float:
    """CPU seconds of this process and of its children that ended (the Dask workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _library(paths: list[str], opts: Options, progress: Progress | None = None
             ) -> tuple[float, float, list[str], float]:
    """One run of the library: (wall s, CPU s, its report without the timing section, load
    average before)."""
    lines: list[str] = []
    before, cpu = _load(), _cpu()
    start = time.perf_counter()
    run_library(paths, opts, lines.append, progress)
    return time.perf_counter() - start, _cpu() - cpu, _untimed(lines), before


def dask_speedup(paths: list[str], workers: int = 2) -> dict:
    """Serial wall time of the library over its wall time on a ``workers``-process
    LocalCluster (cluster start-up included); the two reports must agree."""
    timed = _PerFile()
    serial_s, serial_cpu, serial, serial_load = _library(paths, Options(), timed)
    began = time.perf_counter()
    with client(None, workers):
        pass
    cluster_s = time.perf_counter() - began
    dask_s, dask_cpu, dask, dask_load = _library(paths, Options(workers=workers))
    if serial != dask:
        diff = difflib.unified_diff("\n".join(serial).splitlines(),
                                    "\n".join(dask).splitlines(), "serial", "dask", lineterm="")
        raise SystemExit("the Dask report differs from the serial one:\n" + "\n".join(diff))
    ideal = makespan(timed.seconds, workers) + cluster_s
    return {"dask_speedup_2": round(serial_s / dask_s, 2), "dask_serial_s": round(serial_s, 2),
            "dask_s": round(dask_s, 2), "dask_cluster_s": round(cluster_s, 2),
            "dask_ideal_s": round(ideal, 2),
            "dask_file_order_s": round(makespan(timed.seconds, workers, False) + cluster_s, 2),
            "dask_ideal_speedup": round(serial_s / ideal, 2),
            "dask_serial_cpu_s": round(serial_cpu, 2), "dask_cpu_s": round(dask_cpu, 2),
            "dask_loadavg": [serial_load, dask_load, _load()]}


def _print_dask(d: dict) -> None:
    print(f"library serial {d['dask_serial_s']} s; on 2 Dask workers {d['dask_s']} s "
          f"({d['dask_speedup_2']}x); cluster start+stop {d['dask_cluster_s']} s; ideal "
          f"{d['dask_ideal_s']} s ({d['dask_ideal_speedup']}x: longest-first over the serial "
          f"per-file times + start-up; in file order {d['dask_file_order_s']} s); CPU s "
          f"serial {d['dask_serial_cpu_s']}, Dask {d['dask_cpu_s']} (client and workers); load "
          f"average before serial, before Dask, after: {d['dask_loadavg']}")


def exploration(paths: list[str], dfs_seconds: float, dpor_seconds: float) -> dict:
    """The per-scenario table, and the summary's keys but the Dask ones."""
    rows = [measure(p, dfs_seconds, dpor_seconds) for p in collect(paths)]
    print(f"{'scenario':<40} {'dfs exec':>10} {'dpor exec':>10} {'ratio':>7} {'dpor s':>7} "
          f"{'exec/s':>7}")
    for r in rows:
        mark = "" if r["dfs_exhaustive"] else ">="
        ratio = r["dfs_executions"] / max(r["dpor_executions"], 1)
        rate = r["dpor_executions"] / r["dpor_s"] if r["dpor_s"] else 0.0
        print(f"{r['scenario']:<40} {mark + str(r['dfs_executions']):>10} "
              f"{r['dpor_executions']:>10} {ratio:>7.1f} {r['dpor_s']:>7.2f} {rate:>7.0f}")
    executions = sum(r["dpor_executions"] + r["dfs_executions"] for r in rows)
    seconds = sum(r["dpor_s"] + r["dfs_s"] for r in rows)
    summary = {
        "executions_per_s": round(executions / seconds, 1) if seconds else 0.0,
        "max_seed_scenario_s": round(max((r["dpor_s"] for r in rows), default=0.0), 2),
        "dfs_executions": sum(r["dfs_executions"] for r in rows),
        "dpor_executions": sum(r["dpor_executions"] for r in rows),
        "dfs_cut": [r["scenario"] for r in rows if not r["dfs_exhaustive"]],
        "dpor_cut": [r["scenario"] for r in rows if not r["dpor_exhaustive"]],
        "verdicts_disagree": [r["scenario"] for r in rows if r["agree"] is False],
        "two_unmaps_s": round(two_unmaps_seconds(), 2),
    }
    print(f"two racing strict unmaps exhausted in {summary['two_unmaps_s']} s")
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(ROOT / "litmus")])
    parser.add_argument("--dfs-seconds", type=float, default=60.0)
    parser.add_argument("--dpor-seconds", type=float, default=600.0)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-dask", action="store_true", help="skip dask_speedup_2")
    which.add_argument("--only-dask", action="store_true", help="measure dask_speedup_2 only")
    args = parser.parse_args(argv)
    summary = {}
    if not args.only_dask:
        summary = exploration(args.paths, args.dfs_seconds, args.dpor_seconds)
    if not args.no_dask:
        summary.update(dask_speedup(args.paths))
        _print_dask(summary)
    print(json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
