"""ftrace parsing: line header, every event format (built from the kernel's format strings),
the hot paths against the declared formats, malformed input, and the recordings' counts."""

from __future__ import annotations

import gzip
import lzma
import re
from collections import Counter
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from vtdsim.errors import BadInput
from vtdsim.traces import events as ev
from vtdsim.traces import ftrace
from vtdsim.traces.ftrace import parse_ftrace_lines, read_ftrace
from vtdsim.traces.recording import Recording

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
HEAD = "          insmod-116     [001] d.h1.  2345.000017: "


def c_format(fmt: str, *args: object) -> str:
    """printf as the kernel does it: Python's % without C length modifiers."""
    return re.sub(r"%([-+ #0]*\d*)(?:ll|l|z|h)([diux])", r"%\1\2", fmt) % args


def parse(*lines: str, source: str = "t.txt") -> list[ev.GuestEvent]:
    return list(parse_ftrace_lines(enumerate(lines, 1), source))


def one(payload_line: str) -> ev.GuestEvent:
    (event,) = parse(HEAD + payload_line)
    return event


# --- header -------------------------------------------------------------------------------


def test_header_fields_and_exact_microseconds():
    event = one("qi_submit: iotlb_inv dmar0: 0x700f2 0xffffe001 0x0 0x0")
    assert (event.line, event.comm, event.pid, event.cpu) == (1, "insmod", 116, 1)
    assert event.ts_us == 2_345_000_017
    assert (event.context, event.irqs_off) == (ev.HARDIRQ, True)


@pytest.mark.parametrize(("flags", "context", "irqs_off"), [
    (".....", ev.TASK, False), ("d.s..", ev.SOFTIRQ, True), ("d.H2.", ev.HARDIRQ, True),
    ("dNh1.", ev.HARDIRQ, True), ("..z..", ev.NMI, False), ("D.Z1.", ev.NMI, True),
    ("d.h.", ev.HARDIRQ, True),  # the 4-character flags of older kernels
])
def test_flags_column(flags, context, irqs_off):
    (event,) = parse(f"  <idle>-0  [000] {flags}  4.000001: unmap: IOMMU: iova=0x0000000000001000"
                     " - 0x0000000000002000 size=4096 unmapped_size=4096")
    assert (event.comm, event.pid, event.context, event.irqs_off) == ("<idle>", 0, context,
                                                                      irqs_off)


def test_comm_with_spaces_and_dashes_splits_at_the_pid():
    (event,) = parse("   Web Content-x-77-1234   [003] ..s1.  10.5: map: IOMMU: "
                     "iova=0x0000000000001000 - 0x0000000000002000 paddr=0x0000000000005000 "
                     "size=4096")
    assert (event.comm, event.pid, event.cpu, event.ts_us) == ("Web Content-x-77", 1234, 3,
                                                               10_500_000)


def test_line_without_flags_column():
    (event,) = parse("kworker/u4:2-99 [000] 1.000002: attach_device_to_domain: "
                     "IOMMU: device=0000:00:03.0")
    assert event == ev.AttachDevice(1, "kworker/u4:2", 99, 0, 1_000_002, ev.TASK, False,
                                    "0000:00:03.0")


def test_comments_and_blank_lines_are_skipped():
    events = parse("# tracer: nop", "#", "", HEAD + "map: IOMMU: iova=0x0000000000001000 - "
                   "0x0000000000002000 paddr=0x0000000000003000 size=4096")
    assert [e.line for e in events] == [4]


# --- events, each from its format string ----------------------------------------------------


def test_qi_submit_and_unknown_type_label():
    line = c_format(ftrace.QI_SUBMIT.fmt, "dev_tlb_inv", "dmar0", 0x10000000003, 0xfffb7000, 0, 0)
    assert one("qi_submit: " + line) == ev.QiSubmit(
        1, "insmod", 116, 1, 2_345_000_017, ev.HARDIRQ, True,
        "dev_tlb_inv", "dmar0", 0x10000000003, 0xfffb7000, 0, 0)
    assert one("qi_submit: 0xa dmar0: 0xa 0x0 0x0 0x0").label == "0xa"


