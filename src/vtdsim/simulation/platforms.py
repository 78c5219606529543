"""Where a queue-tail write goes, and what it costs: bare metal (the unit's invalidation
hardware) or a vIOMMU (a VM exit into a VMM) - the timed simulator's platform hook.

The unit runs its queue asynchronously (``qi_mode="async"``).  After every MMIO write of IQT
the engine (``engine.TimedMachine``) asks the platform: a ``synchronous`` platform (a vIOMMU:
the VMM performs the queue inside the exit) has the queue drained at once and is handed
``delta``, the model's counters named in ``iqt_keys`` that moved (the unit's ``desc:<label>``
counts; for a vIOMMU also the VMM's page-walk reads, VFIO calls and the host unit's own
invalidations, as counted by the virtualization layer), and returns an ``IqtCharge``: CPU time
of the write (exit round trip and VMM work) and hardware time after it.  Otherwise (bare
metal) the write costs a posted MMIO write and the engine steps the unit one descriptor at a
time, each taking ``descriptor_ns(delta)``; the CPU's wait ends when the status write lands.

Bare metal (spec 6.5.2): the write is a posted MMIO write; the unit fetches and performs each
descriptor in order (``qi_descriptor_ns`` each), a device-TLB invalidation adding the ATS
round trip to the endpoint (``ats_invalidation_ns``).  A vIOMMU (``ExitPlatform``,
viommu-and-costs.md section 9): the write is a VM exit to the VMM's user space
(``vmexit_user_cycles``), in which the VMM performs the queue synchronously (QEMU
``vtd_process_inv_queue``), so the CPU pays the exit and the VMM's work and the wait is
already satisfied on return.

The virtual platforms themselves (``emulated``, ``shadow``, ``nested``) are
``vm_platforms.VmmPlatform``, registered on first use.  With ``--exits sidecore`` a VMM core
polls the emulated queue: no exit, the vCPU's posted write, then the VMM's work plus the
side core's detection latency (``sidecore_detect_ns``) before the wait's status lands.

Not modelled here: the side core's own polling cost beyond the work it does for the guest
(it is a dedicated core, reported apart as ``vmm_ns``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vtdsim.errors import BadInput
from vtdsim.hardware.descriptors import TYPE_LABELS

DESC_KEYS = tuple(sorted("desc:" + label for label in TYPE_LABELS.values()))
DEVTLB_KEYS = ("desc:dev_tlb_inv", "desc:p_dev_tlb_inv")
VIRTUAL_PLATFORMS = ("emulated", "shadow", "nested")
EXIT_MODES = ("trap", "sidecore")


@dataclass(frozen=True, slots=True)
class IqtCharge:
    cpu_ns: float  # the writing CPU, in the write (an exit's round trip and the VMM's work)
    busy_ns: float  # the invalidation hardware after that, until the wait's status lands


class BarePlatform:
    """The host's own unit: the IQT write is posted, the unit then performs the descriptors
    one after another in hardware time while the CPU polls the wait's status."""

    name = "bare"
    machine = "bare"  # what ``machine.build`` boots for it
    iqt_keys = DESC_KEYS
    synchronous = False  # the engine steps the unit's queue in time (``descriptor_ns``)

    def __init__(self, constants):
        self.write_ns = constants.ns("mmio_write_ns")
        self.read_ns = constants.ns("mmio_read_ns")
        self.desc_ns = constants.ns("qi_descriptor_ns")
        self.ats_ns = constants.ns("ats_invalidation_ns")
        self._posted = IqtCharge(self.write_ns, 0.0)  # every IQT write's (frozen: shared)
        self.exits = 0
        self.vmm_ns = 0.0  # no VMM

    def mmio_write_ns(self, offset: int) -> float:
        return self.write_ns

    def mmio_read_ns(self, offset: int) -> float:
        return self.read_ns

    def iqt_write(self, delta: Mapping[str, int]) -> IqtCharge:
        """The posted write; the descriptors are priced one by one (``descriptor_ns``)."""
        return self._posted

    def descriptor_ns(self, delta: Mapping[str, int]) -> float:
        """Hardware time of what one ``qi_step`` did (one descriptor, by its label)."""
        devtlb = delta.get(DEVTLB_KEYS[0], 0) + delta.get(DEVTLB_KEYS[1], 0)
        return self.desc_ns + devtlb * self.ats_ns


