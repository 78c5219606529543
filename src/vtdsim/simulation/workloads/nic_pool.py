"""nic-rx with a page pool (``--rx-buffers page-pool``, the default): an iperf receiver on a
NIC whose driver takes receive pages from ``page_pool`` with DMA mapping done by the pool, as
mlx5 does in Linux 6.12 (en_main.c ``mlx5e_alloc_rq``: ``PP_FLAG_DMA_MAP``, ``pool_size`` =
the ring's pages; en_rx.c builds each skb around its stride and marks it for recycling).

The ring holds ``ring`` MTU frames in pages of ``PAGE // stride`` frames (mlx5's linear
striding RQ: stride = MTU + headroom + skb_shared_info rounded to a power of two, two
1500-byte frames per page; a frame above a page spans whole pages).  The flow's core runs
NAPI and the reader to completion, one NAPI poll at a time: ``mlx5e_napi_poll`` takes up to
its budget (``NAPI_POLL_WEIGHT`` 64) of completed frames, each paying
``rx_driver_packet_cycles``; ``napi_gro_receive`` merges them into the held segment, which
goes up the stack (``tcp_segment_cycles``) at ``GRO_LEGACY_MAX_SIZE`` (64 KiB of TCP payload)
or when a poll ends below its budget (``napi_complete_done`` flushes GRO; a full poll keeps
it, ``napi_gro_flush`` with flush_old at HZ >= 1000); the reader then copies what was
delivered (``copy_cycles_per_byte`` per payload byte, tcp_recvmsg).  ACKs (Linux 6.12
tcp_input.c/tcp.c): ``__tcp_ack_snd_check`` sends one from softirq only if the window it would
now offer (``__tcp_select_window``: the free receive space, capped by ``rcv_ssthresh``) is not
below the one last advertised - with data queued unread since the last ACK it is below (the
steady state of a bulk receiver, whose ``rcv_ssthresh`` has grown to ``window_clamp``), so the
ACK is left to the delayed-ACK path and sent by the reader: ``__tcp_cleanup_rbuf`` at the end
of ``tcp_recvmsg``, when an ACK is scheduled and more than ``rcv_mss`` arrived since the last
one.  One ACK per poll-and-read cycle, then, ``ack_tx_cycles`` plus its transmit DMA:
mlx5e_sq_xmit maps the ACK's linear data (``dma_map_single``), the NIC reads it through the
unit, and the next poll's TX completion unmaps it (``mlx5e_poll_tx_cq`` ->
``mlx5e_tx_dma_unmap``, polled before RX in ``mlx5e_napi_poll``).
A page returns to the pool when its last reference drops: a packet's, when the reader has
copied it (skb_attempt_defer_free on the allocating CPU: kfree_skb_napi_cache with BH off,
direct while the queue's NAPI is scheduled on this CPU, else the ptr_ring).  The driver's
own, dropped when NAPI has taken all the page's frames (mlx5e_page_release_fragmented), is
never the last here: the reader copies a frame after the poll that took it.  Only pages
leaving or entering the pool are (un)mapped.

Not modelled: a reader on another core lagging behind NAPI (its socket backlog is what would
overflow the pool's ring and make recycle misses; here the reader reads after every poll),
several polls per softirq run before the reader (``__do_softirq`` restarts), the window-raise
ACK of ``__tcp_cleanup_rbuf`` and the delayed-ACK timer, GRO's one-jiffy age flush and HZ <
1000, PSH-bounded GRO segments, LRO / HW-GRO, an ACK inlined whole in the WQE (a VF whose
``min_inline_mode`` covers TCP headers maps nothing), TCP's reaction to drops, interrupt
moderation.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from operator import itemgetter

from vtdsim.errors import BadInput
from vtdsim.simulation.workloads.common import PAGE, DmaWorld
from vtdsim.simulation.workloads.nic import FLOW_SPAN, HEADROOM, NicParams, NicRx
from vtdsim.simulation.workloads.page_pool import ALLOC_CACHE_SIZE, PagePool

GRO_MAX_SIZE = 65536  # GRO_LEGACY_MAX_SIZE: netdev->gro_max_size's default
TCP_IP_HEADERS = 52  # IPv4 20 + TCP 20 + the timestamp option 12: MSS = MTU - 52
ACK_BYTES = 66  # Ethernet 14 + IPv4 20 + TCP 32 (timestamps): a pure ACK's linear data
ACK_SLOTS = 64  # ACK skbs' heads in flight come from a few slab pages
NAPI_BUDGET = 64  # NAPI_POLL_WEIGHT: netif_napi_add's weight, mlx5e_napi_poll's RX budget


# A received frame is the tuple of pool pages it was written to (``Page.frames``); a
# completion is (completed at, arrived at, frame).
_completed = itemgetter(0)


class PoolRxFlow:
    """One flow's RX ring of pool pages, its pool, completions and pending ACKs."""

    def __init__(self, world: DmaWorld, p: NicParams, index: int):
        self.world, self.p, self.index = world, p, index
        self.stride = stride = p.stride
        self.slots = max(1, PAGE // stride)  # frames per page
        self.span = 1 if stride <= PAGE else -(-(p.mtu + HEADROOM) // PAGE)  # pages a frame
        self.contiguous = self.span == 1  # a frame is one DMA at its address (NicRx.wire)
        self.target = -(-p.ring // self.slots) * self.span  # pages posted to the ring
        self.bulk = min(p.pages_per_desc, self.target)  # pages per WQE (refill)
        pool_size = p.pool_size or self.target
        count = 4 * (self.target + pool_size) + 4 * ALLOC_CACHE_SIZE
        base = world.region(index, p.flows, FLOW_SPAN, (count + 1) * PAGE)
        self.ack_phys = base + count * PAGE  # one page of ACK heads
        self.pool = PagePool(world, index, pool_size,
                             [base + i * PAGE for i in reversed(range(count))])
        # The ring's frames not yet written, in order: (DMA address, frame) each, laid out
        # when their pages are posted (``refill``); the wire takes the next (``packet_addr``,
        # the deque's own popleft: no Python call per packet) while any is left.
        self.ready: deque = deque()
        self.packet_addr = self.ready.popleft
        self.partial: list = []  # pages posted towards the next frame spanning several
        # Pages posted, not yet released by NAPI (its WQEs): the driver's reference on each
        # (``refill``); NAPI releases a prefix.
        self.ring: list = []
        self.head_frames = 0  # frames NAPI took from the ring's first page (span 1)
        self.done: list = []  # completions in order (a list: NAPI takes a prefix at once)
        self.completed = 0.0  # when the last completion was posted (NicRx.wire)
        self.acks: deque[tuple[float, int]] = deque()  # (completed at, DMA address)
        self.held: list = []  # the GRO segment napi_gro_receive holds (completions)
        self.unacked = 0  # payload bytes delivered since the last ACK (rcv_nxt - rcv_wup)
        self.ack_slot = 0
        self.wake = None
        self.refilled = None

    def refill(self):
        """Post pool pages until the ring holds ``target`` (mlx5e_post_rx_mpwqes: a WQE of
        ``pages_per_desc`` pages at a time, once NAPI has released a whole one); the frames
        a posted page completes go onto ``ready``: its ``slots`` strides (laid out once per
        pool page: ``Page.frames``), or one frame once ``span`` pages are (``_span``)."""
        bulk, refs, spanning = self.bulk, self.slots, self.span > 1
        post, add_frames, pool = self.ring.extend, self.ready.extend, self.pool
        wanted = (self.target - len(self.ring)) // bulk * bulk  # whole WQEs
        while wanted:
            # What the pool has without its slow path, in ``take``'s order; when it has none,
            # one page from ``alloc``, which maps a bulk of fresh ones (time passes: the pages
            # taken before it are posted, their frames ready for the wire, as page by page).
            pages = pool.take_many(wanted) or [(yield from pool.alloc())]
            wanted -= len(pages)
            # A reference for each frame the driver will build on the page, taken up front
            # as a bias (mlx5e_page_alloc_fragmented: page_pool_fragment_page), so building
            # a frame changes no count.  The driver's own is the page's place on ``ring``:
            # NAPI releases it once all the page's frames are taken
            # (mlx5e_page_release_fragmented drains the bias left), in the poll that took the
            # last one, which the reader copies after that poll (or later: GRO holds it) -
            # never the last reference, so ``Page.refs`` need not count it.
            post(pages)
            if spanning:
                for page in pages:
                    page.refs = refs
                    self._span(page)
                continue
            for page in pages:
                page.refs = refs
                add_frames(page.frames or self._layout(page))
        if self.refilled is not None and self.ready:  # the wire sleeps; available() inline
            self.refilled.succeed()
            self.refilled = None

    def _span(self, page) -> None:
        """A posted page towards a frame of ``span`` pages: the frame once it has them."""
        self.partial.append(page)
        if len(self.partial) == self.span:
            pages, self.partial = tuple(self.partial), []
            self.ready.append((pages[0].dma, pages))

    def _layout(self, page) -> tuple:
        """A page's frames, one per stride: (DMA address, (page,)), laid out on its first
        posting and kept (``Page.frames``)."""
        alone = (page,)
        page.frames = tuple((page.dma + k * self.stride, alone) for k in range(self.slots))
        return page.frames

    def released(self, frames: int) -> int:
        """How many of the ring's pages NAPI releases having taken ``frames`` more: those
        whose last frame it took (frames fill the pages in order)."""
        if self.span > 1:
            return frames * self.span
        taken = self.head_frames + frames
        self.head_frames = taken % self.slots
        return taken // self.slots

    def available(self) -> bool:  # NicRx.wire and refill test the same inline
        return bool(self.ready)

    def dma(self, addr: int, pages: tuple) -> float:
        world, mtu = self.world, self.p.mtu
        if len(pages) == 1:
            return world.dma(addr, mtu, True)
        extra = 0.0
        for k, page in enumerate(pages):
            extra += world.dma(page.dma, min(PAGE, mtu - k * PAGE), True)
        return extra

    def ack_buffer(self) -> int:
        slot, self.ack_slot = self.ack_slot, (self.ack_slot + 1) % ACK_SLOTS
        return self.ack_phys + slot * (PAGE // ACK_SLOTS)


def _read_all(batch: list, now: float, latency, pool: PagePool, direct: bool) -> int:
    """The reader's pass over ``batch`` (``PoolRx.core``'s loop) when each frame is one page
    (``span`` 1: unpacked, no loop over a frame's pages) and no return can find the pool's
    ring full: the pages whose last reference drops go back in that order, all at once
    (``PagePool.recycle_all``), with no time passing; how many I/Os it delivered."""
    freed = []
    free = freed.append
    for _ready, arrival, (page,) in batch:
        page.refs -= 1
        if not page.refs:
            free(page)
        latency(now - arrival)
    pool.recycle_all(freed, direct)
    return len(batch)


class PoolRx(NicRx):
    """The wire as ``NicRx``'s; the core runs NAPI, GRO, TCP and the reader per poll."""

    def __init__(self, world: DmaWorld, p: NicParams, stop):
        if world.mode.iova_pages != "4k":
            raise BadInput("--iova-pages 2m is the premapped hugepage pool of --rx-buffers map; "
                           "a page pool maps 4 KiB pages")
        mss = p.mtu - TCP_IP_HEADERS
        if mss < 1:
            raise BadInput(f"--mtu {p.mtu}: a TCP segment needs more than {TCP_IP_HEADERS} bytes")
        self.world, self.p, self.stop = world, p, stop
        c = world.constants
        self.lag_ns = c["nic_buffer_bytes"] * 8 / p.link_gbps
        self.mss, self.gro_segs = mss, max(1, (GRO_MAX_SIZE - TCP_IP_HEADERS) // mss)
        self.driver_ns = c.ns("rx_driver_packet_cycles")
        self.copy_ns = mss * c.ns("copy_cycles_per_byte")
        self.segment_ns = c.ns("tcp_segment_cycles")
        self.ack_ns = c.ns("ack_tx_cycles")
        self.flows = [PoolRxFlow(world, p, f) for f in range(p.flows)]
        # two turns of every ring: the pool's pages have cycled through its ptr_ring
        self.warmup_ios = 2 * p.flows * p.ring

    def setup(self):
        for flow in self.flows:
            yield from flow.refill()

    def gro(self, flow: PoolRxFlow, polled: list) -> tuple[list, int]:
        """napi_gro_receive over one poll: the completions delivered to TCP and the number of
        segments they made.  A segment leaves when full; a poll below its budget completes
        NAPI, whose napi_gro_flush sends the held one up too.  The held frames and the
        polled ones in order: every whole segment at its front leaves, the rest is held."""
        queue = flow.held + polled
        segments = len(queue) // self.gro_segs
        cut = segments * self.gro_segs
        if len(polled) < NAPI_BUDGET and cut < len(queue):
            cut, segments = len(queue), segments + 1
        flow.held = queue[cut:]
        return queue[:cut], segments

    def core(self, flow: PoolRxFlow):
        env, m, done = self.world.env, self.world.m, flow.done
        pool, now = flow.pool, env.now
        while True:
            if not done or done[0][0] > now:  # else wait_done would not wait
                yield from self.wait_done(flow)
                now = env.now
            # The budget's ready completions: a prefix, as the completion queue is in order
            # (``NicRx.wire`` posts a frame's completion no earlier than the one before).  The
            # budget's last ready, so is every one before it (a full poll); else the first
            # not ready is found by bisection.
            count = len(done) if len(done) < NAPI_BUDGET else NAPI_BUDGET
            if done[count - 1][0] > now:
                count = bisect_right(done, now, 0, count, key=_completed)
            polled = done[:count]
            del done[:count]
            start = now
            # The TX completion queue, polled first in mlx5e_napi_poll (mlx5e_poll_tx_cq):
            # unmap the ACKs sent.  Here, not in a generator of its own: one fewer to pass
            # through for each event the unmap waits on.
            acks = flow.acks
            while acks and acks[0][0] <= now:
                yield from self.world.unmap_page(flow.index, acks.popleft()[1], ACK_BYTES)
            batch, segments = self.gro(flow, polled)
            flow.unacked += len(batch) * self.mss
            ack = flow.unacked > self.mss  # __tcp_cleanup_rbuf: more than rcv_mss unacked
            yield env.timeout(len(polled) * self.driver_ns + segments * self.segment_ns
                              + len(batch) * self.copy_ns + ack * self.ack_ns)
            if ack:
                flow.unacked = 0
                yield from self.send_ack(flow)
            # NAPI drops the driver's references: never a page's last (refill), none returns.
            del flow.ring[:flow.released(len(polled))]
            # A page goes back to the pool when its last reference drops (Page.refs; PagePool.put).
            # The reader copied the delivered ones and frees the skbs on this CPU
            # (skb_attempt_defer_free -> kfree_skb_napi_cache, BH off): direct recycling while
            # the queue's NAPI is still scheduled here (page_pool_napi_local:
            # napi->list_owner), i.e. more completions wait.
            direct = bool(done)
            now, recycle, latency, ios = env.now, pool.recycle, m.latency.add, 0
            if flow.span == 1 and len(batch) <= pool.room(direct):  # a frame frees <= 1 page
                ios, batch = _read_all(batch, now, latency, pool, direct), ()
            for _ready, arrival, pages in batch:
                for page in pages:
                    page.refs -= 1
                    if not page.refs and not recycle(page, direct):
                        # A full ring unmaps: time passes (and the warm-up may end, which
                        # starts a new Measure): what was delivered so far is counted first.
                        m.ios, ios = m.ios + ios, 0
                        yield from pool.release(page)
                        now, latency = env.now, m.latency.add
                ios += 1
                latency(now - arrival)
            m.ios += ios
            if flow.target - len(flow.ring) >= flow.bulk or flow.refilled is not None:
                yield from flow.refill()  # else it has nothing to post
            now = env.now
            m.cpu_busy_ns += now - start
            self.stop.check()  # no time passes: ``now`` holds for the next poll

    def send_ack(self, flow: PoolRxFlow):
        """mlx5e_sq_xmit: map the ACK's linear data; the NIC reads it (its translation
        counts, its bytes are not received data); completed one PCIe round trip later."""
        world = self.world
        addr = yield from world.map_page(flow.index, flow.ack_buffer(), ACK_BYTES)
        extra = world.dma(addr, ACK_BYTES, False, payload=False)
        flow.acks.append((world.env.now + world.base_dma_ns + extra, addr))