def test_map_and_unmap():
    event = one("map: " + c_format(ftrace.MAP.fmt, 0xffffe000, 0x100000000, 0x5cf6000, 8192))
    assert (event.iova, event.end, event.paddr, event.size) == (0xffffe000, 1 << 32,
                                                                 0x5cf6000, 8192)
    event = one("unmap: " + c_format(ftrace.UNMAP.fmt, 0xff7a1000, 0xff7a2000, 4096, 4096))
    assert isinstance(event, ev.Unmap)
    assert (event.iova, event.end, event.size, event.unmapped_size) == (0xff7a1000, 0xff7a2000,
                                                                         4096, 4096)


@pytest.mark.parametrize(("name", "record"), [
    ("attach_device_to_domain", ev.AttachDevice), ("detach_device_from_domain", ev.DetachDevice)])
def test_attach_detach(name, record):
    event = one(f"{name}: " + c_format(ftrace.DEVICE.fmt, "0000:01:00.0"))
    assert type(event) is record and event.device == "0000:01:00.0"


@pytest.mark.parametrize(("name", "record"), [
    ("add_device_to_group", ev.AddDeviceToGroup),
    ("remove_device_from_group", ev.RemoveDeviceFromGroup)])
def test_group_events(name, record):
    event = one(f"{name}: " + c_format(ftrace.GROUP.fmt, 5, "0000:01:00.0"))
    assert type(event) is record and (event.group, event.device) == (5, "0000:01:00.0")


def test_io_page_fault():
    event = one("io_page_fault: " + c_format(ftrace.IO_PAGE_FAULT.fmt, "nvme", "0000:00:03.0",
                                             0xdead000, 0x1))
    assert (event.driver, event.device, event.iova, event.flags) == ("nvme", "0000:00:03.0",
                                                                     0xdead000, 1)


@pytest.mark.parametrize(("name", "record"), [
    ("cache_tag_assign", ev.CacheTagAssign), ("cache_tag_unassign", ev.CacheTagUnassign),
    ("cache_tag_flush_all", ev.CacheTagFlushAll)])
def test_cache_tag_log_events(name, record):
    event = one(f"{name}: " + c_format(ftrace.CACHE_TAG_LOG.fmt, "dmar1", "0000:3a:00.0",
                                       "devtlb", 7, 0, 2))
    assert type(event) is record
    assert (event.iommu, event.dev, event.type, event.did, event.pasid, event.ref) == (
        "dmar1", "0000:3a:00.0", "devtlb", 7, 0, 2)


FLUSH_ARGS = ("dmar0", "0000:00:03.0", 3, "iotlb", 9, 0x1000, 0x4fff, 0x0, 0x4, 0x2)


@pytest.mark.parametrize("kind", ["range", "range_np"])
def test_cache_tag_flush_with_pages(kind):
    event = one(f"cache_tag_flush_{kind}: " + c_format(ftrace.CACHE_TAG_FLUSH.fmt, *FLUSH_ARGS))
    assert event == ev.CacheTagFlush(1, "insmod", 116, 1, 2_345_000_017, ev.HARDIRQ, True,
                                     kind, *FLUSH_ARGS)


def test_cache_tag_flush_newest_format_without_pages():
    args = FLUSH_ARGS[:8] + FLUSH_ARGS[9:]
    event = one("cache_tag_flush_range: " + c_format(ftrace.CACHE_TAG_FLUSH_NO_PAGES.fmt, *args))
    assert (event.kind, event.pages, event.mask, event.addr) == ("range", None, 0x2, 0)
    assert (event.dev, event.pasid, event.start, event.end) == ("0000:00:03.0", 3, 0x1000,
                                                                0x4fff)


