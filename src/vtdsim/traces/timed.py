"""A recording's calls in simulated time (``vtdsim simulate trace DIR``): the machine booted
from the recording as ``replay`` boots it (replay.py: recorded CAP/ECAP, policy, groups), then
each rebuilt map/unmap call (calls.py) starts at its recorded timestamp on its recorded CPU,
through the timed engine (simulation/engine.py) - the what-if of a user's own trace under
another profile, policy (``--policy strict|lazy`` adds ``iommu.strict=1|0`` to the recorded
command line, so a caching-mode unit still forces strict as Linux would) or platform.

A call that finds its CPU still busy with the previous one waits for it.  The flush-queue
timer fires at the jiffy the unmap armed it with (replay's HZ=250 rule, the tick phase drawn
by ``seed``).  An I/O is one unmap call (each DMA ends with one).

Not modelled: the device's DMA between the calls (the recording has no timing of it), time
spent outside the DMA API (the gaps between recorded timestamps stand for it).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

from vtdsim.driver.dma_api import iommu_dma_unmap_page
from vtdsim.driver.pgtable import IOMMU_READ, IOMMU_WRITE
from vtdsim.errors import BadInput
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.request import format_sid, parse_sid
from vtdsim.simulation.engine import TimedMachine
from vtdsim.simulation.machine import HOST_PAGES, HOST_UNIT, Machine
from vtdsim.simulation.metrics import Measure, model_counters
from vtdsim.simulation.platforms import get_platform
from vtdsim.simulation.system import System
from vtdsim.traces import replay as rp
from vtdsim.traces.calls import MapCall
from vtdsim.traces.recording import Recording
from vtdsim.traces.vmm_replay import vmm_of
from vtdsim.virtualization.backends import VfioShadow, host_name
from vtdsim.virtualization.nesting import IommufdNested
from vtdsim.virtualization.vmm import Vmm

POLICY_CMDLINE = {"recorded": "", "strict": " iommu.strict=1", "lazy": " iommu.strict=0"}


def _jiffies_ns(t_ns: int, phase_ns: int) -> int:
    """The time rounded down to the last tick: the flush-queue timer's clock is jiffies."""
    return phase_ns + (t_ns - phase_ns) // rp.TICK_NS * rp.TICK_NS


