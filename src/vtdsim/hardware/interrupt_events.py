"""Interrupt events of a remapping unit: the fault event (FECTL/FEDATA/FEADDR) and the
invalidation-completion event (IECTL/IEDATA/IEADDR), which share one IP/IM protocol
(VT-d spec 7.3 fault events, 6.5.2.x invalidation-wait completion, 10.4.10, 10.4.26).

Signalling an event sets the control register's IP; if IM is clear the message is "sent" (counted
in ``unit.stats["<kind>_interrupts"]`` and traced with the programmed address and data) and IP
clears.  If IM is set, IP stays set and the message goes out when software clears IM.

Not modelled: delivery of the MSI to a CPU (interrupt remapping of the unit's own events, the
APIC); the page-request event (PECTL) beyond its registers.
"""

from __future__ import annotations

from typing import Any

#: (control, data, address) register names of each event kind.
EVENTS = {
    "fault": ("FECTL", "FEDATA", "FEADDR"),
    "completion": ("IECTL", "IEDATA", "IEADDR"),
}


def signal_event(unit: Any, kind: str) -> None:
    """Hardware raises an event of ``kind`` ("fault" or "completion")."""
    ctl = EVENTS[kind][0]
    unit.regs.update(ctl, ip=1)
    deliver_if_unmasked(unit, kind)


def deliver_if_unmasked(unit: Any, kind: str) -> None:
    """Send a pending (IP=1) message if IM allows; run on signal and on every control write
    (QEMU's ``vtd_handle_fectl_write``/``vtd_handle_iectl_write``: clearing IM sends it)."""
    ctl, data, addr = EVENTS[kind]
    regs = unit.regs
    if not regs.get(ctl, "ip") or regs.get(ctl, "im"):
        return
    unit.stats[f"{kind}_interrupts"] += 1
    unit.trace(f"{kind}_interrupt", addr=regs[addr], data=regs[data])
    regs.update(ctl, ip=0)


def cancel_event(unit: Any, kind: str) -> None:
    """Software serviced every status bit behind the event: hardware clears IP (10.4.10)."""
    unit.regs.update(EVENTS[kind][0], ip=0)


def raise_completion_event(unit: Any) -> None:
    """An invalidation-wait descriptor with IF=1 completed: set ICS.IWC and signal, unless IWC
    is still set from an earlier one (then no new event: QEMU ``vtd_generate_completion_event``)."""
    if unit.regs.get("ICS", "iwc"):
        return
    unit.regs.update("ICS", iwc=1)
    signal_event(unit, "completion")


def on_ics_write(unit: Any) -> None:
    """Software cleared IWC: a still-pending completion message is dropped (10.4.25)."""
    if not unit.regs.get("ICS", "iwc"):
        cancel_event(unit, "completion")
