"""Replay a recording through the driver model (``vtdsim replay DIR``): pick the recorded
kernel's profile (config.toml's first line: linux-6.1 or linux-6.12), build the unit from the
recorded CAP/ECAP, boot it as ``intel_iommu_init`` does (``init_hw``, probe, one default
domain per IOMMU group attached in group order, then translation on), feed the guest's
map/unmap calls (calls.py) in recorded order, each on its (CPU, context) stream with its CPU's
per-CPU state (the flush queue's ring), entering the invalidation queue when the trace shows
that stream's ``qi_submit`` line (cpus.py), and compare what the model submits with the
recording (recorded.py, compare.py).  A 6.12 trace starts before the boot: its group set-up's
direct mappings are left out (``skip_boot_mappings``) and the model's boot is compared with
the trace.

Three processes share the work (workers.py): this one runs the model; one reads the guest
trace and rebuilds its calls; one reads both logs' recorded submissions and compares them with
the model's, which this process hands it as the model makes them.

The model's input is only what the driver is asked to do: the recorded CAP/ECAP, kernel command
line, device list and groups, and the map/unmap calls.  It decides its own default-domain
policy (drivers/iommu/iommu.c ``iommu_subsys_init`` over Debian's lazy Kconfig default, then
``intel_iommu_init``'s caching-mode override) and never reads the recorded descriptors to
decide what to submit.  Maps are replayed at the recorded IOVAs (``iommu_map_sg``), unmaps
through the DMA API's unmap path (dma-iommu.c ``__iommu_dma_unmap``: strict sync or the flush
queue), so the recorded IOVAs, not the model's IOVA allocator, decide addresses.

The flush-queue timer runs on jiffies (Debian's CONFIG_HZ=250, 4 ms ticks): ``mod_timer(jiffies
+ msecs_to_jiffies(10))`` is 3 ticks, and the timer wheel rounds a level-0 expiry up by one
tick so it never fires early (kernel/time/timer.c ``calc_index``), so the timer fires on the 4th
tick after the one that armed it: 12 to 16 ms after the unmap in jiffies.  But jiffies is not
the trace clock: it advances in the tick handler, and a tick delivered late (a vCPU the host
did not run; TCG) is caught up at once from the clocksource (kernel/time/tick-sched.c
``tick_do_update_jiffies64``), so in trace time the timer may fire sooner - the 6.12
recordings show flushes 10.0 and 8.8 ms after the only unmap that could have armed them.  And
when its softirq then runs is the guest's scheduling (the tick's CPU:
``get_nohz_timer_target`` may queue it on the other CPU; ksoftirqd; a vCPU the host did not
run - with both CPUs busy the recordings show up to 45 ms).  So the callback runs at the
first softirq ``qi_submit`` line no call explains after the arming (cpus.py ``defer``), and
decides itself what it flushes.

Not modelled: interrupt remapping (its ``iec_inv`` descriptors are counted apart), devices
other than the traced one doing DMA during the trace, boot-time work between the model's boot
and the trace's start, the IOVA allocator and its per-CPU rcaches (IOVAs are recorded),
several DMAR units, a hard IRQ nested in the timer's softirq re-arming the timer before the
flush's ``qi_submit`` line (the model's callback starts at that line, so it would re-arm
later).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from vtdsim.driver import iommu_core
from vtdsim.driver.device import DeviceInfo
from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_unmap_page
from vtdsim.driver.pgtable import IOMMU_READ, IOMMU_WRITE
from vtdsim.driver.profiles import profile_for_kernel
from vtdsim.errors import BadInput
from vtdsim.hardware.capabilities import Capabilities
from vtdsim.hardware.request import format_sid, parse_sid
from vtdsim.simulation.system import System
from vtdsim.traces import compare as cmp
from vtdsim.traces import events as ev
from vtdsim.traces.calls import CallStats, MapCall, SubmitMark, reconstruct_calls, stream_key
from vtdsim.traces.cpus import CpuStreams
from vtdsim.traces.qemu_log import parse_qemu_lines
from vtdsim.traces.recorded import ModelSubmission, compare_recording
from vtdsim.traces.recording import DmesgInfo, Recording
from vtdsim.traces.textio import numbered_lines
from vtdsim.traces.workers import Offloaded, prefetched

HZ = 250  # Debian's CONFIG_HZ
TICK_NS = 1_000_000_000 // HZ
FQ_TIMEOUT_MS = 10  # IOVA_DEFAULT_FQ_TIMEOUT
# msecs_to_jiffies rounds up; the timer wheel adds one tick (see the module docstring).
FQ_TIMER_TICKS = -(-FQ_TIMEOUT_MS * HZ // 1000) + 1
# In trace time the timer may fire any time after its arming (module docstring): replay arms
# it for at once and waits for its softirq line.
FQ_REPLAY_NS = 0
ATS_QUEUE_DEPTH = 32  # QEMU's ATS capability advertises 0, which means 32 (PCIe 10.5.1.2)
LAZY_TOLERANCE = 0.05
PAGE_SIZE = 4096
PAGE_MASK = PAGE_SIZE - 1
MAPPED_PAGES = 64  # enough of the trace's first mappings to recognise its device's DMA


# -- what the recording tells the model --------------------------------------------------------
@dataclass
class Setup:
    """The model's inputs read from the recording (never its descriptors)."""

    name: str
    dmesg: DmesgInfo
    cmdline: str
    ncpus: int
    traced: int  # source-id of the device whose map/unmap events the trace holds
    traced_how: str
    ats: bool


