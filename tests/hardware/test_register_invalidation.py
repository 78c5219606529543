"""CCMD and IVA/IOTLB register-based invalidation: granularity reporting, QIE and VER rules
(spec 6.5.1, 10.4.7-10.4.8, reference §6)."""

import pytest

from vtdsim.hardware.caches.context_cache import ContextCacheEntry
from vtdsim.hardware.caches.iotlb import IotlbEntry
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit

CCMD, IVA, IOTLB, GCMD = 0x28, 0xF0, 0xF8, 0x18
ICC, IVT = 1 << 63, 1 << 63


def make_unit(caps=None):
    return RemappingUnit(caps or get_preset("qemu72-legacy-cm"), PhysicalMemory())


def fill_contexts(unit):
    for sid, did in ((0x08, 1), (0x10, 2), (0x11, 2)):  # 00:01.0, 00:02.0, 00:02.1
        unit.context_cache.fill(sid, ContextCacheEntry(sid=sid, present=True, raw=1, did=did))


def ccmd(cirg, did=0, sid=0, fm=0):
    return ICC | (cirg << 61) | (fm << 32) | (sid << 16) | did


def iotlb(iirg, did=0, dr=1, dw=1):
    return IVT | (iirg << 60) | (dr << 49) | (dw << 48) | (did << 32)


def caig(unit):
    return (unit.mmio_read(CCMD + 4, 4) >> 27) & 3


def iaig(unit):
    return (unit.mmio_read(IOTLB + 4, 4) >> 25) & 3


@pytest.mark.parametrize(
    ("value", "left", "granularity"),
    [
        (ccmd(1), [], 1),
        (ccmd(2, did=2), [0x08], 2),
        (ccmd(3, did=2, sid=0x10), [0x08, 0x11], 3),
        (ccmd(3, did=2, sid=0x10, fm=3), [0x08], 3),  # FM=11 ignores function bits 2:0
    ],
)
def test_ccmd_granularities(value, left, granularity):
    unit = make_unit()
    fill_contexts(unit)
    unit.mmio_write(CCMD, 8, value)
    assert sorted(unit.context_cache.keys()) == left
    assert unit.mmio_read(CCMD + 4, 4) >> 31 == 0  # ICC cleared: done
    assert caig(unit) == granularity


def test_ccmd_written_as_two_dwords_acts_on_high_dword():
    unit = make_unit()
    fill_contexts(unit)
    value = ccmd(3, did=1, sid=0x08)
    unit.mmio_write(CCMD, 4, value & 0xFFFFFFFF)
    assert len(unit.context_cache) == 3
    unit.mmio_write(CCMD + 4, 4, value >> 32)
    assert sorted(unit.context_cache.keys()) == [0x10, 0x11] and caig(unit) == 3


def test_ccmd_invalid_granularity_reports_zero():
    unit = make_unit()
    fill_contexts(unit)
    unit.mmio_write(CCMD, 8, ccmd(0))
    assert len(unit.context_cache) == 3 and caig(unit) == 0


@pytest.mark.parametrize(
    ("iirg", "iva", "granularity"),
    [(1, 0, 1), (2, 0, 2), (3, 0xFFF80005, 3), (3, 0xFFF80000 | 19, 0), (0, 0, 0)],
)
def test_iotlb_granularity_reporting(iirg, iva, granularity):
    unit = make_unit()  # MAMV=18
    unit.mmio_write(IVA, 8, iva)
    unit.mmio_write(IOTLB, 8, iotlb(iirg, did=5))
    assert unit.mmio_read(IOTLB + 4, 4) >> 31 == 0
    assert iaig(unit) == granularity


def test_psi_without_cap_psi_is_reported_as_dsi():
    unit = make_unit(get_preset("qemu72-legacy").with_(psi=0))
    unit.mmio_write(IVA, 8, 0x1000)
    unit.mmio_write(IOTLB, 8, iotlb(3, did=5))
    assert iaig(unit) == 2


def test_ignored_while_qie_set_and_go_bits_stay():
    unit = make_unit()
    fill_contexts(unit)
    unit.mmio_write(GCMD, 4, 1 << 26)
    unit.mmio_write(CCMD, 8, ccmd(1))
    unit.mmio_write(IOTLB, 8, iotlb(1))
    assert len(unit.context_cache) == 3
    assert unit.mmio_read(CCMD + 4, 4) >> 31 == 1 and unit.mmio_read(IOTLB + 4, 4) >> 31 == 1
    assert unit.stats["reg_inval_ignored_qie"] == 2


def test_version_6_units_ignore_register_invalidation():
    unit = make_unit(get_preset("qemu72-legacy").with_(ver=0x60))
    fill_contexts(unit)
    unit.mmio_write(CCMD, 8, ccmd(1))
    assert len(unit.context_cache) == 3 and unit.stats["reg_inval_unsupported"] == 1


def test_register_invalidation_flushes_write_buffer():
    unit = make_unit(get_preset("qemu72-legacy").with_(rwbf=1))
    unit.memory.cpu_store(0x5000, 0x77, 8)
    unit.mmio_write(IOTLB, 8, iotlb(1))
    assert unit.memory.read_qword(0x5000) == 0x77


def fill_iotlb(unit):
    """4K pages of DID 5 at 0xfff80000 (+0, +0x1000, +0x20000) and one of DID 6."""
    for did, iova in ((5, 0xFFF80000), (5, 0xFFF81000), (5, 0xFFFA0000), (6, 0xFFF80000)):
        entry = IotlbEntry(did=did, pasid=0, iova_base=iova, level=1, hpa=0x100000 + iova,
                           read=True, write=True, exe=False, snp=False, stage="ss")
        unit.iotlb.fill(entry.key, entry)


def iotlb_pages(unit):
    keys = unit.iotlb.keys()
    return sorted((k[0], k[3] << 12) for k in keys)


@pytest.mark.parametrize(
    ("iirg", "iva", "left"),
    [
        (1, 0, []),
        (2, 0, [(6, 0xFFF80000)]),
        (3, 0xFFF80001, [(5, 0xFFFA0000), (6, 0xFFF80000)]),  # AM=1: 8 KiB
        (3, 0xFFF80000 | 19, [(5, 0xFFF80000), (5, 0xFFF81000), (5, 0xFFFA0000),
                              (6, 0xFFF80000)]),  # AM > MAMV: not performed
    ],
)
def test_iotlb_register_drops_the_requested_scope(iirg, iva, left):
    unit = make_unit()
    fill_iotlb(unit)
    unit.mmio_write(IVA, 8, iva)
    unit.mmio_write(IOTLB, 8, iotlb(iirg, did=5))
    assert iotlb_pages(unit) == left
