"""Simulated I/Os per wall second of the timed simulator on nic-rx, strict, bare metal, and
the peak RSS as the simulated duration grows (it must stay flat).

Each duration runs in its own process (so each peak RSS is that run's). ``ios_per_s`` is the
best run's measured I/Os over its whole ``simulate`` wall time - boot, ring set-up and the
warm-up included. The default durations are 50, 100 and 200 ms of simulated time: iperf
measures seconds of traffic (10 s by default), so a run worth reporting is tens of thousands of
packets at least, and at 100 Gbit/s 50-200 ms is 160k-640k of them; a 5-20 ms run would mostly
time the set-up instead (the pool's pages mapped one by one, their first walks). That set-up is
not hidden: ``setup_s`` is its wall time (boot, rings, warm-up: until the measured part began,
the run's own ``timing``), the least of the runs'. ``steady_ios_per_s`` leaves it out: the I/Os
the longest run made beyond the shortest, over the wall time it took beyond it
(``steady_ios_per_cpu_s``: over the CPU time). ``rss_growth_mb`` is the longest run's peak RSS
minus the shortest's (flat: near 0). For scale, the same strict I/O (dma_map_page, one
translated DMA, dma_unmap_page) is also run through the model with no clock at all (the direct
executor, as `vtdsim demo` does): ``model_only_ios_per_s``. Wall-clock figures move with the
machine's load (the table prints the load average); ``ios_per_cpu_s`` (the run's own CPU time)
moves less, as time-slicing does not count; ``--instructions`` adds a deterministic one, the
CPU instructions per measured I/O under valgrind's callgrind (the difference of two runs of
10,300 and 14,300 I/Os, so boot and warm-up cancel, and past the invalidation queue's first lap
- about 8,000 I/Os of strict ACKs, two descriptors each in 256 slots - where each wait slot's
steps are built once: the steady state the timed runs are made of), about two minutes.
``ios_per_s_iotlb_1024``: the longest run again with ``iotlb_entries = 1024``, the size the
model had before it was set from pcie-bench's knee to 64 (the pool's pages fitted it and only
the ACKs missed; with 64 every data page misses), so figures from before that change compare.
Prints a table and, last, one JSON object."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate
duration = float(sys.argv[1])
table = constants.load(sys.argv[2]) if len(sys.argv) > 2 else constants.load()
wall, cpu = time.perf_counter(), time.process_time()
r = simulate("nic-rx", Mode(policy="strict", duration_ns=duration), make_params("nic-rx"),
             table)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"duration_ms": duration / 1e6, "ios": r["ios"], "wall_s": round(wall, 3),
                  "ios_per_s": round(r["ios"] / wall), "cpu_s": round(cpu, 3),
                  "ios_per_cpu_s": round(r["ios"] / cpu), "gbps": r["gbps"],
                  "setup_s": r["timing"]["setup_s"],
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 1024, 1)}))
"""

# A fixed number of measured I/Os, for the instruction count.
BY_IOS = """
import sys
from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate
simulate("nic-rx", Mode(policy="strict", ios=int(sys.argv[1])), make_params("nic-rx"),
         constants.load())
"""

MODEL_ONLY = """
import json, time
from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_map_page, iommu_dma_unmap_page
from vtdsim.driver.iova import IovaDomain
from vtdsim.simulation.system import System
system = System.boot("server-sm", "mainline")
info = system.probe("03:00.0")
cookie = IommuDmaCookie(system.driver, system.attach(["03:00.0"]), IovaDomain(ncpus=2), ncpus=2)
n, wall = 5000, time.perf_counter()
for i in range(n):
    addr = system.run(iommu_dma_map_page(cookie, 0x1_0000_0000 + i * 4096, 4096))
    system.unit.translate(info.sid, addr, True)
    system.run(iommu_dma_unmap_page(cookie, addr, 4096))
    if i % 1024 == 0:
        system.take_submissions()
print(json.dumps({"ios_per_s": round(n / (time.perf_counter() - wall))}))
"""
INSTRUCTION_IOS = (10300, 14300)  # past the queue's first lap (docstring)