def _kernel_cmdline(rec: Recording) -> str:
    return rec.config["kernel_cmdline"]


def _trace_header_ncpus(rec: Recording) -> int:
    """``#P:<n>`` of the ftrace header (CPUs the buffer covers)."""
    in_trace = False
    for _, line in numbered_lines(rec.guest_log):
        if line.startswith("=== "):
            in_trace = line.strip() == "=== TRACE"
            continue
        if in_trace and not line.startswith("#"):
            break
        if in_trace and "#P:" in line:
            return int(line.rsplit("#P:", 1)[1].split()[0])
    return 2


def _pci_function_lines(rec: Recording) -> set[int]:
    """Devices a driver's "pci function <bdf>" dmesg line names (nvme_probe prints it)."""
    found = set()
    for _, line in numbered_lines(rec.guest_log):
        if line.startswith("=== GROUPS"):
            break
        if ": pci function " in line:
            found.add(parse_sid(line.rsplit("pci function ", 1)[1].split()[0]))
    return found


def _dma_candidates(dmesg: DmesgInfo) -> set[int]:
    """Devices whose IOMMU group has a paging default domain (sysfs type DMA or DMA-FQ): only
    those make ``iommu:map``/``unmap`` events through the DMA API."""
    return {parse_sid(name) for g in dmesg.groups if g.type in ("DMA", "DMA-FQ")
            for name in g.devices}


def _first_mapped_pages(rec: Recording, dmesg: DmesgInfo) -> set[tuple[int, int]]:
    """(IOVA page, physical page) of the trace's first ``MAPPED_PAGES`` mapped pages, the
    boot's direct mappings left out (``skip_boot_mappings``: other domains than a device's)."""
    grouped = {name for group in dmesg.groups for name in group.devices}
    pages: set[tuple[int, int]] = set()
    for event in skip_boot_mappings(rec.guest_events(), grouped, [0]):
        if type(event) is not ev.Map:
            continue
        for offset in range(0, event.size, PAGE_SIZE):
            pages.add((event.iova + offset, event.paddr + offset))
        if len(pages) >= MAPPED_PAGES:
            break
    return pages


