"""Parse Linux ftrace text into typed ``iommu:*`` / ``intel_iommu:*`` events: the line layout of
kernel/trace/trace_output.c (trace_print_context, trace_print_lat_fmt) and the TP_printk
formats of include/trace/events/iommu.h and drivers/iommu/intel/trace.h (6.1 to mainline).

A line is ``<comm>-<pid> [<cpu>] <flags> <secs.usecs>: <event>: <payload>``; the flags column
is 5 characters in 6.1 (irqs-off, need-resched, hardirq/softirq, preempt depth,
migrate-disable), 4 in older kernels, and absent when the irq-info option is off.  The parser is a
generator (constant memory); ``map``, ``unmap`` and ``qi_submit``, almost every line of a
recording, take a hand-written ``str.split`` path because replay needs far more than 200k
lines/s; tests check that path against the declared formats.

Not handled: the ``tgid`` and ``funcgraph`` columns, binary/raw/hex trace output, lost-event
markers (``CPU:n [LOST k EVENTS]``: reported as bad input, since the trace is incomplete), and
ftrace's clocks other than microseconds (a 9-digit fraction is truncated to microseconds).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from sys import intern

from vtdsim.errors import BadInput
from vtdsim.traces import events as ev
from vtdsim.traces.textio import PrintfFormat, clip, dec_word, hex_word, numbered_lines

LINE_SHAPE = "<comm>-<pid> [<cpu>] <flags> <secs.usecs>: <event>: <payload>"

# TP_printk formats, verbatim (linux-driver.md 1.2).
QI_SUBMIT = PrintfFormat("%s %s: 0x%llx 0x%llx 0x%llx 0x%llx")
MAP = PrintfFormat("IOMMU: iova=0x%016llx - 0x%016llx paddr=0x%016llx size=%zu")
UNMAP = PrintfFormat("IOMMU: iova=0x%016llx - 0x%016llx size=%zu unmapped_size=%zu")
DEVICE = PrintfFormat("IOMMU: device=%s")
GROUP = PrintfFormat("IOMMU: groupID=%d device=%s")
IO_PAGE_FAULT = PrintfFormat("IOMMU:%s %s iova=0x%016llx flags=0x%04x")
CACHE_TAG_LOG = PrintfFormat("%s/%s type %s did %d pasid %d ref %d")
# v6.10 to about v6.19 print "pages"; the newest trees dropped it.
CACHE_TAG_FLUSH = PrintfFormat(
    "%s %s[%d] type %s did %d [0x%lx-0x%lx] addr 0x%lx pages 0x%lx mask 0x%lx")
CACHE_TAG_FLUSH_NO_PAGES = PrintfFormat(
    "%s %s[%d] type %s did %d [0x%lx-0x%lx] addr 0x%lx mask 0x%lx")
# prq_report's last %s is decode_prq_descriptor(); private data is appended only when present.
PRQ_REPORT = PrintfFormat(
    "%s/%s seq# %ld: rid=0x%llx addr=0x%llx %c%c%c%c%c pasid=0x%llx index=0x%llx")
PRQ_REPORT_PRIVATE = PrintfFormat(
    "%s/%s seq# %ld: rid=0x%llx addr=0x%llx %c%c%c%c%c pasid=0x%llx index=0x%llx"
    " private=0x%llx/0x%llx")

# The context letter is the third flag (trace_print_lat_fmt): 'H' is a hardirq that
# interrupted a softirq, 'Z' an NMI that interrupted a hardirq.
_CONTEXTS = {".": ev.TASK, "s": ev.SOFTIRQ, "h": ev.HARDIRQ, "H": ev.HARDIRQ,
             "z": ev.NMI, "Z": ev.NMI}

# The slow path, for task names with spaces and traces without the flags column.  The greedy
# comm makes the split happen at the rightmost "-<pid> [<cpu>]" that leaves a valid rest.
_LINE = re.compile(
    r"\s*(?P<comm>.*)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?:(?P<flags>\S{4,5})\s+)?"
    r"(?P<secs>\d+)\.(?P<frac>\d+):\s+(?P<name>\w+):\s?(?P<payload>.*)", re.DOTALL)


# --- payloads ----------------------------------------------------------------------------------
# Hot parsers take the line's whitespace-split words (the payload starts at word 5); the others
# take the payload text.  Both return the event's own fields, or None when the text does not
# fit the format.

_PAYLOAD_WORD = 5


def _qi_submit(w: list[str]) -> tuple | None:
    if len(w) != 11 or w[6][-1:] != ":":
        return None
    # Interned: a handful of distinct values, so pickle sends each once per chunk (workers.py).
    return (intern(w[5]), intern(w[6][:-1]), hex_word(w[7]), hex_word(w[8]), hex_word(w[9]),
            hex_word(w[10]))


def _map(w: list[str]) -> tuple | None:
    if len(w) != 11 or w[5] != "IOMMU:" or w[7] != "-":
        return None
    return (hex_word(w[6], "iova=0x"), hex_word(w[8]), hex_word(w[9], "paddr=0x"),
            dec_word(w[10], "size="))


def _unmap(w: list[str]) -> tuple | None:
    if len(w) != 11 or w[5] != "IOMMU:" or w[7] != "-":
        return None
    return (hex_word(w[6], "iova=0x"), hex_word(w[8]), dec_word(w[9], "size="),
            dec_word(w[10], "unmapped_size="))


def _cache_tag_flush(kind: str) -> Callable[[str], tuple | None]:
    def parse(payload: str) -> tuple | None:
        values = CACHE_TAG_FLUSH.parse(payload)
        if values is None:
            values = CACHE_TAG_FLUSH_NO_PAGES.parse(payload)
            if values is None:
                return None
            values = values[:8] + (None,) + values[8:]
        return (kind, *values)

    return parse


def _prq_report(payload: str) -> tuple | None:
    values = PRQ_REPORT_PRIVATE.parse(payload)
    if values is not None:
        values, private = values[:-2], values[-2:]
    else:
        values, private = PRQ_REPORT.parse(payload), None
    if values is None:
        return None
    iommu, dev, seq, rid, addr, r, w, x, p, last, pasid, index = values
    # decode_prq_descriptor prints each flag as its letter or '-'.
    flags = (r == "r", w == "w", x == "x", p == "p", last == "l")
    return (iommu, dev, seq, rid, addr, *flags, pasid, index, private)


# "<event name>:" as the line prints it -> (record constructor, words parser, format)
_HOT = {
    "qi_submit:": (ev.fast_constructor(ev.QiSubmit), _qi_submit, QI_SUBMIT.fmt),
    "map:": (ev.fast_constructor(ev.Map), _map, MAP.fmt),
    "unmap:": (ev.fast_constructor(ev.Unmap), _unmap, UNMAP.fmt),
}


def _entry(record: type, parse: Callable[[str], tuple | None], fmt: PrintfFormat) -> tuple:
    return ev.fast_constructor(record), parse, fmt.fmt


# "<event name>:" -> (record constructor, payload-text parser, format)
_OTHERS = {
    "attach_device_to_domain:": _entry(ev.AttachDevice, DEVICE.parse, DEVICE),
    "detach_device_from_domain:": _entry(ev.DetachDevice, DEVICE.parse, DEVICE),
    "add_device_to_group:": _entry(ev.AddDeviceToGroup, GROUP.parse, GROUP),
    "remove_device_from_group:": _entry(ev.RemoveDeviceFromGroup, GROUP.parse, GROUP),
    "io_page_fault:": _entry(ev.IoPageFault, IO_PAGE_FAULT.parse, IO_PAGE_FAULT),
    "cache_tag_assign:": _entry(ev.CacheTagAssign, CACHE_TAG_LOG.parse, CACHE_TAG_LOG),
    "cache_tag_unassign:": _entry(ev.CacheTagUnassign, CACHE_TAG_LOG.parse, CACHE_TAG_LOG),
    "cache_tag_flush_all:": _entry(ev.CacheTagFlushAll, CACHE_TAG_LOG.parse, CACHE_TAG_LOG),
    "cache_tag_flush_range:": _entry(ev.CacheTagFlush, _cache_tag_flush("range"),
                                     CACHE_TAG_FLUSH),
    "cache_tag_flush_range_np:": _entry(ev.CacheTagFlush, _cache_tag_flush("range_np"),
                                        CACHE_TAG_FLUSH),
    "prq_report:": _entry(ev.PrqReport, _prq_report, PRQ_REPORT),
}
_new_other = ev.fast_constructor(ev.OtherEvent)


# --- the line header --------------------------------------------------------------------------


def _micros(secs: str, frac: str) -> int:
    """``secs.frac`` as integer microseconds, exactly (no float on the way)."""
    if len(frac) != 6:
        frac = (frac + "000000")[:6]  # fewer digits: pad; nanoseconds: truncate
    return int(secs) * 1_000_000 + int(frac)


def _flags(flags: str | None) -> tuple[str, bool] | None:
    """``(context, irqs_off)`` from the flags column (None when absent); None if malformed."""
    if flags is None:
        return ev.TASK, False
    if len(flags) not in (4, 5) or flags[2] not in _CONTEXTS:
        return None
    return _CONTEXTS[flags[2]], flags[0] in "dD"


def _task_cpu_flags(w0: str, w1: str, w2: str) -> tuple | None:
    """``(comm, pid, cpu, context, irqs_off)`` from the first three words, or None."""
    comm, _, pid = w0.rpartition("-")
    flags = _flags(w2)
    if not (comm and pid.isdigit() and w1[:1] == "[" and w1[-1:] == "]"
            and w1[1:-1].isdigit() and flags):
        return None
    return intern(comm), int(pid), int(w1[1:-1]), *flags


def _slow_header(line: str) -> tuple[tuple, int, str, list[str], str] | None:
    """A line the word-split path cannot take (task name with spaces, no flags column),
    matched whole and presented as the same words, so each payload has one parser."""
    match = _LINE.fullmatch(line)
    flags = _flags(match["flags"]) if match else None
    if flags is None:
        return None
    head = (match["comm"].strip(), int(match["pid"]), int(match["cpu"]), *flags)
    payload = match["payload"]
    name = match["name"] + ":"
    words = ["", "", "", "", name, *payload.split()]
    return head, _micros(match["secs"], match["frac"]), name, words, payload


def _not_a_line(line: str, where: str) -> BadInput:
    if "LOST" in line and "EVENTS" in line:
        return BadInput(f"ftrace lost events here, the trace is incomplete: {clip(line)!r}",
                        where=where)
    return BadInput(f"not an ftrace line (expected {LINE_SHAPE!r}): {clip(line)!r}",
                    where=where)


def _payload_text(line: str) -> str:
    parts = line.split(None, _PAYLOAD_WORD)
    return parts[_PAYLOAD_WORD] if len(parts) > _PAYLOAD_WORD else ""


def parse_ftrace_lines(numbered: Iterable[tuple[int, str]], source: str,
                       names: Iterable[str] | None = None) -> Iterator[ev.GuestEvent]:
    """Events from ``(line number, line)`` pairs of ftrace text; ``source`` names the file in
    errors.  Comment lines (``#``) and blank lines are skipped.  With ``names`` (event names,
    e.g. ``qi_submit``), only those events: the others' payload is not even parsed."""
    heads: dict[tuple[str, str, str], tuple | None] = {}  # few distinct (task, cpu, flags)
    hot, others = _HOT, _OTHERS
    wanted = None if names is None else frozenset(name + ":" for name in names)
    for lineno, line in numbered:
        if not line or line[0] == "#":
            continue
        # The common header is decoded inline, not in a helper: a call per line costs ~5%.
        words = line.split()
        if len(words) < _PAYLOAD_WORD:
            head = None
        else:
            key = (words[0], words[1], words[2])
            head = heads.get(key, False)
            if head is False:
                head = heads[key] = _task_cpu_flags(*key)
            stamp, name = words[3], words[4]
            # the fixed-width "secs.usecs:" of the default clock, else the general path
            if head is not None and stamp[-8:-7] == "." and stamp[-1] == ":" == name[-1]:
                try:
                    ts_us = int(stamp[:-8]) * 1_000_000 + int(stamp[-7:-1])
                except ValueError:
                    head = None
            else:
                head = None
        payload = None
        if head is None:
            if not words:
                continue  # a blank line, e.g. after prq_report's trailing newline
            slow = _slow_header(line)
            if slow is None:
                raise _not_a_line(line, f"{source}:{lineno}")
            head, ts_us, name, words, payload = slow
        if wanted is not None and name not in wanted:
            continue
        entry = hot.get(name)
        if entry is not None:
            text_or_words: str | list[str] = words
        else:
            if payload is None:
                payload = _payload_text(line)
            entry = others.get(name)
            if entry is None:
                yield _new_other(lineno, head[0], head[1], head[2], ts_us, head[3], head[4],
                                 name[:-1], payload)
                continue
            text_or_words = payload
        build, parse, fmt = entry
        try:
            fields = parse(text_or_words)
        except ValueError:  # a number that is not one
            fields = None
        if fields is None:
            raise BadInput(f"{name[:-1]} payload does not match {fmt!r}: "
                           f"{clip(payload or _payload_text(line))!r}",
                           where=f"{source}:{lineno}")
        yield build(lineno, head[0], head[1], head[2], ts_us, head[3], head[4], *fields)


def read_ftrace(path: str | Path) -> Iterator[ev.GuestEvent]:
    """Events of a whole ftrace text file (plain, .xz or .gz), e.g. a copy of ``trace``."""
    return parse_ftrace_lines(numbered_lines(path), str(path))
