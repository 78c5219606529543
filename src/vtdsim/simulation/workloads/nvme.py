"""NVMe I/O like fio (``nvme``): ``jobs`` threads, one core each, each keeping ``qd`` commands
in flight; a command maps its ``bs``-byte buffer with ``dma_map_sg`` (blk-mq ->
``nvme_map_data``: the buffer's 4 KiB pages, physically scattered - or contiguous within 2 MiB
pages with ``--iova-pages 2m``), the device serves it after its latency, moves the data at its
bandwidth through the unit (one translation per 4 KiB page), and the completion unmaps it.
``rw``: read/randread (device writes memory) or write/randwrite (device reads it); the device
latency is the read or the write one (the model has no sequential-vs-random difference in
the device).

Not modelled: the block layer's merging and plugging, polled completions, the device's
internal parallelism beyond one transfer at a time at ``nvme_gbps``, PRP list pages.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from vtdsim.errors import BadInput
from vtdsim.simulation.workloads.common import PAGE, DmaWorld

RW = ("read", "randread", "write", "randwrite")
HUGE = 2 << 20
JOB_SPAN = 1 << 34


@dataclass(frozen=True)
class NvmeParams:
    bs: int = 4096
    qd: int = 32
    jobs: int = 1
    rw: str = "randread"

    def check(self) -> None:
        if self.bs < 512 or self.bs % 512:
            raise BadInput(f"--bs {self.bs}: a positive multiple of 512 bytes")
        if self.qd < 1 or self.jobs < 1:
            raise BadInput("--qd and --jobs must be at least 1")
        if self.rw not in RW:
            raise BadInput(f"--rw {self.rw!r}: expected one of {', '.join(RW)}")

    @property
    def reads(self) -> bool:
        return self.rw.endswith("read")


class Nvme:
    def __init__(self, world: DmaWorld, p: NvmeParams, stop):
        p.check()
        self.world, self.p, self.stop = world, p, stop
        c = world.constants
        self.io_ns = c.ns("nvme_io_cycles")
        self.latency_ns = c.ns("nvme_read_latency_ns" if p.reads else "nvme_write_latency_ns")
        self.xfer_ns = p.bs * 8 / c["nvme_gbps"]
        self.dev_free = 0.0
        self.pages = -(-p.bs // PAGE)
        self.contiguous = world.mode.iova_pages == "2m"
        self.next_buf = [0] * p.jobs
        # 2*qd buffers a job, every other page (or whole hugepages): room for twice that
        need = 2 * p.qd * max(2 * self.pages * PAGE, 2 << 20 if self.contiguous else 0)
        self.bases = [world.region(job, p.jobs, JOB_SPAN, need) for job in range(p.jobs)]
        self.seq = 0
        self.warmup_ios = p.jobs * p.qd  # each queue turned over once

    def setup(self):
        return
        yield

    def start(self) -> None:
        for job in range(self.p.jobs):
            self.world.env.process(self.job(job))

    def _sg(self, job: int) -> list[tuple[int, int]]:
        """The next of the job's 2*qd buffers, as its scatterlist."""
        i = self.next_buf[job]
        self.next_buf[job] = (i + 1) % (2 * self.p.qd)
        base = self.bases[job]
        if self.contiguous:
            per_huge = max(1, HUGE // (self.pages * PAGE))
            start = base + (i // per_huge) * HUGE + (i % per_huge) * self.pages * PAGE
            return [(start, self.p.bs)]
        # Every other page: the buffer's pages are not physically adjacent.
        start = base + i * 2 * self.pages * PAGE
        return [(start + 2 * k * PAGE, min(PAGE, self.p.bs - k * PAGE))
                for k in range(self.pages)]

    def submit(self, job: int, inflight: list):
        world, env = self.world, self.world.env
        submitted = env.now
        yield env.timeout(self.io_ns / 2)
        sg = self._sg(job)
        addrs = yield from world.map_sg(job, sg)
        lengths = [length for _, length in sg]
        extra = sum(world.dma(a, n, self.p.reads) for a, n in zip(addrs, lengths, strict=True))
        world.m.penalty.add(extra)
        start = max(env.now + self.latency_ns, self.dev_free)
        self.dev_free = start + self.xfer_ns + extra / world.overlap(self.p.reads)
        self.seq += 1
        heapq.heappush(inflight, (start + self.xfer_ns + extra, self.seq, submitted, addrs,
                                  lengths))

    def job(self, job: int):
        env, world, m = self.world.env, self.world, self.world.m
        inflight: list = []
        start = env.now
        for _ in range(self.p.qd):
            yield from self.submit(job, inflight)
        m.cpu_busy_ns += env.now - start
        while True:
            ready, _, submitted, addrs, lengths = heapq.heappop(inflight)
            if ready > env.now:
                yield env.timeout(ready - env.now)
            start = env.now
            yield from world.unmap_sg(job, addrs, lengths)
            yield env.timeout(self.io_ns / 2)
            m.ios += 1
            m.latency.add(env.now - submitted)
            yield from self.submit(job, inflight)
            m.cpu_busy_ns += env.now - start
            self.stop.check()
