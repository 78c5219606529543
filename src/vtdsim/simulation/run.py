"""One timed run: boot the machine for a mode, set the workload up (rings filled, windows
mapped), measure from then on until ``--duration`` of simulated time or ``--ios`` I/Os, and
report the figures a result carries (``RESULT_KEYS``), as differences of the model's own
counters over the measured interval.

The set-up (boot, rings filled, windows mapped) and a warm-up of ``warmup_ios`` I/Os (each
workload's: one cycle of its rings or queues, or enough reads to fill the IOTLB) run first and
are not measured, so a short run does not report the pre-filled ring's burst.

Not modelled: a steady-state detector (the warm-up length is fixed per workload).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from vtdsim.simulation.metrics import model_counters
from vtdsim.simulation.workloads import context_flush, dma_window, nic, nvme
from vtdsim.simulation.workloads.common import DmaWorld, Mode

WORKLOADS = {
    "nic-rx": (nic.NicParams, lambda w, p, s: nic.build("nic-rx", w, p, s)),
    "nic-tx": (nic.NicParams, lambda w, p, s: nic.build("nic-tx", w, p, s)),
    "nvme": (nvme.NvmeParams, nvme.Nvme),
    "dma-window": (dma_window.WindowParams, dma_window.DmaWindow),
    "context-flush": (context_flush.ContextFlushParams, context_flush.ContextFlush),
}
PSC_LEVELS = (1, 2, 3, 4)
FORGET_EVERY = 4096  # I/Os between two hand-overs of the driver's submission log


class Stop:
    """Ends the warm-up after ``warmup`` I/Os, then the run after ``ios`` measured I/Os
    (``None``: the caller runs until a time); also keeps the driver's submission log and the
    histograms' pending values from growing with the run."""

    def __init__(self, world: DmaWorld, ios: int | None, warmup: int = 0):
        self.world, self.target, self.warmup = world, ios, warmup
        self.warmed = world.env.event()
        self.event = world.env.event()
        self._next_forget = FORGET_EVERY

    def measuring(self) -> None:
        """The warm-up is over: counts start again from zero."""
        self.warmup = 0
        self._next_forget = FORGET_EVERY

    def check(self) -> None:
        ios = self.world.m.ios
        if ios >= self._next_forget:
            self.world.system.take_submissions()
            self.world.m.fold()
            self._next_forget = ios + FORGET_EVERY
        if self.warmup:
            if ios >= self.warmup and not self.warmed.triggered:
                self.warmed.succeed()
            return
        if self.target is not None and ios >= self.target and not self.event.triggered:
            self.event.succeed()


def ncpus_for(params) -> int:
    return max(2, getattr(params, "flows", 1), getattr(params, "jobs", 1),
               getattr(params, "cpus", 1))


def simulate(workload: str, mode: Mode, params, constants) -> dict:
    """Run ``workload`` with ``params`` under ``mode``; the result dict (``timing`` holds the
    wall-clock figures, the only part that differs between two runs of one seed: the whole
    run's, and ``setup_s``, until the measured part began - boot, set-up, warm-up)."""
    wall = time.perf_counter()
    world = DmaWorld(mode, constants, ncpus_for(params))
    stop = Stop(world, mode.ios)
    load = WORKLOADS[workload][1](world, params, stop)
    env = world.env
    env.run(env.process(load.setup()))
    stop.warmup = load.warmup_ios
    world.start_measuring()
    load.start()
    if stop.warmup:
        env.run(until=stop.warmed)
        world.start_measuring()
        stop.measuring()
    setup = time.perf_counter() - wall
    env.run(until=stop.event if mode.ios is not None else env.now + mode.duration_ns)
    result = summarize(world, workload, params)
    if hasattr(load, "figures"):  # a workload's own figures (context-flush: the lock's)
        result.update(load.figures(env.now - world.start_ns))
    result["timing"] = {"wall_s": round(time.perf_counter() - wall, 3),
                        "setup_s": round(setup, 3)}
    return result


def _per(value: float, denominator: float) -> float:
    return round(value / denominator, 4) if denominator else 0.0


def summarize(world: DmaWorld, workload: str, params) -> dict:
    d = model_counters(world.machine)
    d.subtract(world.start_counters)
    m, mode = world.m, world.mode
    elapsed = world.env.now - world.start_ns
    ios, pages = m.ios, m.bytes / 4096  # the per-4k figures are per 4 KiB of data moved
    out = {"workload": workload, **asdict(params), "policy": mode.policy,
           "domain_type": world.domain_type, "profile": mode.profile,
           "platform": mode.platform, "exits": mode.exits, "unit": mode.unit,
           "iova_pages": mode.iova_pages,
           "ats": world.info.ats_enabled,
           "seed": mode.seed, "sim_ns": round(elapsed, 1), "ios": ios, "dropped": m.dropped}
    if workload == "nvme":
        out["iops"] = round(ios / elapsed * 1e9, 1) if elapsed else 0.0
    out["gbps"] = round(m.bytes * 8 / elapsed, 4) if elapsed else 0.0
    descriptors = sum(v for k, v in d.items() if k.startswith("desc:"))
    out.update({
        "iotlb_misses_per_4k": _per(d["iotlb_miss"], pages),
        "pscache_misses_per_4k": {f"l{lv}": _per(d[f"pscache_miss_l{lv}"], pages)
                                  for lv in PSC_LEVELS},
        "translation_reads_per_4k": _per(d["walk_reads"], pages),
        "iotlb_miss_rate": _per(d["iotlb_miss"], m.translations),  # per translation
        "exits_per_io": _per(d["exits"], ios),
        "vmm_ns_per_io": _per(d["vmm_ns"], ios),  # the VMM's priced work (exits or side core)
        "iqt_writes_per_io": _per(d["iqt_writes"], ios),
        "descriptors_per_io": _per(descriptors, ios),
        "map_ns": round(m.map.mean, 1),
        "unmap_ns": round(m.unmap.mean, 1),
        "cpu_ns_per_io": _per(m.cpu_busy_ns, ios),
        "latency_ns_p50": m.latency.percentile(50),
        "latency_ns_p99": m.latency.percentile(99),
        "dma_latency_penalty_ns": round(m.penalty.mean, 2),
        "cpu_ghz": world.constants["cpu_ghz"],
        "lock_wait_ns": {k: round(v, 1) for k, v in sorted(world.machine.lock_wait_ns.items())},
    })
    return out


def make_params(workload: str, **values):
    return WORKLOADS[workload][0](**values)


__all__ = ["Mode", "simulate", "make_params", "WORKLOADS"]