class ExitPlatform:
    """The hook a vIOMMU platform implements: every IQT write is a VM exit whose cost is the
    round trip plus the VMM's work, priced per counted event through ``work_ns`` (counter name
    -> constant name).  The virtualization layer subclasses it with its counters (VMM walk
    reads, VFIO calls, host invalidations) and registers the platform name."""

    name = "exit"
    machine = "bare"  # a hook priced from the unit's own counts; a VMM platform builds a VM
    synchronous = True  # the VMM performs the whole queue inside the exit
    work_ns: dict[str, str] = {}  # counter -> constant pricing one event

    def __init__(self, constants, exits: str = "trap"):
        if exits not in EXIT_MODES:
            raise BadInput(f"--exits {exits!r}: expected one of {', '.join(EXIT_MODES)}")
        # A side core polling the emulated registers takes no exit: the vCPU pays a posted
        # write, the VMM's work runs on the side core while the guest polls the wait.
        self.exit_ns = constants.ns("vmexit_user_cycles") if exits == "trap" else 0.0
        self.sidecore = exits == "sidecore"
        self.detect_ns = constants.ns("sidecore_detect_ns") if self.sidecore else 0.0
        self.vmm_ns = 0.0  # the VMM's work priced so far (on the side core, or in exits)
        self.write_ns = constants.ns("mmio_write_ns")
        self.prices = {key: constants.ns(name) for key, name in self.work_ns.items()}
        self.iqt_keys = tuple(sorted(set(DESC_KEYS) | set(self.prices)))
        self.exits = 0

    def counters(self, machine) -> Mapping[str, int]:
        """The cumulative counts an exit's work is the difference of: here the guest unit's
        ``iqt_keys``; a VMM platform returns its machine's counts too (the virtualization
        layer's ``Machine.counts()``: VMM walk reads, VFIO calls, host invalidations)."""
        stats = machine.stats
        return {key: stats[key] for key in self.iqt_keys}

    def mmio_write_ns(self, offset: int) -> float:
        self.exits += not self.sidecore
        return self.write_ns + self.exit_ns

    def mmio_read_ns(self, offset: int) -> float:
        self.exits += not self.sidecore
        return self.write_ns + self.exit_ns

    def iqt_write(self, delta: Mapping[str, int]) -> IqtCharge:
        """The exit (counted) and the VMM's work; the write itself is not also charged as a
        plain MMIO write by the engine."""
        work = sum(delta.get(key, 0) * price for key, price in self.prices.items())
        self.exits += not self.sidecore
        self.vmm_ns += work
        if self.sidecore:
            return IqtCharge(self.write_ns, self.detect_ns + work)
        return IqtCharge(self.exit_ns + work, 0.0)


PlatformFactory = Callable[..., object]
_REGISTRY: dict[str, PlatformFactory] = {"bare": BarePlatform}


def register_platform(name: str, factory: PlatformFactory) -> None:
    """The virtualization layer registers ``emulated``/``shadow``/``nested`` here."""
    _REGISTRY[name] = factory


def get_platform(name: str, constants, exits: str = "trap"):
    if name in VIRTUAL_PLATFORMS and name not in _REGISTRY:
        from vtdsim.simulation import vm_platforms  # noqa: F401 - registers them
    if name in _REGISTRY:
        if name == "bare" and exits != "trap":
            raise BadInput(f"--exits {exits}: bare metal takes no VM exits")
        return _REGISTRY[name](constants) if name == "bare" else _REGISTRY[name](constants,
                                                                                   exits)
    raise BadInput(f"--platform {name!r}: expected one of "
                   f"{', '.join(sorted(set(_REGISTRY) | set(VIRTUAL_PLATFORMS)))}")
