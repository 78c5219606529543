"""Random DMA over a mapped window, like pcie-bench's latency and bandwidth tests
(``dma-window``): the window is mapped once (``--iova-pages 4k``: physically scattered 4 KiB
pages through ``dma_map_sg``; ``2m``: a 2 MiB-aligned contiguous buffer through
``dma_map_page``, which the IOMMU core maps with 2 MiB pages), then the device reads
``transfer`` bytes at random ``transfer``-aligned offsets (``--rw write``: writes them, in the
bandwidth test). ``--test latency`` (the default): one at a time (pcie-bench's latency test has
one read in flight and times its completion). ``--test bandwidth``: back to back (pcie-bench's
bandwidth test keeps the device's DMA engine busy), each one occupying the engine for its
transfer at ``pcie_gbps`` plus its translation over ``translation_parallelism_read`` (or
``_write``: pcie-bench's data show writes overlapping more), as a NIC's engine does
(nic.NicRx.wire) - so ``gbps`` is the window's throughput. The penalty is each read's latency
minus the same read with no IOMMU (``dma_latency_penalty_ns``, its mean).

What a read pays for its translation: without ATS the unit translates the read request where
it arrives, in the root complex, so the completion waits for the translation but no extra
PCIe crossing is added (with ``--ats`` a miss is a Translation Request round trip instead).
An IOTLB hit costs ``iotlb_hit_ns``.  A miss walks from the deepest paging-structure-cache
entry that covers the address (spec 6.2.4; a cached PDE leaves the PTE, one read) - one
dependent read per level below it, each waiting for the last - and each read costs what
``common.walk_read_key`` says: an LLC read when the unit's walks snoop, a DRAM read when not.

Not modelled: host cache effects on the data itself; the device's own limits in the
bandwidth test beyond its link rate (``pcie_gbps``: set it to a device's measured no-miss rate
to compare with that device).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vtdsim.errors import BadInput
from vtdsim.simulation.workloads.common import PAGE, DmaWorld

HUGE = 2 << 20


@dataclass(frozen=True)
class WindowParams:
    transfer: int = 64
    window: int = 8 << 20
    test: str = "latency"  # or "bandwidth"
    rw: str = "read"  # or "write" (bandwidth only)

    def check(self) -> None:
        if self.test not in ("latency", "bandwidth"):
            raise BadInput(f"--test {self.test!r}: latency or bandwidth")
        if self.rw not in ("read", "write"):
            raise BadInput(f"--rw {self.rw!r}: read or write")
        if self.rw == "write" and self.test == "latency":
            # A posted write has no completion to time (pcie-bench times reads only).
            raise BadInput("--rw write has no completion to time: it needs --test bandwidth")
        if self.transfer < 1 or self.window < self.transfer:
            raise BadInput("--transfer must be at least 1 and at most --window")
        if self.window % PAGE:
            raise BadInput(f"--window {self.window}: a multiple of 4096")
        if self.window > 1 << 32:
            raise BadInput(f"--window {self.window}: at most 4 GiB")


class DmaWindow:
    def __init__(self, world: DmaWorld, p: WindowParams, stop):
        p.check()
        if world.mode.iova_pages == "2m" and p.window % HUGE:
            raise BadInput(f"--window {p.window}: a multiple of 2 MiB with --iova-pages 2m")
        self.world, self.p, self.stop = world, p, stop
        self.rng = random.Random(world.mode.seed)
        self.base = 0
        self.slots = p.window // p.transfer
        # Twice the IOTLB's entries: random reads have filled it by then, so the figures are
        # the steady state of the window, not the cold start.
        self.warmup_ios = 2 * int(world.constants["iotlb_entries"])

    def setup(self):
        world = self.world
        data = world.region(0, 1, 2 * self.p.window, 2 * self.p.window)
        if world.mode.iova_pages == "2m":
            self.base = yield from world.map_page(0, data, self.p.window)
            return
        sg = [(data + 2 * k * PAGE, PAGE) for k in range(self.p.window // PAGE)]
        addrs = yield from world.map_sg(0, sg)
        self.base = addrs[0]

    def start(self) -> None:
        self.world.env.process(self.device())

    def device(self):
        env, world, m, p = self.world.env, self.world, self.world.m, self.p
        transfer = world.transfer_ns(p.transfer)
        fixed = world.base_dma_ns + transfer
        back_to_back, write = p.test == "bandwidth", p.rw == "write"
        while True:
            addr = self.base + self.rng.randrange(self.slots) * p.transfer
            extra = world.dma(addr, p.transfer, write)
            m.penalty.add(extra)
            m.latency.add(fixed + extra)
            m.ios += 1
            # bandwidth: the engine takes the next read once this one's transfer and its
            # share of the translation are done; latency: once this one has completed.
            yield env.timeout(transfer + extra / world.overlap(write) if back_to_back
                              else fixed + extra)
            self.stop.check()