def test_prq_report_with_and_without_private_data():
    base = ("dmar0", "0000:00:04.0", 12, 0x20, 0x7f001, "r", "-", "-", "p", "l", 0x5, 0x3)
    event = one("prq_report: " + c_format(ftrace.PRQ_REPORT.fmt, *base))
    assert (event.seq, event.rid, event.addr, event.pasid, event.index) == (12, 0x20, 0x7f001,
                                                                            5, 3)
    assert (event.read, event.write, event.exe, event.priv, event.last) == (True, False, False,
                                                                            True, True)
    assert event.private is None
    # The private suffix ends in "\n", so ftrace prints an empty line after the event.
    text = c_format(ftrace.PRQ_REPORT_PRIVATE.fmt, *base, 0xaa, 0xbb)
    events = parse(HEAD + "prq_report: " + text, "")
    assert len(events) == 1 and events[0].private == (0xaa, 0xbb)


def test_other_events_keep_their_payload():
    event = one("sched_switch: prev_comm=dd prev_pid=5 ==> next_comm=swapper")
    assert event == ev.OtherEvent(1, "insmod", 116, 1, 2_345_000_017, ev.HARDIRQ, True,
                                  "sched_switch", "prev_comm=dd prev_pid=5 ==> next_comm=swapper")


def test_records_are_frozen_and_equal_to_normally_built_ones():
    event = one("map: IOMMU: iova=0x0000000000001000 - 0x0000000000002000 "
                "paddr=0x0000000000003000 size=4096")
    with pytest.raises(FrozenInstanceError):
        event.iova = 0
    assert event == ev.Map(1, "insmod", 116, 1, 2_345_000_017, ev.HARDIRQ, True,
                           0x1000, 0x2000, 0x3000, 4096)
    assert hash(event) == hash(ev.Map(1, "insmod", 116, 1, 2_345_000_017, ev.HARDIRQ, True,
                                      0x1000, 0x2000, 0x3000, 4096))


@pytest.mark.parametrize(("name", "fmt", "args"), [
    ("qi_submit", ftrace.QI_SUBMIT, ("iotlb_inv", "dmar0", 0x500f2, 0xffe80007, 0, 0)),
    ("map", ftrace.MAP, (0xffffb000, 0xffffc000, 0x5de2000, 4096)),
    ("unmap", ftrace.UNMAP, (0xbfc80000, 0xbfd00000, 524288, 524288)),
])
def test_hot_paths_agree_with_the_declared_formats(name, fmt, args):
    payload = c_format(fmt.fmt, *args)
    event = one(f"{name}: {payload}")
    fields = [f for f in ev.GuestEvent.__annotations__]
    own = tuple(getattr(event, f) for f in type(event).__dataclass_fields__ if f not in fields)
    assert own == fmt.parse(payload)


# --- malformed input ------------------------------------------------------------------------


