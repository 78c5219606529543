"""Layout: declaration checks, encode/decode round trips, reserved bits, qword splitting."""

import pytest

from vtdsim.errors import ModelError
from vtdsim.hardware.bitfield import Access, F, Layout

DEMO = Layout("demo", 128, [F("p", 0), F("did", 31, 16), F("addr", 63, 32), F("hi", 79, 64)])


def test_overlapping_fields_are_rejected():
    with pytest.raises(ModelError, match="overlap"):
        Layout("bad", 64, [F("a", 7, 0), F("b", 8, 4)])


def test_field_outside_width_is_rejected():
    with pytest.raises(ModelError, match="outside"):
        Layout("bad", 32, [F("a", 40, 33)])


def test_duplicate_field_is_rejected():
    with pytest.raises(ModelError, match="twice"):
        Layout("bad", 32, [F("a", 1), F("a", 2)])


def test_encode_decode_round_trip():
    v = DEMO.encode(p=1, hi=0xABCD)
    assert v == 1 | (0xABCD << 64)
    assert DEMO.decode(v) == {"p": 1, "did": 0, "addr": 0, "hi": 0xABCD}
    assert DEMO.get(v, "hi") == 0xABCD


def test_value_that_does_not_fit_is_rejected():
    with pytest.raises(ModelError, match="does not fit"):
        DEMO.encode(did=0x10000)


def test_unknown_field_is_rejected():
    with pytest.raises(ModelError, match="no field"):
        DEMO.encode(nope=1)


def test_unlisted_bits_are_reserved_by_default():
    assert DEMO.reserved_bits(1 << 1) == 2
    assert DEMO.reserved_bits(1 << 100) == 1 << 100
    assert DEMO.reserved_bits(DEMO.encode(p=1, did=3)) == 0


def test_ignored_unlisted_bits_are_not_reserved():
    lay = Layout("ign", 64, [F("p", 0), F("r", 5, 4, Access.RSVD)], reserved="ignored")
    assert lay.reserved_bits(1 << 9) == 0
    assert lay.reserved_bits(1 << 4) == 1 << 4
    assert "r" not in lay


def test_qwords_round_trip():
    v = DEMO.encode(p=1, did=7, hi=0xFFFF)
    assert DEMO.to_qwords(v) == (0x70001, 0xFFFF)
    assert DEMO.from_qwords(DEMO.to_qwords(v)) == v


def test_describe_names_fields_and_reserved_bits():
    text = DEMO.describe(DEMO.encode(did=5) | 2)
    assert text == "demo: did=0x5 RESERVED=0x2"
