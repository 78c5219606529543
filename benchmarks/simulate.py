"""Simulated I/Os per wall second of the timed simulator on nic-rx, strict, bare metal, and
the peak RSS as the simulated duration grows (it must stay flat).

Each duration runs in its own process (so each peak RSS is that run's).  For scale, the same
strict I/O (dma_map_page, one translated DMA, dma_unmap_page) is also run through the model
with no clock at all (the direct executor, as `vtdsim demo` does): ``model_only_ios_per_s``
is the ceiling any timing layer over this model can reach.  Prints a table and, last, one
JSON object: ios_per_s (the best over the durations), peak_rss_mb (the largest), the
model-only figure, and every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, time
from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate
duration = float(sys.argv[1])
wall = time.perf_counter()
r = simulate("nic-rx", Mode(policy="strict", duration_ns=duration), make_params("nic-rx"),
             constants.load())
wall = time.perf_counter() - wall
print(json.dumps({"duration_ms": duration / 1e6, "ios": r["ios"], "wall_s": round(wall, 3),
                  "ios_per_s": round(r["ios"] / wall), "gbps": r["gbps"],
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 1024, 1)}))
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


def model_only() -> int:
    out = subprocess.run([sys.executable, "-c", MODEL_ONLY], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ios_per_s"]


def run(duration_ms: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(duration_ms * 1e6)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--durations-ms", default="5,10,20",
                        help="simulated durations, comma-separated")
    args = parser.parse_args()
    runs = [run(float(d)) for d in args.durations_ms.split(",")]
    ceiling = model_only()
    print(f"{'duration ms':>12} {'ios':>9} {'wall s':>8} {'ios/s':>9} {'Gbit/s':>8} {'RSS MB':>8}")
    for r in runs:
        print(f"{r['duration_ms']:>12} {r['ios']:>9} {r['wall_s']:>8} {r['ios_per_s']:>9} "
              f"{r['gbps']:>8} {r['peak_rss_mb']:>8}")
    print(f"the model alone (no clock, direct executor): {ceiling} strict I/Os per second")
    print(json.dumps({"ios_per_s": max(r["ios_per_s"] for r in runs),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                      "model_only_ios_per_s": ceiling, "target_ios_per_s": 250_000,
                      "runs": runs}))


if __name__ == "__main__":
    main()
