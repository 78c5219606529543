"""NIC receive and transmit like iperf (``nic-rx``, ``nic-tx``): one flow per core, a ring of
descriptors per flow, the wire at line rate, the NIC's DMA engine translating every 4 KiB page
it touches through the unit, and the driver mapping and unmapping buffers through the DMA API
(Linux drivers/net: a receive buffer is unmapped once its packets are taken and a fresh one is
mapped to refill the ring; a sent packet is mapped at xmit and unmapped at completion).

Receive (``--rx-buffers map``; the default ``page-pool`` is ``nic_pool.PoolRx``, which reuses
this module's wire): ``pages_per_desc`` 1 is one buffer per packet
(``ceil((mtu + headroom) / 4 KiB)`` pages, one ``dma_map_page``); above 1 it is an mlx5
striding receive queue: a descriptor of N pages, each mapped on its own, holding
``N * 4096 // stride`` packets, stride the power of two that fits MTU plus headroom.
``--iova-pages 2m``: buffers are carved from 2 MiB pages that a page pool mapped once
(``page_pool`` with PP_FLAG_DMA_MAP on hugepages), so no per-packet map or unmap, and 2 MiB
IOTLB entries.  A packet is dropped when the flow's ring has no posted
descriptor or the NIC's DMA engine lags the wire by more than its buffer (``nic_buffer_bytes``;
the engine overlaps ``translation_parallelism_write`` translations - ``_read`` when it sends -
so a translation's latency occupies it for that fraction while the packet completes after all
of it); the flow's core takes completed packets in order, paying ``rx_packet_cycles`` each.  An
I/O is one packet; throughput counts MTU bytes delivered (Ethernet framing - 38 bytes - occupies the
wire but is not counted).

Not modelled: TCP's reaction to drops (the offered load stays at line rate), GRO/LRO merging
in this per-packet path (the page-pool path merges GRO segments), RSS hashing (packets go to
flows round-robin), interrupt moderation, transmit from premapped pages (nic-tx maps every
packet).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from math import inf

from vtdsim.errors import BadInput
from vtdsim.simulation.workloads.common import PAGE, DmaWorld, Mode

FRAMING = 38  # preamble + SFD 8, header 14, FCS 4, inter-frame gap 12
HEADROOM = 320  # NET_SKB_PAD + skb_shared_info, roughly: what a receive buffer adds to MTU
HUGE = 2 << 20
FLOW_SPAN = 1 << 34  # each flow's buffers in their own physical region


RX_BUFFERS = ("page-pool", "map")


@dataclass(frozen=True)
class NicParams:
    flows: int = 1
    ring: int = 1024  # mlx5: MLX5E_PARAMS_DEFAULT_LOG_RQ_SIZE 0xa -> 1024 MTU frames
    mtu: int = 1500
    pages_per_desc: int = 1
    link_gbps: float = 100.0
    rx_buffers: str = "page-pool"  # nic-rx: a page_pool (mlx5 and most drivers) or map/packet
    pool_size: int = 0  # page-pool: ptr_ring entries; 0 = the ring's pages, as mlx5 sizes it

    def check(self) -> None:
        for name in ("flows", "ring", "mtu", "pages_per_desc"):
            if getattr(self, name) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be at least 1")
        if self.rx_buffers not in RX_BUFFERS:
            raise BadInput(f"--rx-buffers {self.rx_buffers!r}: expected one of "
                           f"{', '.join(RX_BUFFERS)}")
        if self.pool_size < 0:
            raise BadInput("--pool-size must be 0 (the ring's pages) or positive")
        if self.link_gbps <= 0:
            raise BadInput("--link-gbps must be positive")
        if self.mtu > 9216:
            raise BadInput(f"--mtu {self.mtu}: above the 9216-byte jumbo frame")

    @property
    def stride(self) -> int:
        return 1 << (self.mtu + HEADROOM - 1).bit_length()

    @property
    def desc_pages(self) -> int:
        return max(self.pages_per_desc, -(-(self.mtu + HEADROOM) // PAGE))

    @property
    def packets_per_desc(self) -> int:
        if self.pages_per_desc == 1:
            return 1
        return max(1, self.desc_pages * PAGE // self.stride)

    @property
    def wire_ns(self) -> float:
        return (self.mtu + FRAMING) * 8 / self.link_gbps


class Descriptor:
    """A posted receive descriptor: its mapped pieces and how many packets it took."""

    __slots__ = ("pieces", "phys", "used")

    def __init__(self, pieces: list[tuple[int, int]], phys: list[int]):
        self.pieces, self.phys, self.used = pieces, phys, 0


class Buffers:
    """One flow's data pages: fresh 4 KiB buffers in turn (4k), or slices of 2 MiB pages a
    page pool mapped once (2m)."""

    def __init__(self, world: DmaWorld, flow: int, nbytes: int, count: int, flows: int):
        self.world, self.flow, self.nbytes = world, flow, nbytes
        need = -(-count // max(1, HUGE // nbytes)) * HUGE  # whole hugepages, for 2m
        self.base = world.region(flow, flows, FLOW_SPAN, need)
        self.count, self.next = count, 0
        self.huge: list[int] = []  # DMA address of each premapped 2 MiB page

    def premap(self):
        """2m: map the pool's hugepages once (the page pool's own dma_map_page)."""
        per_huge = HUGE // self.nbytes
        for i in range(-(-self.count // per_huge)):
            addr = yield from self.world.map_page(self.flow, self.base + i * HUGE, HUGE)
            self.huge.append(addr)

    def take(self) -> tuple[int, int | None]:
        """(physical address, premapped DMA address or None) of the next buffer."""
        i = self.next
        self.next = (i + 1) % self.count
        if not self.huge:
            return self.base + i * self.nbytes, None
        per_huge = HUGE // self.nbytes
        off = (i % per_huge) * self.nbytes
        return self.base + (i // per_huge) * HUGE + off, self.huge[i // per_huge] + off


class RxFlow:
    """A flow's ring (posted descriptors), its completions and its core."""

    contiguous = True  # a packet is one DMA of MTU bytes at its address (``NicRx.wire``)

    def __init__(self, world: DmaWorld, p: NicParams, index: int, premapped: bool):
        self.world, self.p, self.index = world, p, index
        nbytes = p.desc_pages * PAGE
        self.buffers = Buffers(world, index, nbytes, 4 * p.ring, p.flows)
        self.premapped = premapped
        self.posted: deque[Descriptor] = deque()
        self.ready = self.posted  # a packet has a slot while one is posted (``NicRx.wire``)
        self.done: deque[tuple[float, float, Descriptor | None]] = deque()
        self.completed = 0.0  # when the last completion was posted (NicRx.wire)
        self.wake = None  # the core sleeps on it while no packet is complete
        self.refilled = None  # the wire sleeps on it while the ring is empty

    def refill(self):
        p, world, cpu = self.p, self.world, self.index
        phys, premapped = self.buffers.take()
        if premapped is not None:
            self._post(Descriptor([(premapped, p.desc_pages * PAGE)], [phys]))
            return
        if p.pages_per_desc == 1:
            size = p.desc_pages * PAGE
            addr = yield from world.map_page(cpu, phys, size)
            self._post(Descriptor([(addr, size)], [phys]))
            return
        pieces = []
        for k in range(p.desc_pages):
            addr = yield from world.map_page(cpu, phys + k * PAGE, PAGE)
            pieces.append((addr, PAGE))
        self._post(Descriptor(pieces, [phys]))

    def _post(self, desc: Descriptor) -> None:
        self.posted.append(desc)
        if self.refilled is not None:
            self.refilled.succeed()
            self.refilled = None

    def available(self) -> bool:
        return bool(self.posted)

    def dma(self, addr: int, desc) -> float:
        """The NIC writes one packet at ``addr``; the translation latency beyond the DMA."""
        return self.world.dma(addr, self.p.mtu, True)

    def packet_addr(self) -> tuple[int, Descriptor | None]:
        """The DMA address of the next packet slot; the descriptor if this fills it."""
        desc = self.posted[0]
        slot = desc.used
        desc.used += 1
        if self.p.packets_per_desc == 1:
            addr = desc.pieces[0][0]
        else:
            offset = slot * self.p.stride
            addr = desc.pieces[offset // PAGE][0] + offset % PAGE
        if desc.used < self.p.packets_per_desc:
            return addr, None
        self.posted.popleft()
        return addr, desc

    def release(self, desc: Descriptor):
        if self.premapped:
            return
        for addr, size in desc.pieces:
            yield from self.world.unmap_page(self.index, addr, size)


class NicRx:
    lookahead = True  # handle arrivals without an event each where nobody can tell (wire)

    def __init__(self, world: DmaWorld, p: NicParams, stop):
        self.world, self.p, self.stop = world, p, stop
        c = world.constants
        self.rx_ns = c.ns("rx_packet_cycles")
        self.lag_ns = c["nic_buffer_bytes"] * 8 / p.link_gbps
        premapped = world.mode.iova_pages == "2m"
        self.flows = [RxFlow(world, p, f, premapped) for f in range(p.flows)]
        self.warmup_ios = p.flows * p.ring * p.packets_per_desc  # each ring refilled once

    def setup(self):
        for flow in self.flows:
            if flow.premapped:
                yield from flow.buffers.premap()
            for _ in range(self.p.ring):
                yield from flow.refill()

    def start(self) -> None:
        env = self.world.env
        self.engine_free = 0.0
        self.xfer_ns = self.world.transfer_ns(self.p.mtu)
        self.parallelism = self.world.overlap(True)  # the NIC writes received frames
        for flow in self.flows:
            env.process(self.wire(flow))
            env.process(self.core(flow))

    def wire(self, flow: RxFlow):
        """The flow's share of the wire: every ``flows``-th packet (round-robin), at line
        rate.  While the ring is empty every arriving packet is dropped: the process sleeps
        until a refill and counts the packets that arrived meanwhile.  An arriving packet is
        dropped while the DMA engine lags the wire by more than its buffer, else written
        through the unit and queued for the core - its completion posted once its DMA is
        done, and no earlier than the frame's before it (a completion queue is in order; the
        core takes them in order), so NAPI takes a ready prefix.

        Lookahead: arrivals that no other actor can tell apart from being handled at their
        own instant are handled without a SimPy event each, with results bit for bit those
        of one timeout per packet.  The arrival at ``t`` may be handled at ``clock``, before
        its time, when no event is scheduled at or before ``t`` (``horizon``: so no other
        process runs in between, and same-time ties keep SimPy's order - the wire's timeout
        is scheduled before any event it would have been scheduled after), the flow's core
        is not asleep on it (a wake-up happens at its own time: only the first arrival of a
        run may wake it, so no arrival after it schedules an event and ``horizon`` holds),
        the ring has a descriptor, and the timeout taken at ``clock`` lands exactly where
        one taken at ``t`` would (``clock + after == t + gap`` in floating point)."""
        world, p = self.world, self.p
        env, m, lag, xfer = world.env, world.m, self.lag_ns, self.xfer_ns
        gap, parallelism, lookahead = p.wire_ns * p.flows, self.parallelism, self.lookahead
        # What one arrival uses, bound once: a frame in one piece is one device write of MTU
        # bytes (DmaWorld.page_dma: ``settle`` at the end of each run, before other processes
        # run); the ring has a frame while ``ready`` is not empty (``available``).
        dma, settle = world.page_dma(p.mtu, True) if flow.contiguous else (None, None)
        packet_addr, done, ready = flow.packet_addr, flow.done.append, flow.ready
        yield env.timeout(flow.index * p.wire_ns)
        while True:
            now = env.now
            if not flow.available():
                flow.refilled = env.event()
                yield flow.refilled
                missed = -(-(env.now - now) // gap)  # arrivals in [now, refill)
                m.dropped += int(missed)
                yield env.timeout(now + missed * gap - env.now)
                continue
            # Per run of arrivals (no other process runs until the timeout): the measure's
            # histogram (start_measuring replaces it), the engine's and the drops' counts.
            # The core asleep on the flow (``wake``) makes the run its first arrival alone,
            # which wakes it if delivered (the next arrival may, if dropped): so no arrival of
            # the run schedules an event, and ``horizon`` - the next event, the run's bound -
            # is taken once, before it (-inf: no lookahead, one arrival per run).
            clock, delay, wake = now, gap, flow.wake
            horizon = env.peek() if lookahead and wake is None else -inf
            penalty, engine_free, dropped = m.penalty.add, self.engine_free, 0
            completed = flow.completed
            while True:
                if engine_free - now > lag:
                    dropped += 1
                else:
                    addr, desc = packet_addr()
                    extra = dma(addr) if dma is not None else flow.dma(addr, desc)
                    penalty(extra)
                    # the engine starts it at max(now, engine_free), then transfers it
                    start = (engine_free if engine_free > now else now) + xfer
                    engine_free = start + extra / parallelism
                    end = start + extra
                    if end > completed:  # else it completes once the frame before it has
                        completed = end
                    done((completed, now, desc))
                    if wake is not None:  # this arrival wakes the core
                        wake.succeed()
                        flow.wake = None
                if not ready:
                    break
                t = now + gap
                following = t + gap  # the arrival after t: where its timeout must land
                after = following - clock
                if horizon <= t or clock + after != following:
                    break
                now, delay = t, after
            self.engine_free, flow.completed = engine_free, completed
            m.dropped += dropped
            if settle is not None:
                settle()
            yield env.timeout(delay)

    def wait_done(self, flow):
        """Sleep until the flow's oldest completion is ready (its DMA finished)."""
        env = self.world.env
        if not flow.done:
            flow.wake = env.event()
            yield flow.wake
        ready = flow.done[0][0]
        if ready > env.now:
            yield env.timeout(ready - env.now)

    def core(self, flow: RxFlow):
        env, m = self.world.env, self.world.m
        while True:
            yield from self.wait_done(flow)
            _ready, arrival, desc = flow.done.popleft()
            start = env.now
            yield env.timeout(self.rx_ns)
            m.ios += 1
            m.latency.add(env.now - arrival)
            if desc is not None:
                yield from flow.release(desc)
                yield from flow.refill()
            m.cpu_busy_ns += env.now - start
            self.stop.check()


class NicTx:
    """Each flow's core maps and posts packets while its ring has room and unmaps what the
    NIC completed; the NIC sends the posted packets in order at line rate, reading each
    through the unit."""

    def __init__(self, world: DmaWorld, p: NicParams, stop):
        if world.mode.iova_pages != "4k":
            raise BadInput("nic-tx maps every packet with dma_map_single: --iova-pages 2m "
                           "(premapped page pools) applies to nic-rx")
        self.world, self.p, self.stop = world, p, stop
        self.tx_ns = world.constants.ns("tx_packet_cycles")
        self.size = p.desc_pages * PAGE
        self.queue: deque[tuple[int, int, float]] = deque()  # (flow, addr, posted at)
        self.nic_wake = None
        self.completed = [deque() for _ in range(p.flows)]
        self.inflight = [0] * p.flows
        self.core_wake: list = [None] * p.flows
        self.buffers = [Buffers(world, f, self.size, 4 * p.ring, p.flows) for f in range(p.flows)]
        self.warmup_ios = p.flows * p.ring  # each ring filled and completed once

    def setup(self):
        return
        yield

    def start(self) -> None:
        env = self.world.env
        env.process(self.nic())
        for f in range(self.p.flows):
            env.process(self.core(f))

    def nic(self):
        env, world, p, m = self.world.env, self.world, self.p, self.world.m
        wire_free = 0.0
        while True:
            if not self.queue:
                self.nic_wake = env.event()
                yield self.nic_wake
            flow, addr, posted = self.queue.popleft()
            extra = world.dma(addr, p.mtu, False)
            m.penalty.add(extra)
            wire_free = max(env.now, wire_free) + extra / world.overlap(False) + p.wire_ns
            yield env.timeout(wire_free - env.now)
            self.completed[flow].append((addr, posted))
            if self.core_wake[flow] is not None:
                self.core_wake[flow].succeed()
                self.core_wake[flow] = None

    def core(self, f: int):
        env, world, m = self.world.env, self.world, self.world.m
        while True:
            start = env.now
            while self.completed[f]:
                addr, posted = self.completed[f].popleft()
                yield from world.unmap_page(f, addr, self.size)
                self.inflight[f] -= 1
                m.ios += 1
                m.latency.add(env.now - posted)
            if self.inflight[f] < self.p.ring:
                posted = env.now
                yield env.timeout(self.tx_ns)
                phys, _ = self.buffers[f].take()
                addr = yield from world.map_page(f, phys, self.p.mtu)
                self.inflight[f] += 1
                self.queue.append((f, addr, posted))
                if self.nic_wake is not None:
                    self.nic_wake.succeed()
                    self.nic_wake = None
                m.cpu_busy_ns += env.now - start
            else:
                m.cpu_busy_ns += env.now - start
                self.core_wake[f] = env.event()
                yield self.core_wake[f]
            self.stop.check()


def build(kind: str, world: DmaWorld, params: NicParams, stop):
    params.check()
    if kind == "nic-tx":
        return NicTx(world, params, stop)
    if params.rx_buffers == "page-pool":
        from vtdsim.simulation.workloads.nic_pool import PoolRx
        return PoolRx(world, params, stop)
    return NicRx(world, params, stop)


__all__ = ["NicParams", "NicRx", "NicTx", "build", "Mode"]
