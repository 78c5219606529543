"""Checker benchmark: executions per second, and per litmus scenario the executions plain DFS and
DPOR need to exhaust it and DPOR's time.  Prints a table, then one JSON line with
``executions_per_s``, ``max_seed_scenario_s`` (the slowest DPOR exhaustion), ``dfs_executions``
and ``dpor_executions`` (totals over the library; a DFS cut by its time budget counts the
executions it reached, marked ``>=`` in the table and listed in ``dfs_cut``).

Usage: python benchmarks/checker.py [litmus folder or files] [--dfs-seconds S]

Not measured: memory, the cost of boot (once per scenario), shrinking.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vtdsim.checker.boot import build_model
from vtdsim.checker.explore import explore
from vtdsim.checker.litmus import collect
from vtdsim.checker.scenario import load

ROOT = Path(__file__).resolve().parents[1]


def measure(path: Path, dfs_seconds: float) -> dict:
    model = build_model(load(path))
    dpor = explore(model, "dpor")
    dfs = explore(model, "dfs", max_seconds=dfs_seconds)
    return {
        "scenario": model.name,
        "dpor_executions": dpor.executions,
        "dpor_s": dpor.seconds,
        "dpor_steps": dpor.steps,
        "dfs_executions": dfs.executions,
        "dfs_s": dfs.seconds,
        "dfs_exhaustive": dfs.exhaustive,
        "agree": dfs.verdicts() == dpor.verdicts() if dfs.exhaustive else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(ROOT / "litmus")])
    parser.add_argument("--dfs-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    rows = [measure(p, args.dfs_seconds) for p in collect(args.paths)]
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
        "verdicts_disagree": [r["scenario"] for r in rows if r["agree"] is False],
    }
    print(json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
