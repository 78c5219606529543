"""Parse QEMU's trace log (``-trace`` with the log backend) into typed ``vtd_*`` events: the
formats of QEMU 7.2 hw/i386/trace-events as viommu-and-costs.md section 8 lists them, which
QEMU 10.0 prints unchanged for every event the recordings hold (its ``vtd_inv_desc`` has one
more kind, "p-iotlb"); which descriptor kinds each version leaves unlogged: ``SILENT_KINDS``.

A line is ``<event> <text>``, optionally prefixed ``<tid>@<secs.usecs>:`` when QEMU runs with
``-msg timestamp=on`` (the prefix is dropped).  Every event the six recordings hold has a
typed record; any other event name becomes ``QemuOther``.  The parser is a generator over the
file's lines (constant memory).

Not handled: the PASID-IOTLB and PASID-cache events of QEMU 8+ (``vtd_inv_desc_iotlb_pasid*``),
``vtd_inv_desc_wait_irq``/``_write_fail``, ``vtd_fault*`` and ``vtd_ce_*`` details: they come
out as ``QemuOther`` with their text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from sys import intern

from vtdsim.errors import BadInput
from vtdsim.hardware.request import sid_of
from vtdsim.traces import events as ev
from vtdsim.traces.textio import PrintfFormat, clip, dec_word, hex_word, numbered_lines

LINE_SHAPE = "<event> <text>"

# Descriptor kinds each QEMU fetches without a ``vtd_inv_desc`` line (only its head read shows):
# 7.2's ``vtd_process_inv_desc`` passes PASID-cache and PASID-IOTLB descriptors over; 10.0
# processes PASID-IOTLB ones (``vtd_process_piotlb_desc``, logged as "p-iotlb") and still
# passes PASID-cache ones over (linux-driver.md 1.4; both read from the recordings' logs).
SILENT_KINDS = {
    "7.2": frozenset({"pc_inv", "p_iotlb_inv"}),
    "10.0": frozenset({"pc_inv"}),
}


def silent_kinds(qemu: str, where: str) -> frozenset[str]:
    """The silent descriptor kinds of QEMU ``qemu`` (major.minor); BadInput for a QEMU whose
    log has not been checked."""
    try:
        return SILENT_KINDS[qemu]
    except KeyError:
        raise BadInput(f"QEMU {qemu}: its log has not been checked; known QEMU versions: "
                       f"{', '.join(SILENT_KINDS)}", where=where) from None


def _sid_first(bus: int, dev: int, fn: int, *rest: int) -> tuple:
    """QEMU prints requesters as bus:dev.fn numbers; the records carry the source-id."""
    return (sid_of(bus, dev, fn), *rest)


def _sid_enabled(bus: int, dev: int, fn: int, enabled: int) -> tuple:
    return sid_of(bus, dev, fn), bool(enabled)


def _enabled(enabled: int) -> tuple:
    return (bool(enabled),)


def _low_high(kind: str, high: int, low: int) -> tuple:
    """vtd_inv_desc prints the high qword first; the record keeps qw0 (low) first.  The kind
    is interned: pickle then sends it once per chunk (workers.py)."""
    return intern(kind), low, high


# QEMU's formats, with its PRIx8/16/32/64 macros written as plain %x.
_Adapt = Callable[..., tuple] | None
_FORMATS: dict[str, tuple[type, str, _Adapt]] = {
    "vtd_inv_desc": (ev.QemuInvDesc, "invalidate desc type %s high 0x%x low 0x%x", _low_high),
    "vtd_inv_desc_iotlb_pages": (
        ev.QemuIotlbPages, "iotlb invalidate domain 0x%x addr 0x%x mask 0x%x", None),
    "vtd_inv_desc_iotlb_domain": (ev.QemuIotlbDomain, "iotlb invalidate whole domain 0x%x",
                                  None),
    "vtd_inv_desc_iotlb_global": (ev.QemuIotlbGlobal, "iotlb invalidate global", None),
    "vtd_inv_desc_cc_devices": (
        ev.QemuCcDevices, "context invalidate devices sid 0x%x fmask 0x%x", None),
    "vtd_inv_desc_cc_device": (
        ev.QemuCcDevice, "context invalidate device %02x:%02x.%02x", _sid_first),
    "vtd_inv_desc_cc_domain": (ev.QemuCcDomain, "context invalidate domain 0x%x", None),
    "vtd_inv_desc_cc_global": (ev.QemuCcGlobal, "context invalidate globally", None),
    "vtd_inv_desc_iec": (ev.QemuIecInv, "granularity 0x%x index 0x%x mask 0x%x", None),
    "vtd_inv_desc_wait_sw": (
        ev.QemuWaitSw, "wait invalidate status write addr 0x%x data 0x%x", None),
    "vtd_inv_qi_setup": (ev.QemuQiSetup, "addr 0x%x size %d", None),
    "vtd_inv_qi_enable": (ev.QemuQiEnable, "enabled %d", _enabled),
    "vtd_inv_qi_tail": (ev.QemuQiTail, "write tail %d", None),
    "vtd_inv_qi_head": (ev.QemuQiHead, "read head %d", None),
    "vtd_inv_qi_fetch": (ev.QemuQiFetch, "", None),
    "vtd_reg_write": (ev.QemuRegWrite, "addr 0x%x size 0x%x value 0x%x", None),
    "vtd_reg_write_gcmd": (ev.QemuGcmdWrite, "status 0x%x value 0x%x", None),
    "vtd_reg_write_fectl": (ev.QemuFectlWrite, "value 0x%x", None),
    "vtd_dmar_enable": (ev.QemuDmarEnable, "enable %d", _enabled),
    "vtd_switch_address_space": (
        ev.QemuSwitchAddressSpace,
        "Device %02x:%02x.%x switching address space (iommu enabled=%d)", _sid_enabled),
    "vtd_dmar_translate": (
        ev.QemuDmarTranslate, "dev %02x:%02x.%02x iova 0x%x -> gpa 0x%x mask 0x%x", _sid_first),
}
FORMATS = {name: fmt for name, (_, fmt, _) in _FORMATS.items()}

# name -> (record constructor, compiled format, adapter)
_EVENTS = {name: (ev.fast_constructor(record), PrintfFormat(fmt), adapt)
           for name, (record, fmt, adapt) in _FORMATS.items()}
_new_other = ev.fast_constructor(ev.QemuOther)


# Hot events (one or more per descriptor QEMU fetched) take their words, as ftrace.py's do; the
# compiled format stays the judge of any text these do not take (and names it in the error).
def _qi_index(words: list[str], verb: str, what: str) -> tuple | None:
    """``read head %d`` / ``write tail %d``."""
    if len(words) != 3 or words[0] != verb or words[1] != what:
        return None
    return (dec_word(words[2]),)


def _inv_desc(words: list[str]) -> tuple | None:
    """``invalidate desc type %s high 0x%x low 0x%x``, as (kind, low, high)."""
    if (len(words) != 8 or words[:3] != ["invalidate", "desc", "type"] or words[4] != "high"
            or words[6] != "low"):
        return None
    return intern(words[3]), hex_word(words[7]), hex_word(words[5])


_HOT: dict[str, Callable[[list[str]], tuple | None]] = {
    "vtd_inv_qi_head": lambda words: _qi_index(words, "read", "head"),
    "vtd_inv_qi_tail": lambda words: _qi_index(words, "write", "tail"),
    "vtd_inv_desc": _inv_desc,
}


def _values(name: str, text: str, fmt: PrintfFormat, adapt: _Adapt) -> tuple | None:
    """The record's fields from the event's text, or None if the text has another shape."""
    hot = _HOT.get(name)
    if hot is not None:
        try:
            values = hot(text.split(" "))
        except ValueError:  # a number that is not one
            values = None
        if values is not None:
            return values
    values = fmt.parse(text)
    return values if values is None or adapt is None else adapt(*values)


def _event_name(word: str) -> str | None:
    """The event name of a line's first word, without a ``tid@secs.usecs:`` prefix."""
    if "@" in word:
        _, colon, word = word.partition(":")
        if not colon:
            return None
    return word if word.isidentifier() else None