def _translating_device(rec: Recording, dmesg: DmesgInfo, candidates: set[int]) -> int | None:
    """The candidate QEMU's log shows translating one of the trace's mapped pages to the
    physical page the trace mapped it to (``vtd_dmar_translate``: the device's DMA reached the
    IOVA the guest mapped for it); the first such translation decides, since devices sharing
    a group share the mappings."""
    pages = _first_mapped_pages(rec, dmesg)
    if not pages:
        return None
    wanted = frozenset({"vtd_dmar_translate"})
    for event in parse_qemu_lines(numbered_lines(rec.qemu_log), str(rec.qemu_log), wanted):
        if (event.sid in candidates
                and (event.iova & ~PAGE_MASK, event.gpa & ~PAGE_MASK) in pages):
            return event.sid
    return None


def _traced_device(rec: Recording, dmesg: DmesgInfo, device: str | None) -> tuple[int, str]:
    """Whose map/unmap events the trace holds: ``--device``; else the one device a driver
    named in dmesg; else the one device in a DMA group; else the device QEMU's log shows
    translating the trace's mappings.  Otherwise an error listing the candidates."""
    if device is not None:
        return parse_sid(device), "given with --device"
    candidates = _dma_candidates(dmesg)
    named = _pci_function_lines(rec) & candidates if candidates else _pci_function_lines(rec)
    if len(named) == 1:
        return named.pop(), "dmesg: pci function"
    if len(candidates) == 1:
        return next(iter(candidates)), "the only device in a DMA group"
    sid = _translating_device(rec, dmesg, candidates)
    if sid is not None:
        return sid, "QEMU's log: translates the trace's mappings"
    names = ", ".join(format_sid(c) for c in sorted(candidates)) or "none"
    raise BadInput(f"cannot tell which device the trace's map/unmap events belong to "
                   f"(devices in DMA groups: {names}); pass --device BB:DD.F",
                   where=str(rec.path))


def read_setup(rec: Recording, device: str | None = None) -> Setup:
    dmesg = rec.dmesg()
    traced, how = _traced_device(rec, dmesg, device)
    ats = "ats=on" in rec.config["qemu_device_args"]
    return Setup(rec.name, dmesg, _kernel_cmdline(rec), _trace_header_ncpus(rec), traced, how,
                 ats)


def _cmdline_bool(cmdline: str, key: str) -> bool | None:
    """``iommu.strict=1`` style options (kernel ``kstrtobool``: 1/y/on true, 0/n/off false)."""
    value = None
    for word in cmdline.split():
        name, _, arg = word.partition("=")
        if name == key:
            value = arg.lower() in ("1", "y", "yes", "on")
    return value


def model_policy(setup: Setup, caps: Capabilities, profile) -> iommu_core.IommuPolicy:
    """The default-domain policy the model reaches by itself (Debian: lazy by Kconfig)."""
    policy = iommu_core.iommu_subsys_init(
        "lazy", cmdline_strict=_cmdline_bool(setup.cmdline, "iommu.strict"),
        cmdline_passthrough=_cmdline_bool(setup.cmdline, "iommu.passthrough"))
    iommu_core.intel_iommu_caching_mode_policy(policy, [caps], profile)
    return policy


# -- the model machine -------------------------------------------------------------------------
class RecordedIovas:
    """The IOVA space as the recording used it: the DMA API's unmap path gives ranges back here;
    the recorded IOVAs already show Linux's allocator, so nothing is reallocated."""

    def __init__(self) -> None:
        self.released_pages = 0

    def free_iova_fast(self, pfn: int, pages: int, cpu: int = 0) -> None:
        self.released_pages += pages


