"""The endpoint's ATS address-translation cache: lookups by size, LRU, ATS invalidation."""

from __future__ import annotations

import pytest

from vtdsim.devices.device_tlb import DeviceTlb, DeviceTlbEntry
from vtdsim.errors import ModelError

K4, M2 = 1 << 12, 1 << 21


def _e(base, size=K4, pasid=None, write=True):
    return DeviceTlbEntry(pasid=pasid, base=base, size=size, hpa=0x4000_0000 + base, read=True,
                          write=write)


def _atc(*entries, capacity=16):
    atc = DeviceTlb(capacity)
    for e in entries:
        atc.fill_entry(e)
    return atc


def test_lookup_finds_every_size_and_translates_the_offset():
    atc = _atc(_e(0x1000), _e(0x20_0000, M2), _e(0x10_0000, 64 * K4))
    assert atc.lookup(None, 0x1FFF).translate(0x1FFF) == 0x4000_1FFF
    assert atc.lookup(None, 0x3F_FFFF).size == M2
    assert atc.lookup(None, 0x13_0000).size == 64 * K4  # ATS allows any power of two
    assert atc.lookup(None, 0x2000) is None
    assert (atc.stats.hit, atc.stats.miss) == (3, 1)


def test_lookup_is_per_pasid():
    atc = _atc(_e(0x1000, pasid=3))
    assert atc.lookup(None, 0x1000) is None
    assert atc.lookup(4, 0x1000) is None
    assert atc.lookup(3, 0x1000).pasid == 3


def test_lru_replacement_and_refresh():
    atc = _atc(_e(0x1000), _e(0x2000), capacity=2)
    atc.lookup(None, 0x1000)
    assert atc.fill_entry(_e(0x3000)) == (None, 12, 2)
    assert [e.base for _k, e in atc.items()] == [0x1000, 0x3000]


def test_permits():
    assert _e(0, write=False).permits(False) and not _e(0, write=False).permits(True)


@pytest.mark.parametrize("base, size", [(0x1000, 0x800), (0x1000, 0x3000), (0x1000, 0x2000)])
def test_malformed_ranges_are_model_errors(base, size):
    with pytest.raises(ModelError):
        DeviceTlb().fill_entry(_e(base, size))


def test_fill_key_must_be_the_entry_key():
    with pytest.raises(ModelError):
        DeviceTlb().fill((None, 12, 99), _e(0x1000))


def test_invalidate_range_overlap_includes_larger_translations():
    atc = _atc(_e(0x1000), _e(0x2000), _e(0x4000), _e(0x20_0000, M2), _e(0x0, M2))
    # 8 KiB at 0x2000 hits the 4K page at 0x2000 and the 2M translation containing it
    assert atc.invalidate(None, 0x2000, 0x2000) == 2
    assert [(e.base, e.size) for _k, e in atc.items()] == [
        (0x1000, K4), (0x4000, K4), (0x20_0000, M2)
    ]


def test_invalidate_without_pasid_spares_pasid_entries_unless_all_pasids():
    atc = _atc(_e(0x1000), _e(0x1000, pasid=1), _e(0x1000, pasid=2))
    assert atc.invalidate(None, 0, 1 << 64) == 1
    assert atc.invalidate(1, 0, 1 << 64) == 1
    assert atc.invalidate(7, 0, 1 << 64, all_pasids=True) == 1
    assert len(atc) == 0
    assert atc.stats.invalidated == 3
