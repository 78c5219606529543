"""Seed 001's contention workload (``context-flush``): one CPU keeps changing a *present*
scalable-mode context entry (``context_flip_pri``, drivers/iommu/intel/iommu.c v6.11-v6.12:
toggle PRE under iommu->lock, then ``intel_context_flush_present(info, context, did, true)``:
a device-selective context-cache invalidation, then for every present PASID entry a PASID-cache
DSI and an IOTLB DSI of its DID, then the device-TLB), while ``contenders`` other CPUs run
operations that take iommu->lock on other devices; measured: iommu->lock's hold and wait times
by role and the contenders' throughput.

``--flush inside`` is the patch as posted and merged for this path (the flushes before
``spin_unlock(&iommu->lock)``: ``assert_spin_locked`` in the flush_domains branch);
``--flush outside`` is Kevin Tian's proposal (seed thread, 2024-06-27): only the PRE write and,
later, the PASID-table walk collecting the DIDs run under the lock, the invalidations after it
(``driver/context.py`` ``context_flip_pri`` with the profile switch
``context_flush_under_iommu_lock``).  The flipping device has ``--pasids`` PASIDs besides
RID_PASID, each attached to a domain of its own: ``--pasids + 1`` DIDs are flushed per change.
It has ATS, as Linux requires for PRI (``intel_iommu_enable_iopf``: -ENODEV without
``ats_enabled``), so each change ends with a device-TLB invalidation.

What the contenders do (``--contend``), each on its own device, pausing an exponential time of
mean ``--think-ns`` between operations (from ``--seed``) - the paths that take iommu->lock in
Linux 6.12 (iommu.c, pasid.c):

* ``attach``: ``intel_iommu_attach_device`` alternating between two paging domains: the old
  RID_PASID entry torn down (``intel_pasid_tear_down_entry``: iommu->lock around the entry),
  ``domain_detach_iommu`` and ``domain_attach_iommu`` (iommu->lock around the DID bitmap/IDA),
  ``intel_pasid_setup_first_level``/``_second_level`` (iommu->lock around the entry);
* ``pasid``: ``intel_iommu_set_dev_pasid`` then ``intel_iommu_remove_dev_pasid`` of PASID 1
  (the same four iommu->lock sections, as SVA bind/unbind or an iommufd PASID attach makes).

The other iommu->lock takers are not run as contenders: ``domain_context_mapping_one`` /
``domain_context_clear_one`` (legacy mode), ``device_pasid_table_setup`` / ``_teardown``
(probe/release; both hold it around ``iommu_context_addr`` and the entry, 6.12 flushing after
the unlock), ``intel_pasid_setup_page_snoop_control``, ``intel_pasid_setup_dirty_tracking``,
``copy_translation_tables`` (kdump).

Plain map/unmap never takes iommu->lock (``intel_iommu_map_pages``, ``cache_tag_flush_range``
take ``domain->cache_lock`` and the queue's ``qi->q_lock`` only), so DMA-API traffic is not a
contender here; it shares only the invalidation queue (q_lock) with the flips, whichever side
of iommu->lock they run on.  Of the mode, ``--unit``, ``--profile``, ``--platform`` and
``--seed`` matter; ``--policy``, ``--iova-pages`` and ``--ats`` shape only ``DmaWorld``'s own
device, which makes no DMA here.

Not modelled: Linux's walk visits every PASID up to ``max_pasid`` through
``intel_pasid_get_entry`` (allocating absent leaf tables, GFP_ATOMIC); the model's walk reads
the installed PASID-table pages only, in both variants, so the absolute hold time is a lower
bound while the inside-outside difference (the invalidations) is what it measures;
Kevin's bitmap de-duplicating DIDs shared by several PASIDs (each PASID here has its own
domain, so both variants flush the same DIDs); 6.12 stable's later removal of the walk
(``intel_context_flush_no_pasid``); vIOMMU platforms (the emulated unit is legacy mode).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vtdsim.driver.context import context_flip_pri
from vtdsim.errors import BadInput
from vtdsim.simulation.lock_watch import LockWatch
from vtdsim.simulation.metrics import Histogram
from vtdsim.simulation.workloads.common import DmaWorld

FLUSH = ("inside", "outside")
CONTEND = ("attach", "pasid")
FLIPPER = "04:00.0"
MAX_CONTENDERS = 31  # one device per device number on bus 5 (05:01.0 ... 05:1f.0)
CONTENDER_PASID = 1


@dataclass(frozen=True)
class ContextFlushParams:
    pasids: int = 4
    contenders: int = 2
    contend: str = "attach"
    flush: str = "inside"
    gap_ns: float = 0.0  # the flipping CPU's pause between two changes
    think_ns: float = 2000.0  # a contender's mean pause between two operations (exponential)

    def check(self) -> None:
        if self.flush not in FLUSH:
            raise BadInput(f"--flush {self.flush!r}: expected inside or outside")
        if self.contend not in CONTEND:
            raise BadInput(f"--contend {self.contend!r}: expected attach or pasid")
        if not 0 <= self.pasids < 1 << 15:
            raise BadInput(f"--pasids {self.pasids}: 0 to 32767 (the model's PASID table is "
                           f"one directory page)")
        if not 1 <= self.contenders <= MAX_CONTENDERS:
            raise BadInput(f"--contenders {self.contenders}: 1 to {MAX_CONTENDERS}")
        for name, value in (("--gap-ns", self.gap_ns), ("--think-ns", self.think_ns)):
            if not value >= 0:  # NaN too
                raise BadInput(f"{name} {value}: must not be negative")

    @property
    def cpus(self) -> int:
        return 1 + self.contenders


def _check_machine(world: DmaWorld) -> None:
    mode, iommu = world.mode, world.system.iommu
    if mode.platform != "bare":
        raise BadInput(f"context-flush --platform {mode.platform}: bare only (the emulated "
                       f"unit runs legacy mode: no PASID table to walk)")
    if not (iommu.sm_enabled and iommu.caps.pasid):
        raise BadInput(f"context-flush --unit {mode.unit}: needs a scalable-mode unit with "
                       f"PASID support (e.g. server-sm)")
    if not world.system.profile.cache_tags:
        raise BadInput(f"context-flush --profile {mode.profile}: context_flip_pri and "
                       f"intel_context_flush_present are v6.11+; use linux-6.12 or mainline")


class ContextFlush:
    """The flipping CPU, the contending CPUs, and the iommu->lock watch."""

    def __init__(self, world: DmaWorld, p: ContextFlushParams, stop):
        p.check()
        _check_machine(world)
        self.world, self.p, self.stop = world, p, stop
        system = world.system
        self.driver, self.iommu = system.driver, system.iommu
        self.flip_profile = system.profile.with_(
            context_flush_under_iommu_lock=p.flush == "inside")
        self.roles: dict[object, str] = {}
        self.watch = LockWatch(world.machine, self.iommu.lock, self._role)
        self.flip_ns, self.op_ns = Histogram(), Histogram()
        self.ops, self.flips_total = 0, 0
        self.epoch = world.start_ns
        # Contenders pause a random (exponential) time between operations, drawn from the
        # run's seed: without it the CPUs fall into lockstep and a deterministic phase, not
        # the lock, decides whether they ever collide.
        self.rng = random.Random(world.mode.seed)
        self.warmup_ios = 2  # the first changes walk cold PASID-table lines

    def _role(self, process) -> str:
        return self.roles.get(process, "other")

    # -- set-up (untimed: the boot's direct executor) --------------------------------------
    def setup(self):
        system, driver, iommu = self.world.system, self.driver, self.iommu
        self.flipper = system.probe(FLIPPER, ats=True, pasid=True)
        system.attach([FLIPPER])
        for pasid in range(1, self.p.pasids + 1):
            domain = system.run(driver.domain_alloc_paging(iommu, type="unmanaged"))
            self._ok(system.run(driver.set_dev_pasid(domain, self.flipper, pasid)),
                     "set_dev_pasid")
        self.contenders = [self._contender(i) for i in range(1, self.p.contenders + 1)]
        return
        yield  # a generator, as every workload's set-up

    def _contender(self, index: int):
        system, driver = self.world.system, self.driver
        name = f"05:{index:02x}.0"
        info = system.probe(name, pasid=self.p.contend == "pasid")
        first = system.attach([name])
        other = system.run(driver.domain_alloc_paging(self.iommu, type="unmanaged"))
        return info, [first, other]

    @staticmethod
    def _ok(ret: int, what: str) -> None:
        if ret:
            raise BadInput(f"context-flush set-up: {what} failed with {ret}")

    # -- the CPUs ----------------------------------------------------------------------------
    def start(self) -> None:
        env = self.world.env
        self.roles[env.process(self.flip_loop())] = "flip"
        for info, domains in self.contenders:
            self.roles[env.process(self.contend_loop(info, domains))] = "contend"

    def _measuring(self) -> None:
        """The run's warm-up ended (``DmaWorld.start_measuring`` moved ``start_ns``): the
        figures start again from zero."""
        if self.world.start_ns != self.epoch:
            self.epoch = self.world.start_ns
            self.watch.reset()
            self.flip_ns, self.op_ns, self.ops = Histogram(), Histogram(), 0

    def flip_loop(self):
        world, env, machine = self.world, self.world.env, self.world.machine
        enable = True
        while True:
            self._measuring()
            start = env.now
            ret = yield from machine.run_op(context_flip_pri(self.flipper, enable,
                                                             self.flip_profile))
            self._ok(ret, "context_flip_pri")
            self.flip_ns.add(env.now - start)
            world.m.cpu_busy_ns += env.now - start
            world.m.ios += 1
            enable = not enable
            self.stop.check()
            if self.p.gap_ns:
                yield env.timeout(self.p.gap_ns)

    def contend_loop(self, info, domains):
        env, machine = self.world.env, self.world.machine
        turn = 1
        while True:
            start = env.now
            if self.p.contend == "attach":
                ret = yield from machine.run_op(self.driver.attach_dev(domains[turn], info))
                self._ok(ret, "attach_dev")
                turn ^= 1
            else:
                ret = yield from machine.run_op(
                    self.driver.set_dev_pasid(domains[1], info, CONTENDER_PASID))
                self._ok(ret, "set_dev_pasid")
                yield from machine.run_op(self.driver.remove_dev_pasid(info, CONTENDER_PASID))
            self._measuring()
            self.op_ns.add(env.now - start)
            self.ops += 1
            if self.p.think_ns:
                yield env.timeout(self.rng.expovariate(1 / self.p.think_ns))

    # -- figures -----------------------------------------------------------------------------
    def figures(self, elapsed_ns: float) -> dict:
        """The lock's figures over the measured interval (``elapsed_ns``)."""
        flips = self.world.m.ios
        f_hold, f_wait, _ = self.watch.figures("flip")
        c_hold, c_wait, c_waited = self.watch.figures("contend")
        per_s = 1e9 / elapsed_ns if elapsed_ns else 0.0
        return {
            "flush": self.p.flush, "affected_dids": self.p.pasids + 1,
            "flips_per_s": round(flips * per_s, 1),
            "flip_ns_mean": round(self.flip_ns.mean, 1),
            "flip_hold_ns_mean": round(f_hold.mean, 1),
            "flip_hold_ns_p99": f_hold.percentile(99),
            "flip_lock_ns_per_flip": round(f_hold.total / flips, 1) if flips else 0.0,
            "flip_wait_ns_mean": round(f_wait.mean, 1),
            "contender_ops_per_s": round(self.ops * per_s, 1),
            "contender_op_ns_mean": round(self.op_ns.mean, 1),
            "contender_op_ns_p99": self.op_ns.percentile(99),
            "contender_hold_ns_mean": round(c_hold.mean, 1),
            "contender_wait_ns_mean": round(c_wait.mean, 1),
            "contender_wait_ns_p99": c_wait.percentile(99),
            "contender_waited_fraction": round(c_waited / c_wait.n, 4) if c_wait.n else 0.0,
            "iommu_lock_busy_fraction": round(self.watch.held_ns / elapsed_ns, 4)
            if elapsed_ns else 0.0,
        }