class ModelMachine:
    """The simulation ``System`` booted from the recording's CAP/ECAP (translation still off:
    ``boot`` attaches the groups first), with the model's submissions taken per IQT write and
    tagged with what caused them (``recorded.ModelSubmission``)."""

    def __init__(self, setup: Setup, profile_name: str, vmm=None):
        self.origin = "boot: init_hw"
        self.caps = Capabilities(setup.dmesg.cap, setup.dmesg.ecap)
        # ``vmm``: the guest runs on the VMM model's emulated unit (vmm_replay.py) instead of
        # a unit built from the recorded words (which the VMM's words then equal).
        self.system = System.boot(self.caps, profile_name, name=setup.dmesg.iommu,
                                  scalable=setup.dmesg.scalable_mode, ncpus=setup.ncpus,
                                  enable_translation=False, vmm=vmm)
        self.profile = self.system.profile
        self.unit, self.iommu = self.system.unit, self.system.iommu
        self.driver, self.executor = self.system.driver, self.system.executor
        self.annotations = self.system.events  # the model's map/unmap events (consistency)

    def run(self, gen, origin: str) -> list[ModelSubmission]:
        """Run one driver operation; the IQT writes it made."""
        self.origin = origin
        self.executor.run(gen)
        return self.take_submissions()

    def take_submissions(self, origin: str | None = None) -> list[ModelSubmission]:
        origin = self.origin if origin is None else origin
        return [(origin, tuple(descs)) for descs in self.system.take_submissions()]


@dataclass
class Boot:
    """What the model's boot did: its submissions, the traced device's domain and the
    policy."""

    submissions: list[ModelSubmission]
    policy: iommu_core.IommuPolicy
    group_types: dict[int, str]
    traced_info: DeviceInfo
    cookie: IommuDmaCookie


def _probe_all(m: ModelMachine, setup: Setup, submissions: list) -> dict[int, DeviceInfo]:
    """Every device in dmesg's "Adding to iommu group" order; only the traced device has ATS
    (the recordings' config enables it on that device alone)."""
    infos = {}
    for name, _ in setup.dmesg.group_adds:
        sid = parse_sid(name)
        m.origin = f"boot: probe {name}"
        infos[sid] = m.system.probe(name, ats=setup.ats and sid == setup.traced,
                                    ats_qdep=ATS_QUEUE_DEPTH)
        submissions += m.take_submissions()
    return infos


def _attach_groups(m: ModelMachine, setup: Setup, policy, infos: dict[int, DeviceInfo],
                   submissions: list) -> tuple[dict[int, str], dict[int, object]]:
    """One default domain per group, in group order, each member attached in turn."""
    group_types, domains = {}, {}
    for group in setup.dmesg.groups:
        members = [infos[parse_sid(name)] for name in group.devices]
        dtype = iommu_core.iommu_get_def_domain_type(policy, members[0])
        group_types[group.group] = dtype
        if dtype == "identity":
            domain = m.driver.domain_alloc_identity()
        else:
            domain = m.executor.run(m.driver.domain_alloc_paging(m.iommu, type=dtype))
        for info in members:
            submissions += m.run(m.driver.attach_dev(domain, info), f"boot: attach {info.name}")
            domains[info.sid] = domain
    return group_types, domains


def boot(m: ModelMachine, setup: Setup, fq_timeout_ns: int = FQ_REPLAY_NS) -> Boot:
    """init_hw, probe every device, one default domain per group attached in group order
    (DIDs from 2 in that order), then translation on (6.1 ``intel_iommu_init``)."""
    submissions = m.take_submissions()  # System.boot ran init_hw
    policy = model_policy(setup, m.caps, m.profile)
    infos = _probe_all(m, setup, submissions)
    if setup.traced not in infos:
        raise BadInput(f"traced device {format_sid(setup.traced)} is in no IOMMU group")
    group_types, domains = _attach_groups(m, setup, policy, infos, submissions)
    submissions += m.run(m.iommu.iommu_enable_translation(), "boot: translation on")
    cookie = IommuDmaCookie(m.driver, domains[setup.traced], RecordedIovas(),
                            ncpus=setup.ncpus, fq_timeout_ns=fq_timeout_ns)
    return Boot(submissions, policy, group_types, infos[setup.traced], cookie)


