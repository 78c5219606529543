"""The register map and the access kinds RegisterFile applies to MMIO (spec 10.2, reference §1)."""

import pytest

from vtdsim.errors import BadInput
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.registers import RegisterFile, register_map


class Recorder:
    """Collects the register file's callbacks (real RegisterFile, plain lists)."""

    def __init__(self):
        self.writes = []
        self.events = []

    def on_write(self, reg, old, new):
        self.writes.append((reg.name, old, new))

    def on_event(self, event, **fields):
        self.events.append((event, fields))


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def regs(rec):
    caps = get_preset("qemu72-legacy-cm")
    return RegisterFile(caps, on_write=rec.on_write, on_event=rec.on_event)


def test_qemu72_map_offsets():
    offsets = {r.name: r.offset for r in register_map(get_preset("qemu72-legacy"))}
    assert offsets["GCMD"] == 0x18 and offsets["GSTS"] == 0x1C and offsets["RTADDR"] == 0x20
    assert offsets["CCMD"] == 0x28 and offsets["FSTS"] == 0x34 and offsets["FECTL"] == 0x38
    assert offsets["IQH"] == 0x80 and offsets["IQT"] == 0x88 and offsets["IQA"] == 0x90
    assert offsets["IQERCD"] == 0xB0 and offsets["IRTA"] == 0xB8
    assert offsets["IVA"] == 0xF0 and offsets["IOTLB"] == 0xF8 and offsets["FRCD0"] == 0x220
    assert "FRCD1" not in offsets and "PQH" not in offsets


def test_frcds_follow_fro_and_nfr():
    caps = get_preset("server-sm")
    offsets = {r.name: r.offset for r in register_map(caps)}
    assert [offsets[f"FRCD{i}"] for i in range(8)] == [0x400 + 16 * i for i in range(8)]
    assert offsets["IVA"] == 0x500 and offsets["PQH"] == 0xC0


def test_overlapping_registers_are_bad_input():
    with pytest.raises(BadInput, match="overlaps"):
        register_map(get_preset("qemu72-legacy").with_(iro=0))


def test_ro_registers_read_caps_and_ignore_writes(regs, rec):
    caps = regs.caps
    assert regs.mmio_read(0x0, 4) == 0x10
    assert regs.mmio_read(0x8, 8) == caps.cap
    assert regs.mmio_read(0xC, 4) == caps.cap >> 32
    regs.mmio_write(0x8, 8, 0)
    assert regs.mmio_read(0x8, 8) == caps.cap
    assert rec.events[-1][0] == "read_only_write"


def test_wo_gcmd_reads_zero_but_is_stored(regs, rec):
    regs.mmio_write(0x18, 4, 0x04000000)
    assert regs.mmio_read(0x18, 4) == 0
    assert regs["GCMD"] == 0x04000000
    assert rec.writes == [("GCMD", 0, 0x04000000)]


def test_reserved_bits_ignored_on_write(regs, rec):
    regs.mmio_write(0x20, 8, 0x4F0F000 | 0x3FF)  # RTADDR 9:0 reserved
    assert regs.mmio_read(0x20, 8) == 0x4F0F000
    assert rec.events == [("reserved_bits_written", {"reg": "RTADDR", "bits": 0x3FF})]


def test_rw1c_clears_only_written_ones(regs):
    regs.update("FSTS", pfo=1, iqe=1, ppf=1, fri=3)
    regs.mmio_write(0x34, 4, 0x1)  # PFO
    assert regs.get("FSTS", "pfo") == 0 and regs.get("FSTS", "iqe") == 1
    regs.mmio_write(0x34, 4, 0xFFFFFFFF)  # RO PPF/FRI untouched
    assert regs.get("FSTS", "iqe") == 0
    assert regs.get("FSTS", "ppf") == 1 and regs.get("FSTS", "fri") == 3


def test_frcd_only_f_is_writable(regs, rec):
    regs.set("FRCD0", (1 << 127) | (0x5 << 96) | 0xABC000)
    regs.mmio_write(0x220, 8, 0)  # low qword: all RO
    regs.mmio_write(0x228, 4, 0xFFFFFFFF)  # dword 2: RO (SID, PV low)
    assert rec.writes == []  # F lives in dword 3: nothing triggered yet
    regs.mmio_write(0x22C, 4, 0x80000000)
    assert regs["FRCD0"] == (0x5 << 96) | 0xABC000
    assert [w[0] for w in rec.writes] == ["FRCD0"]


def test_two_dword_write_acts_on_high_dword(regs, rec):
    regs.mmio_write(0x28, 4, 0x00080001)  # CCMD low: SID 00:01.0, DID 1
    assert rec.writes == []
    regs.mmio_write(0x2C, 4, 0xE0000000)  # ICC | CIRG=device
    assert rec.writes[-1][0] == "CCMD"
    assert regs.get("CCMD", "did") == 1 and regs.get("CCMD", "sid") == 0x8
    assert regs.get("CCMD", "cirg") == 3 and regs.get("CCMD", "icc") == 1


def test_iqt_acts_on_low_dword_only(regs, rec):
    regs.mmio_write(0x8C, 4, 0)
    assert rec.writes == []
    regs.mmio_write(0x88, 4, 0x20)
    assert rec.writes == [("IQT", 0, 0x20)]


def test_64bit_write_of_iotlb_acts_once(regs, rec):
    regs.mmio_write(0xF8, 8, (1 << 63) | (2 << 60) | (5 << 32))
    assert [w[0] for w in rec.writes] == ["IOTLB"]
    assert regs.get("IOTLB", "did") == 5


def test_iaig_is_read_only(regs):
    regs.mmio_write(0xF8, 8, 3 << 57)
    assert regs.get("IOTLB", "iaig") == 0


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0x18, 2), (0x18, 1), (0x19, 4), (0x1C, 8), (0x24, 8), (0x300, 4), (0x18, 16)],
)
def test_malformed_accesses_are_ignored(regs, rec, offset, size):
    before = {r.name: regs[r.name] for r in regs.registers}
    regs.mmio_write(offset, size, 0xFFFFFFFF)
    assert regs.mmio_read(offset, size) == 0
    assert {r.name: regs[r.name] for r in regs.registers} == before
    assert [e[0] for e in rec.events] == ["mmio_write_ignored", "mmio_read_ignored"]


def test_event_control_resets_masked(regs):
    assert regs.mmio_read(0x38, 4) == 0x80000000  # FECTL.IM
    assert regs.mmio_read(0xA0, 4) == 0x80000000  # IECTL.IM
    regs.mmio_write(0x38, 4, 0xFFFFFFFF)  # IP is RO
    assert regs.mmio_read(0x38, 4) == 0x80000000


def test_iqa_dw_needs_smts():
    legacy = RegisterFile(get_preset("qemu72-legacy"))
    legacy.mmio_write(0x90, 8, 0x2A44801)
    assert legacy.get("IQA", "dw") == 0 and legacy.get("IQA", "qs") == 1
    sm = RegisterFile(get_preset("qemu72-sm"))
    sm.mmio_write(0x90, 8, 0x2A44801)
    assert sm.get("IQA", "dw") == 1


def test_iva_is_write_only(regs):
    regs.mmio_write(0xF0, 8, 0xFFF80005)
    assert regs.mmio_read(0xF0, 8) == 0
    assert regs.get("IVA", "addr") == 0xFFF80 and regs.get("IVA", "am") == 5
