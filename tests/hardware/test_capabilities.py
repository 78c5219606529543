"""CAP/ECAP layouts and the Capabilities value, pinned to the spec tables (reference §2, §3)."""

import pytest

from vtdsim.errors import BadInput
from vtdsim.hardware.capabilities import CAP, ECAP, Capabilities

RECORDED_CAP_CM = 0xD2008C22260286
RECORDED_ECAP = 0xF00F4A


def test_recorded_qemu72_cap_decodes_to_reference_values():
    caps = Capabilities(RECORDED_CAP_CM, RECORDED_ECAP)
    assert CAP.get(caps.cap, "nd") == 6 and caps.nd_domains == 65536
    assert caps.caching_mode and not caps.rwbf
    assert caps.sagaw == 0b00010 and caps.supported_levels == {3}
    assert CAP.get(caps.cap, "mgaw") == 38 and caps.mgaw == 39
    assert caps.fro_offset == 0x220
    assert caps.sllps_2m and caps.sllps_1g
    assert caps.psi and caps.nfr == 1 and caps.mamv == 18
    assert caps.dwd and caps.drd
    assert not caps.fs1gp and not caps.fs5lp and not caps.esrtps
    assert CAP.reserved_bits(caps.cap) == 0


def test_recorded_qemu72_ecap_decodes_to_reference_values():
    caps = Capabilities(RECORDED_CAP_CM, RECORDED_ECAP)
    assert caps.qi and caps.ir and caps.pt
    assert ECAP.get(caps.ecap, "iro") == 0xF and caps.iro_offset == 0xF0
    assert ECAP.get(caps.ecap, "mhmv") == 15
    assert not (caps.coherent or caps.dt or caps.sc or caps.smts or caps.pasid or caps.fsts)
    assert ECAP.reserved_bits(caps.ecap) == 0


def test_scalable_ecap_has_srs_smts_ssts_only():
    caps = Capabilities(0xD2008C22260206, 0x480080F00F4A)
    assert caps.srs and caps.smts and caps.ssts
    assert not (caps.fsts or caps.pasid or caps.nest)
    assert ECAP.get(caps.ecap, "pss") == 0


@pytest.mark.parametrize(
    ("name", "bit"),
    [("rwbf", 4), ("cm", 7), ("psi", 39), ("dwd", 54), ("drd", 55), ("fs1gp", 56),
     ("fs5lp", 60), ("esrtps", 63)],
)
def test_cap_single_bit_positions(name, bit):
    assert CAP.encode(**{name: 1}) == 1 << bit


@pytest.mark.parametrize(
    ("name", "bit"),
    [("c", 0), ("qi", 1), ("dt", 2), ("ir", 3), ("pt", 6), ("sc", 7), ("nest", 26),
     ("prs", 29), ("ers", 30), ("srs", 31), ("pasid", 40), ("dit", 41), ("pds", 42),
     ("smts", 43), ("ssads", 45), ("ssts", 46), ("fsts", 47), ("smpwc", 48)],
)
def test_ecap_single_bit_positions(name, bit):
    assert ECAP.encode(**{name: 1}) == 1 << bit


def test_deprecated_and_reserved_bits_are_reserved():
    assert CAP.reserved_bits(1 << 23) == 1 << 23  # deprecated ISOCH
    assert CAP.reserved_bits(1 << 38) == 1 << 38
    assert ECAP.reserved_bits(1 << 28) == 1 << 28  # rev-2 PASID bit


def test_build_and_with_round_trip():
    caps = Capabilities.build(nd=2, sagaw=0b0110, mgaw=47, qi=1, pss=19, pasid=1)
    assert caps.nd_domains == 256 and caps.supported_levels == {3, 4}
    assert caps.mgaw == 48 and caps.pss == 20 and caps.pasid
    changed = caps.with_(cm=1, qi=0, ver=0x60)
    assert changed.caching_mode and not changed.qi and changed.ver_major == 6
    assert not caps.caching_mode and caps.qi  # frozen: original untouched
    assert changed.with_(cm=0, qi=1, ver=0x10) == caps


def test_build_rejects_unknown_field():
    with pytest.raises(BadInput, match="no CAP or ECAP field"):
        Capabilities.build(bogus=1)


def test_describe_names_the_decoded_fields():
    text = Capabilities(RECORDED_CAP_CM, RECORDED_ECAP).describe()
    assert "cap d2008c22260286 ecap f00f4a" in text
    assert "mamv=0x12" in text and "fro_offset=0x220" in text and "levels=[3]" in text