@dataclass
class TraceEnd:
    """What the guest worker sends after the last call: its tally, the trace's last
    timestamp (the flush-queue timer may still fire before it), and the boot's map/unmap
    events the trace holds (``skip_boot_mappings``)."""

    calls: CallStats
    last_us: int
    boot_mappings: int = 0


def skip_boot_mappings(events, grouped: set[str], skipped: list[int]):
    """The trace's events without the map/unmap events of the boot's group set-up.

    A trace that starts before ``bus_iommu_probe`` (6.12's) shows each grouped device's
    ``add_device_to_group`` and ``attach_device_to_domain``; between them
    ``iommu_setup_default_domain`` (iommu.c) maps a group's direct regions
    (``iommu_create_device_direct_mappings``: intel ``intel_iommu_get_resv_regions``'s
    RMRRs and the ISA-bridge floppy region) into the new default domain before its first
    attach - another domain than the traced device's, with no cache tag or unit yet, so it
    submits nothing.  Those events end when every grouped device is attached, or when another
    task maps (a driver: ``intel_iommu_init`` sets the groups up before any driver probes); a
    trace that starts after that (6.1's) shows no such event and loses nothing.
    ``skipped[0]`` counts the events left out."""
    events, waiting, booting, task = iter(events), set(grouped), False, None
    for event in events:
        kind = type(event)
        if kind is ev.AddDeviceToGroup:
            booting, task = True, event.pid
        elif kind is ev.AttachDevice:
            waiting.discard(event.device)
            booting, task = bool(waiting), event.pid
            if not booting:
                yield event
                break
        elif kind is ev.Map or kind is ev.Unmap:
            if not booting or event.pid != task:
                yield event
                break
            skipped[0] += 1
            continue
        yield event
    yield from events


def guest_calls(path: str):
    """The guest trace's calls in the order Linux made them (calls.py), each as ``(call,
    marks, marks_us)``, each ``qi_submit`` as the ``SubmitMark`` of its stream (when, never what:
    cpus.py), then a ``TraceEnd``.  ``iec_inv`` lines (interrupt remapping, not modelled) give
    no mark.  Marks of a call's stream that come right after it, before anything else, travel
    with it as ``marks``: granting them at the call's start changes nothing (no other item
    comes between) and spares a message and a wake-up each."""
    rec = Recording(path)
    grouped = {name for group in rec.dmesg().groups for name in group.devices}
    stats, last_us, skipped = CallStats(), 0, [0]
    call, marks, marks_us = None, 0, 0
    events = skip_boot_mappings(rec.guest_events(), grouped, skipped)
    for item in reconstruct_calls(events, stats):
        last_us = max(last_us, item.ts_us)
        if type(item) is ev.QiSubmit:
            if item.label == cmp.IEC:
                continue
            key = stream_key(item.cpu, item.pid, item.context)
            if call is not None and key == call.stream:
                marks, marks_us = marks + 1, item.ts_us
                continue
            item = SubmitMark(item.line, item.ts_us, key)
        if call is not None:
            yield call, marks, marks_us
            call = None
        if type(item) is SubmitMark:
            yield item
        else:
            call, marks, marks_us = item, 0, 0
    if call is not None:
        yield call, marks, marks_us
    yield TraceEnd(stats, last_us, skipped[0])


# -- the replay --------------------------------------------------------------------------------
@dataclass
class Result:
    """Everything the report prints."""

    setup: Setup
    profile: str
    seed: int
    boot: Boot
    boot_cmp: cmp.BootComparison | None
    guest: cmp.PairedStream
    qemu: cmp.PairedStream
    calls: CallStats
    machine: ModelMachine
    iec: Counter = field(default_factory=Counter)  # "guest trace" -> iec_inv not modelled
    recorded_flushes: Counter = field(default_factory=Counter)
    after_trace: Counter = field(default_factory=Counter)
    misfits: int = 0
    tie_groups: int = 0
    aligned: bool = True
    boot_mappings: int = 0  # the boot's map/unmap events in the trace, not replayed
    # tied groups QEMU took in another order: the model's IQT writes in QEMU's order
    exit_orders: list[tuple[int, ...]] = field(default_factory=list)