def parse_qemu_lines(numbered: Iterable[tuple[int, str]], source: str,
                     names: frozenset[str] | None = None) -> Iterator[ev.QemuEvent]:
    """Events from ``(line number, line)`` pairs of a QEMU trace log; blank lines skipped.
    With ``names``, only those events: the others' text is not even parsed."""
    events = _EVENTS
    for lineno, line in numbered:
        name, _, text = line.partition(" ")
        entry = events.get(name)
        if entry is None:
            if not line.strip():
                continue
            name = _event_name(name)
            if name is None:
                raise BadInput(f"not a QEMU trace line (expected {LINE_SHAPE!r}): {clip(line)!r}",
                               where=f"{source}:{lineno}")
            entry = events.get(name)
            if entry is None:
                if names is None or name in names:
                    yield _new_other(lineno, name, text)
                continue
        if names is not None and name not in names:
            continue
        build, fmt, adapt = entry
        values = _values(name, text, fmt, adapt)
        if values is None:
            raise BadInput(f"{name} text does not match {fmt.fmt!r}: {clip(text)!r}",
                           where=f"{source}:{lineno}")
        yield build(lineno, *values)


def read_qemu_log(path: str | Path) -> Iterator[ev.QemuEvent]:
    """Events of a QEMU trace log file (plain, .xz or .gz)."""
    return parse_qemu_lines(numbered_lines(path), str(path))
