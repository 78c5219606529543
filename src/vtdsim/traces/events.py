"""Typed records of recorded trace events: Linux ftrace ``iommu:*``/``intel_iommu:*`` events
(include/trace/events/iommu.h, drivers/iommu/intel/trace.h) and QEMU 7.2 ``vtd_*`` log events
(hw/i386/trace-events).

Every record is a frozen, slotted dataclass.  A guest event carries the ftrace line header
(``line``, ``comm``, ``pid``, ``cpu``, ``ts_us``, ``context``, ``irqs_off``) before its own
fields; a QEMU event carries only ``line`` (QEMU's log has no timestamps here).  Values are
ints exactly as printed (hex parsed as hex); device names stay strings because Linux prints
whatever ``dev_name()`` returns, not only PCI names.

Not handled: the ftrace ``tgid`` column, function-graph or stack-trace lines, and QEMU events
outside the ``vtd_*`` families the recordings enable (they become ``QemuOther``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Contexts of the ftrace flags column (kernel/trace/trace_output.c, trace_print_lat_fmt).
TASK, SOFTIRQ, HARDIRQ, NMI = "task", "softirq", "hardirq", "nmi"

_DRAFTS: dict[type, type] = {}


def record(cls: type) -> type:
    """Make ``cls`` a frozen slotted dataclass whose fields are its bases' annotations, then
    its own; make its mutable twin for ``fast_constructor``; and make it pickle as its field
    values rebuilt through that twin (``_rebuild``).  Why the last: replay's log workers send
    every record to the model's process, and the slotted dataclass default (``__getstate__``
    / ``__setstate__`` over ``dataclasses.fields``) cost more than parsing the line did."""
    annotations: dict[str, object] = {}
    for klass in reversed(cls.__mro__[:-1]):
        annotations.update(klass.__dict__.get("__annotations__", {}))
    cls.__annotations__ = annotations
    frozen = dataclass(frozen=True, slots=True)(cls)

    def freeze(self: object) -> None:
        self.__class__ = frozen

    namespace = {"__annotations__": annotations, "__module__": cls.__module__,
                 "__post_init__": freeze}
    draft = type(f"_{cls.__name__}Draft", cls.__bases__, namespace)
    _DRAFTS[frozen] = dataclass(slots=True)(draft)
    names = tuple(annotations)

    def __reduce__(self: object) -> tuple:
        return _rebuild, (frozen, tuple([getattr(self, name) for name in names]))

    frozen.__reduce__ = __reduce__
    return frozen


def _rebuild(cls: type, values: tuple) -> object:
    """Unpickle a ``record``: its fields straight into the fast constructor."""
    return _DRAFTS[cls](*values)


def fast_constructor(cls: type) -> Callable[..., object]:
    """A constructor for record class ``cls``, several times faster than ``cls(...)``.

    Why: a frozen dataclass's ``__init__`` stores every field through ``object.__setattr__``,
    while the parsers build one record per trace line and replay must run at >= 200k events/s.
    The returned mutable twin stores its slots directly, then (``__post_init__``) turns its
    instance into a ``cls``: same slots and same base, so CPython allows the ``__class__``
    change, and the record is frozen from then on.
    """
    return _DRAFTS[cls]


# --- guest (ftrace) events ------------------------------------------------------------------


class GuestEvent:
    """The ftrace line header: ``<comm>-<pid> [<cpu>] <flags> <secs.usecs>:``."""

    __slots__ = ()
    line: int  # line number in the file the event was read from
    comm: str
    pid: int
    cpu: int
    ts_us: int  # timestamp in integer microseconds (ftrace prints secs.usecs)
    context: str  # TASK, SOFTIRQ, HARDIRQ or NMI, from the flags column
    irqs_off: bool


@record
class QiSubmit(GuestEvent):
    """intel_iommu:qi_submit, one caller descriptor of qi_submit_sync (dmar.c)."""

    label: str  # "iotlb_inv" ...; Linux prints an unknown type as a hex number
    iommu: str
    qw0: int
    qw1: int
    qw2: int
    qw3: int


@record
class Map(GuestEvent):
    """iommu:map; ``end`` is iova + size, exclusive."""

    iova: int
    end: int
    paddr: int
    size: int


@record
class Unmap(GuestEvent):
    """iommu:unmap; ``unmapped_size`` is what the page-table code really removed."""

    iova: int
    end: int
    size: int
    unmapped_size: int


@record
class AttachDevice(GuestEvent):
    """iommu:attach_device_to_domain."""

    device: str


@record
class DetachDevice(GuestEvent):
    """iommu:detach_device_from_domain."""

    device: str


@record
class AddDeviceToGroup(GuestEvent):
    """iommu:add_device_to_group."""

    group: int
    device: str


@record
class RemoveDeviceFromGroup(GuestEvent):
    """iommu:remove_device_from_group."""

    group: int
    device: str


@record
class IoPageFault(GuestEvent):
    """iommu:io_page_fault (report_iommu_fault)."""

    driver: str
    device: str
    iova: int
    flags: int


class _CacheTagLog(GuestEvent):
    """The cache_tag_log event class (intel/trace.h, v6.10+)."""

    __slots__ = ()
    iommu: str
    dev: str
    type: str  # iotlb, devtlb, nesting_iotlb, nesting_devtlb
    did: int
    pasid: int
    ref: int  # users of the tag; for unassign, the count before the decrement


@record
class CacheTagAssign(_CacheTagLog):
    """intel_iommu:cache_tag_assign."""


@record
class CacheTagUnassign(_CacheTagLog):
    """intel_iommu:cache_tag_unassign."""


@record
class CacheTagFlushAll(_CacheTagLog):
    """intel_iommu:cache_tag_flush_all (v6.10 to July 2025)."""


@record
class CacheTagFlush(GuestEvent):
    """intel_iommu:cache_tag_flush_range / _np, emitted per tag when descriptors are queued."""

    kind: str  # "range" or "range_np"
    iommu: str
    dev: str
    pasid: int
    type: str
    did: int
    start: int
    end: int
    addr: int
    pages: int | None  # None in the newest trees, which dropped "pages" from the format
    mask: int


@record
class PrqReport(GuestEvent):
    """intel_iommu:prq_report, a page request decoded by decode_prq_descriptor()."""

    iommu: str
    dev: str
    seq: int
    rid: int
    addr: int
    read: bool
    write: bool
    exe: bool
    priv: bool
    last: bool  # last request in the page request group
    pasid: int
    index: int  # page request group index
    private: tuple[int, int] | None  # private data words, when the request carries them


@record
class OtherEvent(GuestEvent):
    """Any other ftrace event, kept with its payload text."""

    name: str
    payload: str


# --- VMM (QEMU 7.2 vtd_* log) events ---------------------------------------------------------


class QemuEvent:
    """One line of QEMU's trace log."""

    __slots__ = ()
    line: int