class Replayer:
    """Feeds the calls to the machine and the machine's submissions to the recorded side."""

    def __init__(self, rec: Recording, setup: Setup, profile: str, seed: int, vmm=None):
        self.rec, self.setup, self.seed = rec, setup, seed
        self.machine = ModelMachine(setup, profile, vmm)
        self.boot = boot(self.machine, setup)
        self.domain = self.boot.cookie.domain
        self._hand_over = None  # where the model's submissions go (the recorded side's feed)
        self._pending = self.machine.system.descriptors_pending  # asked at every lock
        self.cpus = CpuStreams(self.machine.executor, self.machine.iommu.qi.lock,
                               self._submitted, self._defer_timer)
        self._timer_deferred = False

    def _call(self, call, marks: int, marks_us: int) -> None:
        now_ns = call.ts_us * 1000
        if type(call) is MapCall:
            gen = self.machine.driver.map_sg(self.domain, call.iova, call.chunks,
                                             IOMMU_READ | IOMMU_WRITE)
            origin = f"map call, guest line {call.line}"
        else:
            gen = iommu_dma_unmap_page(self.boot.cookie, call.iova, call.size, call.cpu,
                                       now_ns)
            origin = f"unmap, guest line {call.line}"
        self.cpus.start(call.stream, gen, origin, marks, marks_us)
        self._defer_timer()

    def _submitted(self, origin: str) -> int:
        """Hand the IQT writes made since the last call over; how many descriptors."""
        if not self._pending():
            return 0
        descs = 0
        for submission in self.machine.take_submissions(origin):
            self._hand_over(submission)
            descs += len(submission[1])
        return descs

    def _defer_timer(self) -> None:
        """An armed flush-queue timer waits for its softirq (module docstring)."""
        fq = self.boot.cookie.fq
        if fq is None or not fq.timer_on or self._timer_deferred:
            return
        self._timer_deferred = True
        expires = fq.timer_expires_ns
        self.cpus.defer(ev.SOFTIRQ, expires // 1000, partial(self._fire_timer, expires),
                        f"flush-queue timer, armed at {expires / 1e9:.6f} s")

    def _fire_timer(self, expires: int):
        self._timer_deferred = False
        return self.boot.cookie.fq.fq_flush_timeout(expires)

    def run(self) -> Result:
        path = str(self.rec.path)
        with Offloaded(compare_recording, path, self.boot.submissions) as recorded:
            self._hand_over = recorded.put
            for item in prefetched(guest_calls, path):
                kind = type(item)
                if kind is tuple:
                    self._call(*item)
                elif kind is SubmitMark:
                    self.cpus.mark(item.stream, item.ts_us)
                else:
                    end = item
            self.cpus.finish()  # a timer still waiting fired after the trace ended
            found = recorded.result()
        return Result(self.setup, self.machine.profile.name, self.seed, self.boot, found.boot,
                      found.guest, found.qemu, end.calls, self.machine, found.iec,
                      found.recorded_flushes, found.after_trace, found.misfits,
                      found.tie_groups, aligned=found.boot is not None,
                      boot_mappings=end.boot_mappings, exit_orders=found.exit_orders)


def recording_profile(rec: Recording) -> str:
    """The driver profile of the recorded kernel (config.toml's first line names it)."""
    versions = rec.versions
    return profile_for_kernel(versions.kernel, versions.where)


def replay(path: str | Path, profile: str | None = None, seed: int = 0,
           device: str | None = None) -> Result:
    """Replay the recording at ``path`` with ``profile`` (by default the recorded kernel's);
    see ``Result`` and compare.py for the report."""
    rec = Recording(path)
    profile = profile or recording_profile(rec)
    return Replayer(rec, read_setup(rec, device), profile, seed).run()
