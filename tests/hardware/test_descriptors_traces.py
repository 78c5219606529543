"""Every descriptor in the real recordings decodes and re-encodes to the same raw words.

Guest side: Linux 6.1's ``qi_submit: <label> dmar0: qw0 qw1 qw2 qw3`` ftrace lines.  VMM side:
QEMU 7.2's ``vtd_inv_desc invalidate desc type <name> high <qw1> low <qw0>`` lines.  The lines
are parsed with a local regex (the real trace parsers live in vtdsim.traces).
"""

import lzma
import re
from collections import Counter
from pathlib import Path

import pytest

from vtdsim.hardware.descriptors import QEMU_TRACE_NAMES, decode, encode

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
RECORDINGS = sorted(TRACES.glob("*/guest.log.xz")) if TRACES.is_dir() else []

pytestmark = pytest.mark.skipif(not RECORDINGS, reason=f"no recordings under {TRACES}")

QI_SUBMIT = re.compile(
    r"qi_submit: (\w+) \S+: (0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+)"
)
VTD_INV_DESC = re.compile(
    r"vtd_inv_desc invalidate desc type (\S+) high (0x[0-9a-f]+) low (0x[0-9a-f]+)"
)


def _read(path: Path) -> str:
    with lzma.open(path, "rt") as f:
        return f.read()


def _distinct(pattern: re.Pattern, text: str) -> Counter:
    """Distinct matches (the biggest recording has ~108k lines but few distinct descriptors)."""
    return Counter(pattern.findall(text))


def _assert_round_trip(label: str, qws: tuple[int, ...], where: str) -> None:
    desc = decode(qws)
    assert desc.label == label, f"{where}: {qws} decodes as {desc.label}"
    assert desc.reserved_bits() == 0, f"{where}: {desc.describe()}"
    assert encode(desc.label, **desc.fields) == desc.qws, f"{where}: {desc.describe()}"
    assert desc.describe().startswith(label)


@pytest.mark.parametrize("guest_log", RECORDINGS, ids=lambda p: p.parent.name)
def test_every_qi_submit_line_round_trips(guest_log):
    lines = _distinct(QI_SUBMIT, _read(guest_log))
    assert lines, f"{guest_log}: no qi_submit lines"
    for (label, *words), _count in lines.items():
        qws = tuple(int(w, 16) for w in words)
        _assert_round_trip(label, qws, f"{guest_log.parent.name}")


@pytest.mark.parametrize("guest_log", RECORDINGS, ids=lambda p: p.parent.name)
def test_every_qemu_inv_desc_line_round_trips(guest_log):
    qemu_log = guest_log.with_name("qemu.log.xz")
    if not qemu_log.exists():
        pytest.skip(f"{qemu_log} absent")
    lines = _distinct(VTD_INV_DESC, _read(qemu_log))
    assert lines, f"{qemu_log}: no vtd_inv_desc lines"
    for (name, high, low), _count in lines.items():
        label = QEMU_TRACE_NAMES[name]
        qws = (int(low, 16), int(high, 16), 0, 0)
        _assert_round_trip(label, qws, f"{qemu_log.parent.name}")
