"""What every timed workload shares: the mode (policy, profile, platform, unit, page size,
seed, length), the booted machine with the device's default domain as Linux gives it
(drivers/iommu/iommu.c ``iommu_subsys_init`` + ``intel_iommu_init``'s caching-mode override),
and the DMA API as a device driver calls it (dma-iommu.c through ``driver/dma_api.py``), timed.

``policy``: ``off`` - no IOMMU (intel_iommu=off: DMA addresses are physical, nothing is
translated); ``passthrough`` - an identity domain (the unit translates with pass-through
context entries); ``strict`` / ``lazy`` - a DMA / DMA_FQ domain (a caching-mode unit may force
strict, as Linux does).  The flush-queue timer is its own actor (``fq_flush_timeout`` in
softirq): it fires ``fq_timeout_ns`` after arming and its CPU time counts as CPU work.

``platform``: the machine is ``machine.build``'s - bare metal, or a guest on QEMU's emulated
unit with the device emulated (``emulated``) or assigned (``shadow``: VFIO, ``nested``:
iommufd); the engine drives the guest's driver, the device's DMA is translated by the unit
that carries it (``Machine.dma_unit``), and its buffers live where that unit can reach them.

``ats``: the device has ATS (``--ats``): its DMA goes through its device-TLB, a miss sends a
Translation Request, and the driver's strict unmaps add device-TLB invalidations (priced with
the ATS round trip to the endpoint).

Not modelled: interrupts and NAPI scheduling costs beyond the per-packet/per-I/O constants,
NUMA, ATS page requests (PRI).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from vtdsim.driver import iommu_core
from vtdsim.driver.dma_api import (
    IommuDmaCookie,
    iommu_dma_map_page,
    iommu_dma_map_sg,
    iommu_dma_unmap_page,
    iommu_dma_unmap_sg,
)
from vtdsim.driver.iova import IovaDomain
from vtdsim.errors import BadInput, ModelError
from vtdsim.hardware.remapping_unit import CacheConfig
from vtdsim.hardware.translation.miss import FS_MISS_READS
from vtdsim.simulation.engine import TimedMachine
from vtdsim.simulation.machine import GUEST_DATA, build
from vtdsim.simulation.metrics import Measure, model_counters
from vtdsim.simulation.platforms import get_platform
from vtdsim.simulation.system import System

POLICIES = ("off", "passthrough", "strict", "lazy")
IOVA_PAGES = {"4k": 4096, "2m": 2 << 20}
PAGE = 4096
DEVICE = "03:00.0"
DATA_BASE = 0x1_0000_0000  # data buffers live above 4 GiB, clear of the page-table pages
DATA_END = 1 << 46
IOVA_TREE_LOCK = "iovad.iova_rbtree_lock"
MSI_WINDOW_PFNS = (0xFEE00, 0xFEEFF)  # 0xfee00000-0xfeefffff


@dataclass(frozen=True)
class Mode:
    policy: str = "strict"
    profile: str = "mainline"
    platform: str = "bare"
    exits: str = "trap"
    unit: str = "server-sm"
    iova_pages: str = "4k"
    seed: int = 0
    duration_ns: float | None = None
    ios: int | None = None
    ats: bool = False  # the device has ATS: a device-TLB, translation requests

    def check(self) -> None:
        if self.policy not in POLICIES:
            raise BadInput(f"--policy {self.policy!r}: expected one of {', '.join(POLICIES)}")
        if self.iova_pages not in IOVA_PAGES:
            raise BadInput(f"--iova-pages {self.iova_pages!r}: expected 4k or 2m")
        if (self.duration_ns is None) == (self.ios is None):
            raise BadInput("give exactly one of --duration and --ios")
        if (self.duration_ns or 1) <= 0 or (self.ios or 1) <= 0:
            raise BadInput("--duration and --ios must be positive")


DURATION_UNITS = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}


def parse_duration(text: str | None) -> float | None:
    """``10ms``, ``1.5s``, ``200us``, ``5000ns`` or a number of ns."""
    if text is None:
        return None
    for suffix in sorted(DURATION_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], DURATION_UNITS[suffix]
            break
    else:
        number, scale = text, 1
    try:
        value = float(number) * scale
    except ValueError:
        raise BadInput(f"--duration {text!r}: a time such as 10ms, 1s, 500us") from None
    if value <= 0:
        raise BadInput(f"--duration {text!r}: must be positive")
    return value


def cache_config(constants) -> CacheConfig:
    """The unit's cache sizes from the constants table (the rest as the model's default)."""
    return CacheConfig(iotlb=int(constants["iotlb_entries"]),
                       pscache=int(constants["pscache_entries"]),
                       context=int(constants["context_cache_entries"]))


def domain_type(mode: Mode, system: System) -> str:
    """The device's default domain type, decided as Linux decides it."""
    policy = iommu_core.iommu_subsys_init(
        "lazy", cmdline_strict=mode.policy == "strict",
        cmdline_passthrough=mode.policy == "passthrough")
    iommu_core.intel_iommu_caching_mode_policy(policy, [system.unit.caps], system.profile)
    return iommu_core.iommu_get_def_domain_type(policy, system.devices[DEVICE])