def assert_one_line_error(exc_info, where: str, *words: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message
    assert message.startswith(where + ": ")
    for word in words:
        assert word in message


@pytest.mark.parametrize("line", [
    "this is not ftrace",
    "insmod-116 [000] d..1. 2.5: ",
    "insmod-116 [0x0] d..1. 2.576341: map: IOMMU:",
    "insmod-116 [000] d.q1. 2.576341: map: x",
])
def test_not_an_ftrace_line(line):
    with pytest.raises(BadInput) as exc_info:
        parse("# header", line, source="trace.txt")
    assert_one_line_error(exc_info, "trace.txt:2", "not an ftrace line", "<comm>-<pid>")


@pytest.mark.parametrize(("payload", "expected"), [
    ("map: IOMMU: iova=0x1000 - 0x2000 size=4096", "paddr="),
    ("map: IOMMU: iova=0xZZ - 0x2000 paddr=0x1 size=1", "paddr="),
    ("unmap: IOMMU: iova=0x1000 - 0x2000 size=4096", "unmapped_size="),
    ("qi_submit: iotlb_inv dmar0 0x1 0x2 0x3 0x4", "0x%llx"),
    ("qi_submit: iotlb_inv dmar0: 0x1 0x2 0x3", "0x%llx"),
    ("attach_device_to_domain: device=x", "IOMMU: device=%s"),
    ("cache_tag_flush_range: dmar0 dev type iotlb", "pages"),
    ("cache_tag_assign: dmar0/dev type iotlb did x pasid 0 ref 1", "ref %d"),
    ("prq_report: dmar0/dev seq# 1: rid=0x1", "rid=0x%llx"),
    # what %llx / %zu never print, though int() would take it
    ("qi_submit: iotlb_inv dmar0: 0x7_00f2 0x2 0x3 0x4", "0x%llx"),
    ("qi_submit: iotlb_inv dmar0: 0x1 0x0x2 0x3 0x4", "0x%llx"),
    ("map: IOMMU: iova=0x1000 - 0x2000 paddr=0x1 size=+4096", "paddr="),
    ("unmap: IOMMU: iova=0x1000 - 0x2000 size=4096 unmapped_size=4_096", "unmapped_size="),
])
def test_known_event_with_a_wrong_payload(payload, expected):
    with pytest.raises(BadInput) as exc_info:
        parse(HEAD + payload, source="g.log")
    assert_one_line_error(exc_info, "g.log:1", "does not match", expected)


def test_lost_events_marker_is_reported():
    with pytest.raises(BadInput, match="lost events"):
        parse("CPU:1 [LOST 1234 EVENTS]")


# --- files ----------------------------------------------------------------------------------

SAMPLE = ("# tracer: nop\n"
          "            init-1       [000] d..3.     2.061715: qi_submit: iec_inv dmar0: "
          "0x300000014 0x0 0x0 0x0\n")


@pytest.mark.parametrize("opener", [open, gzip.open, lzma.open])
def test_read_ftrace_plain_gz_xz(tmp_path, opener):
    path = tmp_path / "trace.txt"
    with opener(path, "wt") as stream:
        stream.write(SAMPLE)
    (event,) = read_ftrace(path)
    assert (event.line, event.label, event.qw0) == (2, "iec_inv", 0x300000014)


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="cannot open"):
        list(read_ftrace(tmp_path / "nope"))


# --- the recordings -------------------------------------------------------------------------

COUNTS = {  # (map, qi_submit, unmap), counted with grep
    "legacy-cm-ats": (36175, 108538, 36172),
    "legacy-cm-default": (5419, 5951, 2958),
    "legacy-nocm-ats-lazy": (47184, 500, 47180),
    "legacy-nocm-lazy": (38632, 84, 3022),
    "legacy-nocm-strict": (5295, 2983, 2958),
    "sm-nocm-lazy": (24185, 86, 2958),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_recorded_event_counts(name):
    if not (TRACES / name).is_dir():
        pytest.skip(f"recording {name} not present under {TRACES}")
    counts = Counter(type(e).__name__ for e in Recording(TRACES / name).guest_events())
    assert counts == {"Map": COUNTS[name][0], "QiSubmit": COUNTS[name][1],
                      "Unmap": COUNTS[name][2]}


def test_names_keep_only_those_events():
    lines = [HEAD + "qi_submit: iotlb_inv dmar0: 0x700f2 0xffffe001 0x0 0x0",
             HEAD + "map: IOMMU: iova=0x00000000fffff000 - 0x0000000100000000 "
                    "paddr=0x0000000005cf0000 size=4096",
             HEAD + "map: not parsed when not wanted",
             HEAD + "qi_submit: dev_tlb_inv dmar0: 0x10000000003 0xffffe000 0x0 0x0"]
    kept = list(parse_ftrace_lines(enumerate(lines, 1), "t.txt", ["qi_submit"]))
    assert [(type(e), e.line) for e in kept] == [(ev.QiSubmit, 1), (ev.QiSubmit, 4)]