@record
class QemuInvDesc(QemuEvent):
    """vtd_inv_desc: a descriptor QEMU fetched and processes (not for its no-op types)."""

    kind: str  # context-cache, iotlb, device, iec, wait, ...
    qw0: int  # printed as "low"
    qw1: int  # printed as "high"


@record
class QemuIotlbPages(QemuEvent):
    """vtd_inv_desc_iotlb_pages: page-selective IOTLB invalidation."""

    did: int
    addr: int
    am: int


@record
class QemuIotlbDomain(QemuEvent):
    """vtd_inv_desc_iotlb_domain: domain-selective IOTLB invalidation."""

    did: int


@record
class QemuIotlbGlobal(QemuEvent):
    """vtd_inv_desc_iotlb_global."""


@record
class QemuCcDevices(QemuEvent):
    """vtd_inv_desc_cc_devices: device-selective context invalidation (SID and function mask)."""

    sid: int
    fmask: int


@record
class QemuCcDevice(QemuEvent):
    """vtd_inv_desc_cc_device: one device whose context-cache entry QEMU drops."""

    sid: int


@record
class QemuCcDomain(QemuEvent):
    """vtd_inv_desc_cc_domain: domain-selective context invalidation."""

    did: int


@record
class QemuCcGlobal(QemuEvent):
    """vtd_inv_desc_cc_global."""


@record
class QemuIecInv(QemuEvent):
    """vtd_inv_desc_iec: interrupt-entry-cache invalidation."""

    granularity: int
    index: int
    mask: int


@record
class QemuWaitSw(QemuEvent):
    """vtd_inv_desc_wait_sw: an invalidation wait with status write."""

    addr: int
    data: int


@record
class QemuQiSetup(QemuEvent):
    """vtd_inv_qi_setup: IQA latched; ``size`` in descriptors."""

    addr: int
    size: int


@record
class QemuQiEnable(QemuEvent):
    """vtd_inv_qi_enable."""

    enabled: bool


@record
class QemuQiTail(QemuEvent):
    """vtd_inv_qi_tail: IQT written (a VM exit under KVM); ``index`` in descriptors."""

    index: int


@record
class QemuQiHead(QemuEvent):
    """vtd_inv_qi_head: QEMU reads the descriptor at ``index``."""

    index: int


@record
class QemuQiFetch(QemuEvent):
    """vtd_inv_qi_fetch: QEMU starts draining the queue."""


@record
class QemuRegWrite(QemuEvent):
    """vtd_reg_write: an MMIO write to the unit's registers."""

    offset: int
    size: int
    value: int


@record
class QemuGcmdWrite(QemuEvent):
    """vtd_reg_write_gcmd: GCMD written; ``status`` is GSTS before the write."""

    status: int
    value: int


@record
class QemuFectlWrite(QemuEvent):
    """vtd_reg_write_fectl."""

    value: int


@record
class QemuDmarEnable(QemuEvent):
    """vtd_dmar_enable: translation enabled or disabled (GCMD.TE)."""

    enabled: bool


@record
class QemuSwitchAddressSpace(QemuEvent):
    """vtd_switch_address_space: a device starts or stops going through the vIOMMU."""

    sid: int
    enabled: bool


@record
class QemuDmarTranslate(QemuEvent):
    """vtd_dmar_translate: one translation of device DMA (IOVA to guest-physical)."""

    sid: int
    iova: int
    gpa: int
    mask: int


@record
class QemuOther(QemuEvent):
    """Any other event, kept with its text."""

    name: str
    text: str
