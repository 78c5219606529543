"""Presets pinned to the recorded dmesg lines of the Linux 6.1 and 6.12 guests
(traces/*/guest.log.xz)."""

import lzma
from pathlib import Path

import pytest

from vtdsim.errors import BadInput
from vtdsim.hardware.presets import PRESETS, from_dmesg, get_preset
from vtdsim.hardware.registers import register_map

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"

# recording folder -> the preset that must equal what its guest printed
RECORDED = {
    "legacy-cm-default": "qemu72-legacy-cm",
    "legacy-cm-ats": "qemu72-legacy-cm-ats",
    "legacy-nocm-lazy": "qemu72-legacy",
    "legacy-nocm-strict": "qemu72-legacy",
    "legacy-nocm-ats-lazy": "qemu72-legacy-ats",
    "sm-nocm-lazy": "qemu72-sm",
    "linux612-legacy-cm": "qemu100-legacy-cm",
    "linux612-legacy-cm-ats": "qemu100-legacy-cm-ats",
    "linux612-legacy-nocm-lazy": "qemu100-legacy",
    "linux612-sm-nocm-lazy": "qemu100-sm",
    "linux612-sm-cm-flts": "qemu100-flts-cm",
    "linux612-sm-cm-flts-strict": "qemu100-flts-cm",
}


def _dmar_line(folder: str) -> str:
    path = TRACES / folder / "guest.log.xz"
    if not path.exists():
        pytest.skip(f"recording {path} not present")
    with lzma.open(path, "rt", errors="replace") as f:
        for line in f:
            if "dmar0: reg_base_addr" in line:
                return line
    raise AssertionError(f"{path}: no dmar0 line")


@pytest.mark.parametrize(("folder", "preset"), sorted(RECORDED.items()))
def test_qemu72_presets_match_recorded_dmesg(folder, preset):
    assert from_dmesg(_dmar_line(folder)) == get_preset(preset)


def test_from_dmesg_parses_version_and_words():
    caps = from_dmesg("DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap d2008c22260286 ecap f00f4e")
    assert (caps.ver, caps.cap, caps.ecap) == (0x10, 0xD2008C22260286, 0xF00F4E)
    assert from_dmesg("cap 1 ecap 2").ver == 0x10


def test_from_dmesg_rejects_other_lines():
    with pytest.raises(BadInput, match="cap <hex> ecap <hex>"):
        from_dmesg("DMAR: IOMMU enabled")


def test_unknown_preset_lists_known_names():
    with pytest.raises(BadInput, match="qemu72-legacy"):
        get_preset("nope")


def test_server_sm_features():
    caps = get_preset("server-sm")
    assert caps.supported_levels == {4, 5} and caps.mgaw == 57
    assert caps.esrtps and caps.fs1gp and caps.fs5lp and caps.psi and caps.nfr == 8
    assert caps.smts and caps.ssts and caps.fsts and caps.pasid and caps.pss == 20
    assert caps.coherent and caps.smpwc and caps.nest and caps.dit and caps.pds
    assert not caps.caching_mode


def test_vm_flts_is_first_stage_only_without_caching_mode():
    caps = get_preset("vm-flts")
    assert caps.fsts and not caps.ssts and not caps.caching_mode and caps.smts


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_has_a_consistent_register_map(name):
    regs = register_map(PRESETS[name])  # raises on overlapping registers
    assert sum(r.name.startswith("FRCD") for r in regs) == PRESETS[name].nfr


def test_qemu100_default_unit_is_48_bit_and_x_flts_offers_first_stage_only():
    legacy, flts = get_preset("qemu100-legacy-cm"), get_preset("qemu100-flts-cm")
    assert (legacy.mgaw, legacy.supported_levels) == (48, frozenset({3, 4}))
    assert get_preset("qemu72-legacy-cm").mgaw == 39
    assert flts.fsts and flts.fs1gp and not flts.ssts and flts.caching_mode