class TimedTrace:
    def __init__(self, path, constants, *, profile, policy, platform, exits, seed, device):
        rec = Recording(path)
        setup = rp.read_setup(rec, device)
        setup = replace(setup, cmdline=setup.cmdline + POLICY_CMDLINE[policy])
        self.path, self.policy = str(path), policy
        self.platform_name, self.seed = platform, seed
        self.phase_ns = random.Random(seed).randrange(rp.TICK_NS)
        self.platform = get_platform(platform, constants, exits)
        vmm, host, backends = (None, None, {}) if platform == "bare" else \
            _recorded_vmm(rec, setup, platform)
        self.model = rp.ModelMachine(setup, profile or rp.recording_profile(rec), vmm=vmm)
        # The timer fires on the 4th jiffy after the arming one (replay.py's HZ rule); replay
        # itself arms for the earliest and waits for the softirq line instead.
        self.boot = rp.boot(self.model, setup, rp.FQ_TIMER_TICKS * rp.TICK_NS)
        self.traced = setup.traced
        self.vm = Machine(platform, self.model.system, vmm, None, host, backends)
        if vmm is None:
            self.model.unit.qi_mode = "async"  # the engine steps the queue in hardware time
        else:
            self.platform.bind(self.vm)
        self.constants = constants
        self.m = Measure()
        self.lanes: list[deque] = []
        self.wakes: list = []
        self.timer = None
        self.machine: TimedMachine | None = None

    # -- the calls -----------------------------------------------------------------------------
    def _op(self, call):
        cookie, domain = self.boot.cookie, self.boot.cookie.domain
        if type(call) is MapCall:
            return self.model.driver.map_sg(domain, call.iova, call.chunks,
                                            IOMMU_READ | IOMMU_WRITE), self.m.map
        now = _jiffies_ns(int(self.machine.env.now), self.phase_ns)
        return iommu_dma_unmap_page(cookie, call.iova, call.size, call.cpu, now), self.m.unmap

    def lane(self, cpu: int):
        env, queue = self.machine.env, self.lanes[cpu]
        while True:
            if not queue:
                self.wakes[cpu] = env.event()
                yield self.wakes[cpu]
            call = queue.popleft()
            start = env.now
            gen, times = self._op(call)
            yield from self.machine.run_op(gen)
            times.add(env.now - start)
            self.m.cpu_busy_ns += env.now - start
            if type(call) is not MapCall:
                self.m.ios += 1
                self.m.latency.add(env.now - call.ts_us * 1000)
                self._arm_timer()

    def _arm_timer(self) -> None:
        fq = self.boot.cookie.fq
        if fq is not None and fq.timer_on and self.timer is None:
            self.timer = self.machine.env.process(self._fire(fq))

    def _fire(self, fq):
        env = self.machine.env
        yield env.timeout(max(0.0, fq.timer_expires_ns - env.now))
        self.timer = None
        start = env.now
        yield from self.machine.run_op(fq.fq_flush_timeout(fq.timer_expires_ns or int(start)))
        self.m.cpu_busy_ns += env.now - start

    def dispatch(self, calls):
        env = self.machine.env
        for call in calls:
            at = call.ts_us * 1000
            if at > env.now:
                yield env.timeout(at - env.now)
            cpu = min(call.cpu, len(self.lanes) - 1)
            self.lanes[cpu].append(call)
            if self.wakes[cpu] is not None:
                self.wakes[cpu].succeed()
                self.wakes[cpu] = None

    def run(self) -> dict:
        # guest_calls gives (call, marks) pairs, SubmitMarks and a TraceEnd: the calls only.
        calls = (c[0] for c in rp.guest_calls(self.path) if type(c) is tuple)
        first = next(calls, None)
        start_ns = first.ts_us * 1000 if first is not None else 0
        self.machine = TimedMachine(self.model.system, self.constants, self.platform, start_ns,
                                    dma_unit=self.vm.dma_unit(format_sid(self.traced)))
        ncpus = max(1, self.model.system.platform.ncpus)
        self.lanes = [deque() for _ in range(ncpus)]
        self.wakes = [None] * ncpus
        env = self.machine.env
        before = model_counters(self.machine)
        for cpu in range(ncpus):
            env.process(self.lane(cpu))
        if first is not None:
            env.run(env.process(self.dispatch(_chain(first, calls))))
        env.run()  # the last calls, and a flush-queue timer they armed
        return self.result(before, env.now - start_ns)

    def result(self, before, elapsed: float) -> dict:
        d = model_counters(self.machine)
        d.subtract(before)
        m = self.m
        descriptors = sum(v for k, v in d.items() if k.startswith("desc:"))

        def per(v: float) -> float:
            return round(v / m.ios, 4) if m.ios else 0.0

        return {
            "workload": "trace", "trace": self.path.rstrip("/").rsplit("/", 1)[-1],
            "policy": self.policy, "domain_type": self.boot.cookie.domain.type,
            "profile": self.model.profile.name, "platform": self.platform_name,
            "unit": f"cap {self.model.caps.cap:x} ecap {self.model.caps.ecap:x}",
            "seed": self.seed, "sim_ns": round(elapsed, 1), "ios": m.ios,
            "map_calls": m.map.n, "iqt_writes": d["iqt_writes"],
            "iqt_writes_per_io": per(d["iqt_writes"]), "exits_per_io": per(d["exits"]),
            "vmm_ns_per_io": per(d["vmm_ns"]),
            "descriptors_per_io": per(descriptors), "map_ns": round(m.map.mean, 1),
            "unmap_ns": round(m.unmap.mean, 1), "cpu_ns_per_io": per(m.cpu_busy_ns),
            "latency_ns_p50": m.latency.percentile(50),
            "latency_ns_p99": m.latency.percentile(99),
            "cpu_ghz": self.constants["cpu_ghz"],
            "lock_wait_ns": {k: round(v, 1)
                             for k, v in sorted(self.machine.lock_wait_ns.items())},
        }


def _recorded_vmm(rec, setup, platform: str):
    """The VMM the recording ran on (QEMU version and ``-device intel-iommu`` properties, as
    ``replay --vmm`` builds it), with the traced device emulated by QEMU, or assigned through
    VFIO (``shadow``) or iommufd (``nested``) to a host unit (mainline, strict)."""
    version, props = vmm_of(rec)
    memory = PhysicalMemory()
    vmm = Vmm(version, props, memory, name=setup.dmesg.iommu)
    for name, _ in setup.dmesg.group_adds:
        vmm.address_space(parse_sid(name))  # vtd_find_add_as at machine start
    if platform == "emulated":
        return vmm, None, {}
    if platform == "nested" and not (props.flts and props.scalable_mode):
        raise BadInput(f"--platform nested needs a first-stage vIOMMU recording (x-flts=on, "
                       f"x-scalable-mode=on): {rec.path}/config.toml")
    if platform == "shadow" and props.flts:
        # x-flts: QEMU shadows no first stage; an assigned device must use the iommufd
        # backend with a nesting host (vtd_check_hiod refuses a legacy VFIO container)
        raise BadInput(f"--platform shadow: a first-stage vIOMMU (x-flts=on) cannot shadow; "
                       f"use --platform nested: {rec.path}/config.toml")
    host = System.boot(HOST_UNIT, "mainline", memory=memory, page_range=HOST_PAGES,
                       name="host-dmar0")
    name = host_name(setup.traced)
    host.probe(name)
    cls = IommufdNested if platform == "nested" else VfioShadow
    return vmm, host, {name: cls(vmm, host, setup.traced)}


def _chain(first, rest):
    yield first
    yield from rest


def simulate_trace(path, constants, *, profile=None, policy="recorded",
                   platform="bare", exits="trap", seed=0, device=None) -> dict:
    import time

    wall = time.perf_counter()
    result = TimedTrace(path, constants, profile=profile, policy=policy, platform=platform,
                        exits=exits, seed=seed, device=device).run()
    result["timing"] = {"wall_s": round(time.perf_counter() - wall, 3)}
    return result