def _untimed(value: Any) -> Generator[Any, Any, Any]:
    """A DMA API call with nothing to time (no IOMMU, or dma-direct): ``value`` at once."""
    return value
    yield


def _nothing() -> None:
    """A ``settle`` with nothing to settle."""


def _faulted(page: int, result) -> None:
    raise ModelError(f"simulated DMA to {page << 12:#x} faulted: {result.describe()}")


def walk_read_key(unit) -> str:
    """Where a hardware unit's page-walk reads are served from.  A snooped walk (legacy mode:
    ECAP.C; scalable mode: ECAP.SMPWC, from which Linux sets the PASID entry's PWSNP -
    ``intel_pasid_setup_*``) reads the line where the CPU left it when it wrote the entry: in
    its cache hierarchy, so the LLC.  A non-snooped walk reads DRAM, where Linux's
    ``domain_flush_cache`` clflush put the entry (spec 6.1: software flushes for ECAP.C=0).
    Not modelled: page-table lines the LLC has evicted since (they would cost a DRAM read)."""
    snooped = unit.caps.smpwc if unit.ttm == 1 else unit.caps.coherent
    return "llc_read_ns" if snooped else "dram_read_ns"


class DmaWorld:
    """The timed machine, the device's domain and cookie, and the measurements."""

    def __init__(self, mode: Mode, constants, ncpus: int):
        mode.check()
        self.mode, self.constants = mode, constants
        platform = get_platform(mode.platform, constants, mode.exits)
        self.vm = build(platform.machine, profile=mode.profile, unit=mode.unit, ncpus=ncpus,
                        cache_config=cache_config(constants), qi_mode="async",
                        host_unit=mode.unit, device_iotlb=mode.ats)
        if hasattr(platform, "bind"):
            platform.bind(self.vm)
        self.system = self.vm.guest
        self.info = self.vm.device(DEVICE, ats=mode.ats)
        self.sid = self.info.sid
        # Where the data buffers live: above the page-table pages on bare metal, in the part
        # of guest RAM the guest driver's pages leave free on a VM (an assigned device can
        # only reach guest RAM: VFIO and the nest parent map nothing else).
        self.data_base, self.data_end = ((DATA_BASE, DATA_END) if self.vm.vmm is None
                                         else GUEST_DATA)
        self.translated = mode.policy != "off"
        dtype = domain_type(mode, self.system) if self.translated else "identity"
        if dtype == "identity":
            domain = self.system.driver.domain_alloc_identity()
        else:
            domain = self.system.run(self.system.driver.domain_alloc_paging(
                self.system.iommu, type=dtype))
        self.domain_type = dtype
        self.system.attach([DEVICE], domain=domain)
        # dma-iommu reserves the MSI window the unit never translates (intel-iommu's
        # get_resv_regions: IOAPIC_RANGE_START..END; iova_reserve_iommu_regions).
        iovad = IovaDomain(ncpus=ncpus, reserved=(MSI_WINDOW_PFNS,))
        self.cookie = IommuDmaCookie(self.system.driver, domain, iovad, ncpus=ncpus)
        # An identity domain's map is dma-direct's (dma_map_direct: no IOVA, no page table),
        # as is every map with the IOMMU off: the API call itself is not charged then.
        self.mapping = self.translated and not self.cookie.identity
        dma_unit = self.vm.dma_unit(DEVICE)
        walk_read = walk_read_key(dma_unit) if dma_unit is not self.system.unit \
            or self.vm.vmm is None else "vmm_walk_read_ns"  # QEMU translating in software
        self.machine = TimedMachine(self.system, constants, platform, dma_unit=dma_unit,
                                    walk_read_ns=constants.ns(walk_read))
        self.endpoint = self.vm.dma_endpoint(DEVICE)
        self.ats_request_ns = constants.ns("ats_translation_request_ns")
        # Translations a device's DMA engine overlaps: more for its writes, which are posted,
        # than for its reads (``overlap``).
        self._overlap = tuple(max(1.0, constants[f"translation_parallelism_{rw}"])
                              for rw in ("read", "write"))
        self.env = self.machine.env
        self.m = Measure()
        self.api_ns = constants.ns("dma_api_call_cycles")
        self.tree_ns = constants.ns("iova_tree_cycles")
        self.pcie_ns_per_byte = 8 / constants["pcie_gbps"]
        self.base_dma_ns = constants.ns("dma_base_latency_ns")
        self._timer = None
        self.start_counters = model_counters(self.machine)
        self.start_ns = 0.0

    def start_measuring(self) -> None:
        """Forget what was counted so far (boot, set-up, warm-up).  In place: the workload's
        processes hold the ``Measure``."""
        self.start_counters = model_counters(self.machine)
        self.start_ns = self.env.now
        self.m.__init__()

    # -- the DMA API, timed ---------------------------------------------------------------------
    # Each call hands back the generator of the timed operation itself (the caller's ``yield
    # from`` runs it at once), not one delegating to it: one generator fewer per call, and
    # one frame fewer for every SimPy event its operation waits on.
    def _timed(self, gen, times, arm: bool = False) -> Generator[Any, Any, Any]:
        """Run driver operation ``gen``: its time into ``times``, the IOVA rbtree's work
        under its lock after it; ``arm``: then the flush-queue timer (an unmap)."""
        start, ops = self.env.now, self.cookie.iovad.tree_ops
        result = yield from self.machine.run_op(gen, self.api_ns)
        tree = self.cookie.iovad.tree_ops - ops
        if tree:
            yield from self.machine.hold(IOVA_TREE_LOCK, tree * self.tree_ns)
        times.add(self.env.now - start)
        if arm:
            self._arm_timer()
        return result

    def map_page(self, cpu: int, phys: int, size: int) -> Generator[Any, Any, int]:
        if not self.mapping:
            return _untimed(phys)
        return self._timed(iommu_dma_map_page(self.cookie, phys, size, cpu=cpu), self.m.map)

    def unmap_page(self, cpu: int, addr: int, size: int) -> Generator[Any, Any, None]:
        if not self.mapping:
            return _untimed(None)
        gen = iommu_dma_unmap_page(self.cookie, addr, size, cpu, int(self.env.now))
        return self._timed(gen, self.m.unmap, arm=True)

    def map_sg(self, cpu: int, sg: list[tuple[int, int]]) -> Generator[Any, Any, list[int]]:
        if not self.mapping:
            return _untimed([phys for phys, _ in sg])
        return self._timed(iommu_dma_map_sg(self.cookie, sg, cpu=cpu), self.m.map)

    def unmap_sg(self, cpu: int, addrs: list[int], lengths: list[int]
                 ) -> Generator[Any, Any, None]:
        if not self.mapping:
            return _untimed(None)
        gen = iommu_dma_unmap_sg(self.cookie, addrs, lengths, cpu, int(self.env.now))
        return self._timed(gen, self.m.unmap, arm=True)

    # -- the flush-queue timer --------------------------------------------------------------------
    def _arm_timer(self) -> None:
        fq = self.cookie.fq
        if fq is not None and fq.timer_on and self._timer is None:
            self._timer = self.env.process(self._fire(fq))

    def _fire(self, fq):
        yield self.env.timeout(max(0.0, fq.timer_expires_ns - self.env.now))
        self._timer = None
        start = self.env.now
        yield from self.machine.run_op(fq.fq_flush_timeout(int(self.env.now)))
        self.m.cpu_busy_ns += self.env.now - start

    # -- device DMA -------------------------------------------------------------------------------
    def dma(self, addr: int, size: int, write: bool, payload: bool = True) -> float:
        """The device moves ``size`` bytes at DMA address ``addr``: one translation per 4 KiB
        page touched (none with the IOMMU off); returns the latency the device sees beyond the
        transfer itself and the PCIe base round trip.  ``payload`` False: the bytes are not
        the workload's data (a receiver's ACK), only their translations count."""
        first, last = addr >> 12, (addr + size - 1) >> 12
        m = self.m
        m.translations += last - first + 1
        m.bytes += size if payload else 0
        if not self.translated:
            return 0.0
        if self.info.ats_enabled:
            return self._ats_dma(first, last, write)
        translate, sid, extra = self.machine.translate, self.sid, 0.0
        if first == last:  # most DMAs: one page, no loop
            result, ns = translate(sid, first << 12, write)
            if not result:
                _faulted(first, result)
            return extra + ns
        for page in range(first, last + 1):
            result, ns = translate(sid, page << 12, write)
            if not result:
                _faulted(page, result)
            extra += ns
        return extra

    def page_dma(self, size: int, write: bool):
        """``(dma, settle)``: ``dma(addr)`` is ``dma(addr, size, write)`` as a function of
        ``addr`` alone, for a device that moves ``size`` bytes at one address after another
        (the NIC's receive wire): what is constant for the run is bound once, and a DMA
        within one 4 KiB page - a packet in its pool page's stride - is the unit's
        ``translate_page`` (an IOTLB hit, or the page's remembered miss below a cached PDE),
        else the engine's ``translate_miss``, without ``dma``'s general layers.  Anything else
        (a DMA across pages, the IOMMU off, ATS) is ``dma``'s.

        A DMA to the page of the one before it, when ``translate_page`` answered that one and
        nothing reached the unit since, is the unit's ``translate_page_again`` (the same hit,
        its counters only: one more ``pending.repeats``, no call); to another page,
        ``translate_page`` with ``known`` (the context and PASID entries not probed again).
        Both leave their counters pending in the unit (``counted=False``), as one-page DMAs
        leave the measure's translations and bytes.
        The caller calls ``settle()`` before it lets other actors run - before every yield to
        SimPy - which makes those counters and forgets the last page: between two calls with
        no yield in between no other process runs, so nothing reaches the unit nor reads a
        counter (``NicRx.wire``)."""
        dma = self.dma
        if not self.translated or self.info.ats_enabled:
            return (lambda addr: dma(addr, size, write)), _nothing
        m, sid, machine, last_start = self.m, self.sid, self.machine, PAGE - size
        unit, hit_ns, miss = machine.dma_unit, machine.hit_ns, machine.translate_miss
        translate_page = unit.translate_page
        pending, settle_answers = unit.pending_answers, unit.settle_answers
        # Priced as TimedMachine.translate_miss: a lookup, and a read per walk read - none on
        # an IOTLB hit, the PTE's on translate_page's other answer (miss.FS_MISS_READS).
        miss_ns = hit_ns + FS_MISS_READS * machine.dram_ns
        last = -1  # the page translate_page answered last, while nothing else ran since
        # One-page DMAs since the last settle, not yet in the measure's translations and
        # bytes: a small int per DMA instead of two counters that each allocate an int.
        moved = 0

        def page_dma(addr: int) -> float:
            nonlocal last, moved
            if addr & (PAGE - 1) > last_start:  # touches two pages
                last = -1
                return dma(addr, size, write)
            moved += 1
            page = addr >> 12
            if page == last:
                pending.repeats += 1  # translate_page_again, counted at settle
                return hit_ns
            misses = pending.remembered
            if translate_page(sid, addr, write, True, last >= 0, False) is not None:
                last = page  # addr's page: a hit, unless a remembered miss was counted
                return hit_ns if pending.remembered == misses else miss_ns
            last = -1
            result, ns = miss(sid, page << 12, write)
            if not result:
                _faulted(page, result)
            return ns

        def settle() -> None:
            nonlocal last, moved
            last = -1
            if moved:
                m.translations += moved
                m.bytes += moved * size
                moved = 0
            settle_answers()

        return page_dma, settle

    def _ats_dma(self, first: int, last: int, write: bool) -> float:
        """Through the endpoint's device-TLB (PCIe ATS): a hit costs nothing beyond the DMA; a
        miss is a Translation Request round trip plus the unit's walk reads.  One byte per
        page goes through ``Endpoint.dma_read``/``dma_write`` (the translation, not the
        data, is what is timed)."""
        endpoint, stats = self.endpoint, self.machine.dma_unit.stats
        requests, reads = endpoint.stats["translation_requests"], stats["walk_reads"]
        for page in range(first, last + 1):
            addr = page << 12
            result = endpoint.dma_write(addr, b"\0") if write else endpoint.dma_read(addr, 1)
            if not result:
                raise ModelError(f"simulated DMA to {addr:#x} faulted: {result.fault!r}")
        requests = endpoint.stats["translation_requests"] - requests
        return (requests * (self.ats_request_ns + self.machine.hit_ns)
                + (stats["walk_reads"] - reads) * self.machine.dram_ns)

    def region(self, index: int, count: int, span: int, need: int) -> int:
        """The base of data region ``index`` of ``count`` (at most ``span`` bytes apart),
        which must hold ``need`` bytes."""
        span = min(span, (self.data_end - self.data_base) // count)
        if need > span:
            raise BadInput(f"the workload needs {need} bytes of buffers per flow/job, the "
                           f"{self.mode.platform} platform has {span}: smaller --ring/--qd")
        return self.data_base + index * span

    def overlap(self, write: bool) -> float:
        """How many translations the device's DMA engine overlaps when it writes (``write``)
        or reads memory: a translation's latency occupies the engine for 1/this of it."""
        return self._overlap[write]

    def transfer_ns(self, size: int) -> float:
        return size * self.pcie_ns_per_byte
