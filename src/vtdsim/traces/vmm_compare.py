"""The VMM model's actions against QEMU's own trace events (``vtdsim replay DIR --vmm``): the
queue-tail writes (exits), each fetched descriptor (``vtd_inv_qi_head``, ``vtd_inv_desc``),
QEMU's decodes (``vtd_inv_desc_iotlb_*``, ``vtd_inv_desc_cc_*``, ``vtd_inv_desc_wait_sw``),
address-space switches and DMAR enables, in QEMU's order.

Both sides become the same tuples ``(event, *fields)`` (``Vmm.trace`` emits them; here the
recorded records are turned into them).  Normalisation, each with its reason:

* recorded events before the guest's first register write are QEMU creating and resetting
  address spaces at machine start, before any guest action;
* a recorded exit whose descriptors are only interrupt-entry-cache invalidations and waits is
  interrupt remapping, which the guest model does not do: its tail, heads and descriptors are
  set aside (counted), its address-space switches kept (they come from GCMD writes);
* a run of consecutive ``vtd_switch_address_space`` events is compared as a sorted list:
  QEMU walks its address spaces in glib hash-table order, which no model can know;
* queue indexes (tail, head) and wait descriptors' status words are compared by presence
  only: the set-aside exits occupied queue slots and status slots the model's queue never
  used (compare.py leaves waits' status addresses out for the same reason);
* the model's exits that come from guest ``qi_submit`` lines of one timestamp on several CPUs
  are compared in QEMU's order where QEMU's log has them in another
  (``replay.Result.exit_orders``, found by the guest-side pairing, recorded.py): QEMU's
  ``vtd_handle_iqt_write`` traces the tail and processes the queue from head to tail inside
  the vCPU's MMIO exit, so one exit's events are contiguous and exits come in the order the
  guest's IQT writes reached QEMU - the order the vCPUs took the guest's ``qi->q_lock``, in
  which the guest prints its lines; only ftrace's merge of tied timestamps hides it (lower
  CPU first, compare.BatchFiller), and the model submits in the trace's order.

Not compared: ``vtd_dmar_translate`` (the model replays no device DMA), register writes, fault
events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields

from vtdsim.traces import events as ev
from vtdsim.traces.qemu_log import parse_qemu_lines
from vtdsim.traces.recording import Recording
from vtdsim.traces.textio import numbered_lines

SWITCH = "vtd_switch_address_space"
RUN = "switch-run"
_RECORDS: dict[type, str] = {
    ev.QemuQiTail: "vtd_inv_qi_tail", ev.QemuQiHead: "vtd_inv_qi_head",
    ev.QemuInvDesc: "vtd_inv_desc", ev.QemuIotlbPages: "vtd_inv_desc_iotlb_pages",
    ev.QemuIotlbDomain: "vtd_inv_desc_iotlb_domain",
    ev.QemuIotlbGlobal: "vtd_inv_desc_iotlb_global", ev.QemuCcDevices: "vtd_inv_desc_cc_devices",
    ev.QemuCcDevice: "vtd_inv_desc_cc_device", ev.QemuCcDomain: "vtd_inv_desc_cc_domain",
    ev.QemuCcGlobal: "vtd_inv_desc_cc_global", ev.QemuIecInv: "vtd_inv_desc_iec",
    ev.QemuWaitSw: "vtd_inv_desc_wait_sw", ev.QemuSwitchAddressSpace: SWITCH,
    ev.QemuDmarEnable: "vtd_dmar_enable",
}
_NAMES = frozenset([*_RECORDS.values(), "vtd_reg_write"])
_IEC_EXIT_KINDS = frozenset({"iec", "wait"})
# Items that start or end the guest's activity: where lazy flush timing may part the streams.
_BOUNDARY = frozenset({"vtd_inv_qi_tail", "vtd_dmar_enable"})
LAZY_TOLERANCE = 0.05  # as replay.py's guest-side lazy rule


def _as_tuple(rec) -> tuple:
    return (_RECORDS[type(rec)], *(getattr(rec, f.name) for f in fields(rec) if f.name != "line"))


def recorded_items(path: str) -> Iterator[tuple]:
    """QEMU's events of the recording as tuples, normalised (module docstring); a
    ``("iec-exit",)`` marks each exit set aside."""
    rec = Recording(path)
    events = parse_qemu_lines(numbered_lines(rec.qemu_log), str(rec.qemu_log), _NAMES)
    started = False
    exit_: list[tuple] = []
    for rec in events:
        if type(rec) is ev.QemuRegWrite:
            started = True
            continue
        if not started:
            continue
        item = _as_tuple(rec)
        if item[0] == "vtd_inv_qi_tail":
            yield from _close_exit(exit_)
            exit_ = [item]
        elif exit_ and item[0] not in (SWITCH, "vtd_dmar_enable"):
            exit_.append(item)
        else:
            yield from _close_exit(exit_)
            exit_ = []
            yield item
    yield from _close_exit(exit_)


def _close_exit(exit_: list[tuple]) -> Iterator[tuple]:
    kinds = {item[1] for item in exit_ if item[0] == "vtd_inv_desc"}
    if kinds and kinds <= _IEC_EXIT_KINDS and "iec" in kinds:
        yield ("iec-exit",)
    else:
        yield from exit_


def normal(item: tuple) -> tuple:
    """An item with the fields that depend on queue positions dropped (module docstring)."""
    name = item[0]
    if name in ("vtd_inv_qi_tail", "vtd_inv_qi_head", "vtd_inv_desc_wait_sw"):
        return (name,)
    if name == "vtd_inv_desc" and item[1] == "wait":
        return item[:2]
    return item


def collapse_switch_runs(items: Iterable[tuple]) -> Iterator[tuple]:
    """Each run of consecutive switch events as one ``(RUN, sorted events)`` item; the
    others normalised (``normal``)."""
    run: list[tuple] = []
    for item in map(normal, items):
        if item[0] == SWITCH:
            run.append(item)
            continue
        if run:
            yield (RUN, tuple(sorted(run)))
            run = []
        yield item
    if run:
        yield (RUN, tuple(sorted(run)))


@dataclass
class VmmComparison:
    """The outcome: items compared, matched, the first divergence, exits on each side."""

    compared: int = 0
    matched: int = 0
    model_exits: int = 0
    recorded_exits: int = 0
    iec_exits: int = 0
    divergence: str | None = None
    kinds: Counter = field(default_factory=Counter)  # matched items by event
    recorded_left: int = 0  # recorded items after the model's last (the guest trace ended)
    lazy: bool = False  # the lazy rule applies (set by the caller)
    reordered: int = 0  # groups of tied exits compared in QEMU's order
    at_exit_boundary: bool = False  # the divergence is one side starting an exit

    @property
    def ok(self) -> bool:
        if self.lazy:
            return self.lazy_ok
        return self.divergence is None and self.compared == self.matched

    @property
    def lazy_ok(self) -> bool:
        """Lazy recordings: flush points move with the flush-queue timer, so the streams may
        part where one side flushes and the other does not yet - at an exit boundary; what
        was compared up to there matched, and the exits agree within the tolerance."""
        near = abs(self.model_exits - self.recorded_exits) <= LAZY_TOLERANCE * max(
            self.recorded_exits, 1)
        return near and (self.divergence is None or self.at_exit_boundary)

    def lines(self) -> list[str]:
        out = [f"VMM model vs QEMU events: {self.matched}/{self.compared} items equal"
               f" ({', '.join(f'{k} {v}' for k, v in sorted(self.kinds.items()))})",
               f"exits: model {self.model_exits}, QEMU {self.recorded_exits} queue-tail"
               f" writes (+{self.iec_exits} interrupt-remapping exits not modelled)",
               f"recorded items after the model's last: {self.recorded_left}"]
        if self.reordered:
            out.append(f"{self.reordered} groups of exits from guest lines of one timestamp "
                       "on several CPUs compared in QEMU's order")
        if self.divergence:
            out.append("first divergence: " + self.divergence
                       + (" (an exit boundary)" if self.at_exit_boundary else ""))
        if self.lazy:
            out.append(f"lazy rule: equal up to a flush-timing boundary, exits within "
                       f"{LAZY_TOLERANCE:.0%}: {'yes' if self.lazy_ok else 'no'}")
        return out


def in_qemu_order(items: Iterable[tuple], exit_orders: Iterable[tuple[int, ...]]
                  ) -> Iterator[tuple]:
    """The model's events with the exits of each group in ``exit_orders`` (exit numbers from
    the first, in QEMU's order; each group's exits consecutive) moved into that order; an exit
    is its tail event and what follows up to the next tail."""
    groups = {min(order): order for order in exit_orders}
    order: tuple[int, ...] = ()
    held: dict[int, list[tuple]] = {}
    index = -1
    for item in items:
        if item[0] == "vtd_inv_qi_tail":
            index += 1
            if order and index > max(order):
                yield from (e for write in order for e in held[write])
                order = ()
            if not order and index in groups:
                order, held = groups[index], {}
        if order:
            held.setdefault(index, []).append(item)
        else:
            yield item
    yield from (e for write in order if write in held for e in held[write])


def compare_items(model: Iterable[tuple], recorded: Iterator[tuple], *,
                  lazy: bool = False, exit_orders: Iterable[tuple[int, ...]] = ()
                  ) -> VmmComparison:
    """Compare the model's items with the recorded ones, in order (runs collapsed; tied exits
    in QEMU's order, ``in_qemu_order``); the model's exits after a divergence are still
    counted."""
    exit_orders = list(exit_orders)
    result = VmmComparison(lazy=lazy, reordered=len(exit_orders))
    rec = _counting(recorded, result)
    model_rest = collapse_switch_runs(in_qemu_order(model, exit_orders))
    for mine in model_rest:
        if mine[0] == "vtd_inv_qi_tail":
            result.model_exits += 1
        theirs = next(rec, None)
        result.compared += 1
        if mine == theirs:
            result.matched += 1
            result.kinds[mine[0]] += 1
        else:
            result.divergence = (f"item {result.compared}: model {mine!r}, QEMU {theirs!r}")
            result.at_exit_boundary = any(
                item is not None and item[0] in _BOUNDARY for item in (mine, theirs))
            result.model_exits += sum(1 for item in model_rest if item[0] == "vtd_inv_qi_tail")
            break
    result.recorded_left = sum(1 for _ in rec)
    return result


def _counting(recorded: Iterator[tuple], result: VmmComparison) -> Iterator[tuple]:
    def modelled():
        for item in recorded:
            if item[0] == "iec-exit":
                result.iec_exits += 1
            else:
                yield item

    for item in collapse_switch_runs(modelled()):
        if item[0] == "vtd_inv_qi_tail":
            result.recorded_exits += 1
        yield item
