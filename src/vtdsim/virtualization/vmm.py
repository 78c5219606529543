"""The VMM's emulated remapping unit (QEMU hw/i386/intel_iommu.c): a ``RemappingUnit`` built
with QEMU's CAP/ECAP and caches, whose invalidation queue is QEMU's - every guest IQT write is
a VM exit in which ``vtd_handle_iqt_write`` processes the queue synchronously - and the
per-device address spaces with their notifiers (shadowing, vhost, nesting).

What each descriptor does to the caches is the spec's (``hardware.invalidation``); what this
module adds is QEMU's policy: which types it processes, ignores or rejects (``qemu.py``),
domain-selective context invalidation taken as global, device-TLB invalidations turned into
DEVIOTLB_UNMAP notifications (no ITE, no ICE: they always complete), and after each IOTLB or
context invalidation the notifier work (``vtd_iotlb_page_invalidate_notify``,
``vtd_iotlb_domain_invalidate``, ``vtd_iommu_replay_all``, ``vtd_context_device_invalidate``,
``vtd_address_space_refresh_all``).  It emits QEMU's trace events (``trace`` below) so replay
can compare them with a recording's qemu.log.

Counts (``stats``): ``exits``, ``exit_descriptors``, ``vmm_walk_reads`` (guest PTEs the
shadow walks read), ``vmm_notify_<kind>`` (events delivered), ``vmm_walks``.

The IOTLB is QEMU's: entries per requester (``qemu.qemu_cache_config``), invalidated by DID.

Not modelled: QEMU reading guest structures
coherently (the emulated unit obeys ECAP.C=0 like hardware), the SW+IF assertion of 7.2,
register-based invalidation with QI on (the hardware's behaviour is kept), interrupt
remapping.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from vtdsim.errors import BadInput
from vtdsim.hardware.descriptors import IQEI_INVALID_TYPE, IQEI_RESERVED, Descriptor
from vtdsim.hardware.invalidation_queue import InvalidationQueue
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.remapping_unit import RemappingUnit
from vtdsim.virtualization import qemu
from vtdsim.virtualization.address_space import (
    MAP,
    UNMAP,
    IommuEvent,
    Notifier,
    VtdAddressSpace,
    page_walk,
    walk_one,
)
from vtdsim.virtualization.guest_tables import read_device_tables
from vtdsim.virtualization.handlers import HANDLERS

WHOLE = 1 << 64
_TRACE_KIND = {1: "context-cache", 2: "iotlb", 3: "device", 4: "iec", 5: "wait", 6: "p-iotlb",
               7: "pasid-cache", 8: "device-piotlb"}  # vtd_inv_desc names


@dataclass
class ExitWork:
    """One VM exit: the descriptors it processed and the VMM work they caused."""

    descriptors: int
    work: Counter = field(default_factory=Counter)


class QemuQueue(InvalidationQueue):
    """The invalidation queue as QEMU's ``vtd_handle_iqt_write`` / ``vtd_process_inv_desc``
    run it: validation and per-type handling by the version's policy."""

    def __init__(self, unit: RemappingUnit, vmm: Vmm):
        super().__init__(unit)
        self.vmm = vmm

    def on_iqt_write(self) -> None:
        self.vmm.exit_begin(self.tail)
        super().on_iqt_write()
        self.vmm.exit_end()

    def validate(self, desc: Descriptor, wide: bool) -> int:
        policy = self.vmm.version.policy(desc.type, self.unit.ttm == 1)
        if policy == qemu.NOOP:
            return 0  # accepted without a look (7.2's "return true is enough so far")
        if policy == qemu.REJECT:
            return IQEI_INVALID_TYPE
        if desc.type == 6 and desc.fields.get("g") in (0, 1):
            return IQEI_RESERVED  # vtd_process_piotlb_desc: only G=2/3 exist
        if desc.type == 5 and not (desc.fields["sw"] or desc.fields["if_"] or desc.fields["fn"]):
            return IQEI_RESERVED  # vtd_process_wait_desc: SW=IF=FN=0 is an error
        return super().validate(desc, wide)

    def _perform(self, desc: Descriptor) -> bool:
        vmm = self.vmm
        vmm.exit_descriptor()
        vmm.trace("vtd_inv_qi_head", self.head // self.width)  # vtd_fetch_inv_desc
        if vmm.version.policy(desc.type, self.unit.ttm == 1) == qemu.NOOP:
            vmm.stats[f"vmm_noop_type{desc.type}"] += 1
            return True
        vmm.trace("vtd_inv_desc", _TRACE_KIND.get(desc.type, desc.label), desc.qws[0],
                  desc.qws[1])
        if desc.type == 5:
            if desc.fields["sw"]:
                vmm.trace("vtd_inv_desc_wait_sw", desc.fields["status_addr"],
                          desc.fields["status_data"])
            self._wait(desc.fields)
            return True
        HANDLERS[desc.type](vmm, desc.fields)
        return True  # QEMU has no ITE: every device-TLB invalidation completes


class Vmm:
    """QEMU's intel-iommu for one guest: the emulated unit, address spaces, exit counts."""

    def __init__(self, version: qemu.QemuVersion, props: qemu.QemuProperties,
                 memory: PhysicalMemory, *, name: str = "dmar0", record: bool = False):
        self.version, self.props = version, props
        self.unit = RemappingUnit(qemu.qemu_caps(version, props), memory, name=name,
                                  cache_config=qemu.qemu_cache_config())
        self.unit.queue = QemuQueue(self.unit, self)
        self.unit.listeners.append(self._unit_event)
        self.stats: Counter = Counter()
        self.address_spaces: dict[int, VtdAddressSpace] = {}
        self.exits: list[ExitWork] = []  # kept only with ``record``
        self.events: list[tuple] = []  # QEMU trace events, kept only with ``record``
        self.record = record
        self._exit_start: Counter | None = None
        self._exit_descs = 0
        self.backends: list = []  # what listens behind this VMM (VFIO, vhost, iommufd ...)
        # (descriptor type, fields) -> None: PASID-cache sync and PASID-IOTLB forwarding
        self.bind_hooks: list[Callable[[int, dict], None]] = []

    # -- tracing and exit accounting ----------------------------------------------------------
    def trace(self, event: str, *fields) -> None:
        if self.record:
            self.events.append((event, *fields))

    def exit_begin(self, tail: int) -> None:
        self.stats["exits"] += 1
        self.trace("vtd_inv_qi_tail", tail // self.unit.queue.width)
        self._exit_start = self.stats.copy()
        self._exit_descs = 0

    def exit_descriptor(self) -> None:
        self._exit_descs += 1
        self.stats["exit_descriptors"] += 1

    def exit_end(self) -> None:
        self.stats[f"exits_with_{self._exit_descs}_descriptors"] += 1
        if self.record and self._exit_start is not None:
            work = self.stats - self._exit_start
            for key in ("exits", "exit_descriptors"):
                work.pop(key, None)
            self.exits.append(ExitWork(self._exit_descs, work))
        self._exit_start = None

    def summary(self) -> str:
        """One line: exits, descriptors per exit, the VMM's work."""
        per_exit = sorted((int(k.split("_")[2]), v) for k, v in self.stats.items()
                          if k.startswith("exits_with_"))
        work = {k: v for k, v in sorted(self.stats.items())
                if k.startswith("vmm_") and not k.startswith("vmm_noop")}
        return (f"{self.version.name}: {self.stats['exits']} exits, descriptors per exit "
                + ", ".join(f"{n}: {v}" for n, v in per_exit)
                + "; work " + (", ".join(f"{k} {v}" for k, v in work.items()) or "none"))

    # -- address spaces -------------------------------------------------------------------------
    def address_space(self, sid: int) -> VtdAddressSpace:
        """``vtd_find_add_as``: created on first use, one per device."""
        vas = self.address_spaces.get(sid)
        if vas is None:
            vas = self.address_spaces[sid] = VtdAddressSpace(sid)
        return vas

    def register_notifier(self, sid: int, kinds: frozenset[str], deliver,
                          switched=None) -> VtdAddressSpace:
        """A listener (VFIO, vhost) registers on a device's IOMMU region.  A MAP notifier
        needs caching mode (``vtd_iommu_notify_flag_changed``: ENOTSUP otherwise)."""
        if MAP in kinds and not self.unit.caps.caching_mode:
            raise BadInput("a MAP notifier (device assignment) requires caching-mode=on")
        vas = self.address_space(sid)
        vas.notifiers.append(Notifier(kinds, deliver, switched))
        return vas

    def with_notifiers(self) -> list[VtdAddressSpace]:
        return [vas for vas in self.address_spaces.values() if vas.notifiers]

    def tables(self, vas: VtdAddressSpace):
        return read_device_tables(self.unit, vas.sid)

    # -- the work behind invalidations ----------------------------------------------------------
    def sync(self, vas: VtdAddressSpace) -> None:
        """``vtd_address_space_sync``: a full walk for MAP listeners, else unmap all."""
        if not vas.notifiers:
            return
        root = self.tables(vas).ss_root
        if root is None or not vas.has(MAP):
            self.unmap_all(vas)
            return
        self.walk(vas, root, 0, WHOLE, notify_unmap=True)

    def walk(self, vas: VtdAddressSpace, root, start: int, end: int, notify_unmap: bool):
        self.stats["vmm_walks"] += 1

        def quiet(lo: int, hi: int) -> bool:  # walk_one would skip every UNMAP in [lo, hi)
            return not notify_unmap or vas.iova_tree.find(lo, hi - lo) is None

        page_walk(self.unit.memory, root, start, end,
                  lambda ev: walk_one(vas, ev, notify_unmap, self.stats), self.stats, quiet)

    def unmap_all(self, vas: VtdAddressSpace) -> None:
        """``vtd_address_space_unmap``: one UNMAP of the whole space, the tree emptied."""
        vas.iova_tree.remove(0, WHOLE)
        vas.notify(IommuEvent(UNMAP, 0, WHOLE), self.stats)

    def replay(self, vas: VtdAddressSpace) -> None:
        """``vtd_iommu_replay``: clear the tree and walk everything, UNMAPs not sent."""
        vas.iova_tree.remove(0, WHOLE)
        root = self.tables(vas).ss_root
        if root is not None and vas.has(MAP):
            self.walk(vas, root, 0, WHOLE, notify_unmap=False)

    def switch(self, vas: VtdAddressSpace) -> None:
        """``vtd_switch_address_space``: the IOMMU region when DMAR is on and the device is
        not in pass-through; a listener sees its region change (VFIO replays)."""
        use = self.unit.translation_enabled and self.tables(vas).kind != "pt"
        self.trace("vtd_switch_address_space", vas.sid, use)
        if use != vas.use_iommu:
            vas.use_iommu = use
            for n in vas.notifiers:
                if n.switched is not None:
                    n.switched(use)
            if use:
                self.replay(vas)

    def switch_all(self) -> None:
        for sid in sorted(self.address_spaces):
            self.switch(self.address_spaces[sid])

    def _unit_event(self, unit, event: str, fields: dict) -> None:
        """GCMD effects QEMU follows with address-space work (``vtd_handle_gcmd_te``,
        ``vtd_handle_gcmd_srtp``: refresh every address space)."""
        if event == "translation_enable":
            self.trace("vtd_dmar_enable", bool(fields["on"]))
            self.refresh_all()
        elif event == "set_root_table":
            self.refresh_all()

    def refresh_all(self) -> None:
        """``vtd_address_space_refresh_all``: unmap every notifier, switch every space."""
        for vas in self.with_notifiers():
            self.unmap_all(vas)
        self.switch_all()
