"""The cost of one strict DMA-API page map + unmap through the timed engine (nic-rx's ACK:
``DmaWorld.map_page``, one translated DMA, ``DmaWorld.unmap_page`` - dma-iommu, the page
table, ``cache_tag_flush_range``, ``qi_submit_sync`` and the unit's invalidation queue under
the SimPy clock), on the same 64 buffers over and over (so the queue's slots and the IOVAs
recycle, as in a long run).  ``us_per_pair``: wall time (moves with the machine's load);
``--instructions`` adds the deterministic figure, CPU instructions per pair under valgrind's
callgrind (the difference of runs of 200 and 1,200 pairs, string hashing pinned; about a
minute).  Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from simulate import instructions  # the callgrind count of a script (benchmarks/simulate.py)

PAIRS = """
import sys, time
from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode
from vtdsim.simulation.workloads.common import DmaWorld
n = int(sys.argv[1])
world = DmaWorld(Mode(policy="strict", ios=100), constants.load(), 2)
def pairs():
    for i in range(n):
        if i == n // 2:
            marks.append(time.perf_counter())
        addr = yield from world.map_page(0, 0x2_0000_0000 + (i % 64) * 4096, 4096)
        world.machine.translate(world.sid, addr, True)
        yield from world.unmap_page(0, addr, 4096)
marks = []
world.env.process(pairs())
world.env.run()
print((time.perf_counter() - marks[0]) / (n - n // 2) * 1e6)
"""
INSTRUCTION_PAIRS = (200, 1200)


def wall_us(pairs: int) -> float:
    """Wall microseconds per pair over the second half of a run (the first half warms up)."""
    done = subprocess.run([sys.executable, "-c", PAIRS, str(pairs)], capture_output=True,
                          text=True, check=True)
    return round(float(done.stdout.strip()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=4000, help="pairs timed by the wall clock")
    parser.add_argument("--instructions", action="store_true",
                        help="also count CPU instructions per pair (valgrind, ~1 minute)")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    result = {"pairs": args.pairs, "us_per_pair": wall_us(args.pairs),
              "load_average": round(os.getloadavg()[0], 2)}
    if args.instructions:
        low, high = INSTRUCTION_PAIRS
        result["instructions_per_pair"] = round(
            (instructions(high, PAIRS) - instructions(low, PAIRS)) / (high - low))
    print(f"{'measure':<34} value")
    print(f"{'wall us per map + DMA + unmap':<34} {result['us_per_pair']}")
    if "instructions_per_pair" in result:
        print(f"{'instructions per pair (callgrind)':<34} {result['instructions_per_pair']}")
    print(f"{'load average':<34} {result['load_average']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
