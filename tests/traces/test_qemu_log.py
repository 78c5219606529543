"""QEMU trace-log parsing: every vtd_* format (built from QEMU's own format strings), the
timestamp prefix, unknown events, malformed lines, and the recordings' event counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from vtdsim.errors import BadInput
from vtdsim.traces import events as ev
from vtdsim.traces.qemu_log import _EVENTS, FORMATS, _values, parse_qemu_lines, read_qemu_log

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"


def parse(*lines: str, source: str = "q.log") -> list[ev.QemuEvent]:
    return list(parse_qemu_lines(enumerate(lines, 1), source))


def line_of(name: str, *args: object) -> str:
    return f"{name} {FORMATS[name] % args}".rstrip(" ")


CASES = [  # (event, printed values, expected record without its line number)
    ("vtd_inv_desc", ("iotlb", 0xffffe001, 0x700f2), ev.QemuInvDesc(1, "iotlb", 0x700f2,
                                                                    0xffffe001)),
    ("vtd_inv_desc_iotlb_pages", (7, 0xffffe000, 1), ev.QemuIotlbPages(1, 7, 0xffffe000, 1)),
    ("vtd_inv_desc_iotlb_domain", (2,), ev.QemuIotlbDomain(1, 2)),
    ("vtd_inv_desc_iotlb_global", (), ev.QemuIotlbGlobal(1)),
    ("vtd_inv_desc_cc_devices", (0x100, 0), ev.QemuCcDevices(1, 0x100, 0)),
    ("vtd_inv_desc_cc_device", (0, 0x1F, 3), ev.QemuCcDevice(1, 0xFB)),
    ("vtd_inv_desc_cc_domain", (4,), ev.QemuCcDomain(1, 4)),
    ("vtd_inv_desc_cc_global", (), ev.QemuCcGlobal(1)),
    ("vtd_inv_desc_iec", (1, 0x11, 0), ev.QemuIecInv(1, 1, 0x11, 0)),
    ("vtd_inv_desc_wait_sw", (0x1052004, 2), ev.QemuWaitSw(1, 0x1052004, 2)),
    ("vtd_inv_qi_setup", (0x2a44000, 256), ev.QemuQiSetup(1, 0x2a44000, 256)),
    ("vtd_inv_qi_enable", (1,), ev.QemuQiEnable(1, True)),
    ("vtd_inv_qi_tail", (4,), ev.QemuQiTail(1, 4)),
    ("vtd_inv_qi_head", (3,), ev.QemuQiHead(1, 3)),
    ("vtd_inv_qi_fetch", (), ev.QemuQiFetch(1)),
    ("vtd_reg_write", (0x88, 4, 0x40), ev.QemuRegWrite(1, 0x88, 4, 0x40)),
    ("vtd_reg_write_gcmd", (0x4000000, 0x5000000), ev.QemuGcmdWrite(1, 0x4000000, 0x5000000)),
    ("vtd_reg_write_fectl", (0,), ev.QemuFectlWrite(1, 0)),
    ("vtd_dmar_enable", (0,), ev.QemuDmarEnable(1, False)),
    ("vtd_switch_address_space", (0, 0x1F, 2, 1), ev.QemuSwitchAddressSpace(1, 0xFA, True)),
    ("vtd_dmar_translate", (1, 0, 0, 0xffffd000, 0x5cf0000, 0xfff),
     ev.QemuDmarTranslate(1, 0x100, 0xffffd000, 0x5cf0000, 0xfff)),
]


def test_every_format_has_a_case():
    assert {name for name, _, _ in CASES} == set(FORMATS)


@pytest.mark.parametrize(("name", "values", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_event_format(name, values, expected):
    assert parse(line_of(name, *values)) == [expected]


def test_recorded_spellings():
    lines = ["vtd_inv_qi_fetch ",  # QEMU prints the empty format after a space
             "vtd_inv_desc_cc_device context invalidate device 00:1f.03",
             "vtd_switch_address_space Device 00:1f.2 switching address space "
             "(iommu enabled=0)"]
    assert parse(*lines) == [ev.QemuQiFetch(1), ev.QemuCcDevice(2, 0xFB),
                             ev.QemuSwitchAddressSpace(3, 0xFA, False)]


def test_timestamp_prefix_and_unknown_events():
    events = parse("4242@1700000000.123456:vtd_inv_qi_tail write tail 6",
                   "vtd_fault_disabled Fault processing disabled for context entry",
                   "", "pci_cfg_write virtio 0:0 @0x4 <- 0x7")
    assert events == [ev.QemuQiTail(1, 6),
                      ev.QemuOther(2, "vtd_fault_disabled",
                                   "Fault processing disabled for context entry"),
                      ev.QemuOther(4, "pci_cfg_write", "virtio 0:0 @0x4 <- 0x7")]


@pytest.mark.parametrize("line", ["  indented text", "qemu-system-x86_64: warning: x",
                                  "0x1234 vtd_inv_qi_tail"])
def test_line_without_an_event_name(line):
    with pytest.raises(BadInput) as exc_info:
        parse("vtd_inv_qi_fetch ", line, source="qemu.log")
    message = str(exc_info.value)
    assert message.startswith("qemu.log:2: not a QEMU trace line") and "\n" not in message


@pytest.mark.parametrize("line", ["vtd_inv_qi_tail write tail x",
                                  "vtd_inv_desc invalidate desc type iotlb high 0x1",
                                  "vtd_dmar_translate dev 01:00.00 iova 0x1 gpa 0x2 mask 0x3"])
def test_known_event_with_wrong_text(line):
    with pytest.raises(BadInput) as exc_info:
        parse(line, source="qemu.log")
    message = str(exc_info.value)
    assert message.startswith("qemu.log:1: vtd_") and "does not match" in message
    assert "\n" not in message


@pytest.mark.parametrize("line", ["vtd_inv_desc invalidate desc type iotlb high 0x0x1 low 0x2",
                                  "vtd_inv_desc invalidate desc type iotlb high 0x1_0 low 0x2",
                                  "vtd_inv_desc invalidate desc type iotlb high 0xF low 0x2",
                                  "vtd_inv_qi_head read head +3",
                                  "vtd_inv_qi_head read head \u00b2"])
def test_hot_events_take_only_what_printf_prints(line):
    """The word-split path of the hot events is no more lenient than their format: a second
    0x, an underscore, upper-case hex (QEMU prints %x), a sign or a non-ASCII digit is a
    one-line error, not a value (nor a traceback)."""
    with pytest.raises(BadInput, match="^qemu.log:1: vtd_inv_.* does not match"):
        parse(line, source="qemu.log")


def test_hot_and_format_paths_agree():
    for name, values, _ in CASES:
        text = line_of(name, *values).partition(" ")[2]
        _, fmt, adapt = _EVENTS[name]
        parsed = fmt.parse(text)
        assert _values(name, text, fmt, adapt) == (parsed if adapt is None else adapt(*parsed))


def test_names_keep_only_those_events():
    lines = [line_of("vtd_inv_qi_tail", 2), line_of("vtd_dmar_translate", 1, 0, 0, 1, 2, 3),
             "vtd_dmar_translate garbage that is never parsed", "vtd_fault_disabled x",
             line_of("vtd_inv_qi_head", 0)]
    kept = list(parse_qemu_lines(enumerate(lines, 1), "q.log",
                                 frozenset({"vtd_inv_qi_tail", "vtd_inv_qi_head"})))
    assert kept == [ev.QemuQiTail(1, 2), ev.QemuQiHead(5, 0)]


# --- the recordings -------------------------------------------------------------------------

COUNTS = {  # counted with awk over the first word of each line
    "legacy-cm-ats": {"QemuQiTail": 108585, "QemuInvDesc": 217168, "QemuIotlbPages": 72346,
                      "QemuDmarTranslate": 106808, "QemuCcDevice": 8, "QemuGcmdWrite": 6},
    "legacy-cm-default": {"QemuQiTail": 5998, "QemuInvDesc": 11994, "QemuIotlbPages": 5926,
                          "QemuDmarTranslate": 60033, "QemuCcDevice": 7},
    "legacy-nocm-ats-lazy": {"QemuQiTail": 531, "QemuInvDesc": 1060, "QemuIotlbDomain": 240,
                             "QemuDmarTranslate": 117817},
    "legacy-nocm-lazy": {"QemuQiTail": 118, "QemuInvDesc": 234, "QemuIotlbDomain": 60},
    "legacy-nocm-strict": {"QemuQiTail": 3016, "QemuInvDesc": 6030, "QemuIotlbPages": 2958},
    "sm-nocm-lazy": {"QemuQiTail": 121, "QemuInvDesc": 239, "QemuIotlbDomain": 62,
                     "QemuSwitchAddressSpace": 42},
    # QEMU 10.0: the same formats; its vtd_inv_desc also logs PASID-IOTLB ("p-iotlb")
    "linux612-legacy-cm": {"QemuQiTail": 6748, "QemuInvDesc": 13494},
    "linux612-legacy-nocm-lazy": {"QemuQiTail": 133, "QemuInvDesc": 264},
    "linux612-sm-cm-flts": {"QemuQiTail": 223, "QemuInvDesc": 436},
    "linux612-sm-nocm-lazy": {"QemuQiTail": 131, "QemuInvDesc": 259},
}
P_IOTLB = {"linux612-sm-cm-flts": 159}  # the first-stage domain's flushes, logged by 10.0


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_recorded_qemu_logs(name):
    path = TRACES / name / "qemu.log.xz"
    if not path.is_file():
        pytest.skip(f"recording {name} not present under {TRACES}")
    events = Counter(type(e).__name__ for e in read_qemu_log(path))
    assert "QemuOther" not in events  # every event the recordings hold has a record
    assert {kind: events[kind] for kind in COUNTS[name]} == COUNTS[name]
    # each IQT write drains the queue: one fetch per tail write but the very first (tail 0)
    assert events["QemuQiFetch"] == events["QemuQiTail"] - 1
    # QEMU 7.2 prints no vtd_inv_desc for the descriptors it treats as no-ops (PASID-cache),
    # which only scalable mode sends
    no_ops = events["QemuQiHead"] - events["QemuInvDesc"]
    assert no_ops == 0 if "legacy" in name else no_ops > 0
    if name in P_IOTLB:
        kinds = Counter(e.kind for e in read_qemu_log(path) if type(e) is ev.QemuInvDesc)
        assert kinds["p-iotlb"] == P_IOTLB[name]