def model_only() -> int:
    out = subprocess.run([sys.executable, "-c", MODEL_ONLY], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ios_per_s"]


def run(duration_ms: float, *constants_file: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(duration_ms * 1e6), *constants_file],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_big_iotlb(duration_ms: float) -> dict:
    """One run with the IOTLB the model had before ``iotlb_entries`` was set from pcie-bench's
    knee (1,024 entries: the pool's pages fit, only the ACKs miss) - the same simulator on a
    lighter load, for comparison with earlier figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "iotlb1024.toml")
        with open(path, "w") as f:
            f.write("iotlb_entries = 1024\n")
        return run(duration_ms, path)


def instructions(ios: int, script: str = BY_IOS) -> int:
    """Instructions callgrind counts for a whole run of ``script`` (by default ``ios`` measured
    I/Os; string hashing pinned, so a dict's order - and the count - is the same each time)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
             sys.executable, "-c", script, str(ios)],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or not found:
        raise SystemExit(f"callgrind failed: {done.stderr.strip().splitlines()[-1:]}")
    return int(found.group(1))


def instructions_per_io() -> int:
    low, high = INSTRUCTION_IOS
    return round((instructions(high) - instructions(low)) / (high - low))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--durations-ms", default="50,100,200",
                        help="simulated durations, comma-separated")
    parser.add_argument("--instructions", action="store_true",
                        help="also count CPU instructions per I/O (valgrind, ~2 minutes)")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    runs = [run(float(d)) for d in args.durations_ms.split(",")]
    ceiling = model_only()
    big = run_big_iotlb(max(float(d) for d in args.durations_ms.split(",")))
    print(f"{'duration ms':>12} {'ios':>9} {'wall s':>8} {'ios/s':>9} {'CPU s':>8} "
          f"{'ios/CPU s':>10} {'Gbit/s':>8} {'RSS MB':>8}")
    for r in runs:
        print(f"{r['duration_ms']:>12} {r['ios']:>9} {r['wall_s']:>8} {r['ios_per_s']:>9} "
              f"{r['cpu_s']:>8} {r['ios_per_cpu_s']:>10} {r['gbps']:>8} {r['peak_rss_mb']:>8}")
    print(f"the model alone (no clock, direct executor): {ceiling} strict I/Os per second")
    print(f"with a 1,024-entry IOTLB ({big['duration_ms']} ms; only the ACKs miss): "
          f"{big['ios_per_s']} I/Os per second, {big['ios_per_cpu_s']} per CPU-second")
    short, long = min(runs, key=lambda r: r["duration_ms"]), max(runs,
                                                                 key=lambda r: r["duration_ms"])
    extra_wall = long["wall_s"] - short["wall_s"]
    steady = round((long["ios"] - short["ios"]) / extra_wall) if extra_wall > 0 else None
    result = {"ios_per_s": max(r["ios_per_s"] for r in runs),
              "ios_per_cpu_s": max(r["ios_per_cpu_s"] for r in runs),
              "steady_ios_per_s": steady,
              "steady_ios_per_cpu_s": (round((long["ios"] - short["ios"])
                                             / (long["cpu_s"] - short["cpu_s"]))
                                       if long["cpu_s"] > short["cpu_s"] else None),
              "setup_s": min(r["setup_s"] for r in runs),
              "load_average": round(os.getloadavg()[0], 2),
              "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
              "rss_growth_mb": round(long["peak_rss_mb"] - short["peak_rss_mb"], 1),
              "model_only_ios_per_s": ceiling, "ios_per_s_iotlb_1024": big["ios_per_s"],
              "ios_per_cpu_s_iotlb_1024": big["ios_per_cpu_s"], "target_ios_per_s": 250_000,
              "runs": runs}
    print(f"steady state ({short['duration_ms']} -> {long['duration_ms']} ms): "
          f"{result['steady_ios_per_s']} I/Os per second ({result['steady_ios_per_cpu_s']} per "
          f"CPU-second); set-up (boot, rings, warm-up) "
          f"{result['setup_s']} s; peak RSS grew {result['rss_growth_mb']} MB; load average "
          f"{result['load_average']}")
    if args.instructions:
        result["instructions_per_io"] = instructions_per_io()
        print(f"CPU instructions per measured I/O (callgrind): {result['instructions_per_io']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
