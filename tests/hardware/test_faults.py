"""Fault reasons, the Fault value and primary fault logging (spec 7.3, reference §8)."""

import pytest

from vtdsim.hardware.faults import (
    QUALIFIED,
    Fault,
    FaultReason,
    decode_frcd,
    encode_frcd,
)
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import CacheConfig, RemappingUnit
from vtdsim.hardware.request import AT_TRANSLATION_REQUEST

FSTS, FECTL, FRCD0 = 0x34, 0x38, 0x220


def make_unit(preset="qemu72-legacy-cm", **config):
    return RemappingUnit(get_preset(preset), PhysicalMemory(), cache_config=CacheConfig(**config))


def fault(sid=0x100, addr=0xFFFF_F000, reason=FaultReason.READ, write=False, **kw):
    return Fault(reason, sid, addr, write, **kw)


def unmask_fault_event(unit):
    unit.mmio_write(FECTL, 4, 0)


# -- the table and the value -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reason", "code"),
    [("ROOT_ENTRY_P", 0x1), ("CONTEXT_ENTRY_P", 0x2), ("WRITE", 0x5), ("READ", 0x6),
     ("CONTEXT_ENTRY_TT", 0xD), ("INTERRUPT_ADDR", 0xE), ("IR_SID_ERR", 0x26),
     ("SM_RTADDR_INV", 0x30), ("SM_CONTEXT_ENTRY_P", 0x41), ("PASID_ENTRY_P", 0x59),
     ("FS_PAGING_ENTRY_P", 0x71), ("SS_PAGING_ENTRY_RW", 0x79), ("SM_WRITE", 0x85),
     ("FS_BIT_UPDATE_FAILED", 0x91)],
)
def test_reason_codes(reason, code):
    assert FaultReason[reason] == code


def test_every_reason_has_text():
    assert all(r.text for r in FaultReason)


def test_fetch_path_faults_are_not_qualified():
    for r in (FaultReason.ROOT_ENTRY_P, FaultReason.ROOT_TABLE_INV, FaultReason.CONTEXT_TABLE_INV,
              FaultReason.ROOT_ENTRY_RSVD, FaultReason.PASID_DIR_ACCESS_ERR):
        assert r not in QUALIFIED
    assert FaultReason.WRITE in QUALIFIED and FaultReason.PASID_ENTRY_P in QUALIFIED


def test_fault_is_falsy_and_describes_itself():
    f = fault(pasid=5)
    assert not f
    text = f.describe()
    assert "READ" in text and "sid=01:00.0" in text and "addr=0xfffff000" in text
    assert "pasid=0x5" in text


def test_frcd_encoding_round_trips():
    f = fault(write=True, pasid=0x12345, exe=True, priv=True, reason=FaultReason.SM_WRITE)
    value = encode_frcd(f)
    assert value >> 127 == 1  # F
    assert (value >> 96) & 0xFF == 0x85 and (value >> 64) & 0xFFFF == 0x100
    assert (value >> 126) & 1 == 0  # T1=0: write
    assert decode_frcd(value) == f


def test_frcd_read_sets_t1_and_translation_request_sets_t2():
    assert (encode_frcd(fault()) >> 126) & 1 == 1
    tr = encode_frcd(fault(at=AT_TRANSLATION_REQUEST))
    assert (tr >> 92) & 1 == 1 and (tr >> 126) & 1 == 0 and (tr >> 124) & 3 == 1


def test_guest_garbage_encodes_without_raising():
    value = encode_frcd(Fault(FaultReason.READ, 1 << 40, (1 << 70) - 1, False, pasid=1 << 30,
                              at=7))
    assert value >> 127 == 1


# -- recording -------------------------------------------------------------------------------
def test_first_fault_fills_frcd0_sets_ppf_fri_and_pending_event():
    unit = make_unit()
    assert unit.faults.record(fault(addr=0xABCDE123))
    assert unit.mmio_read(FSTS, 4) == 0x2  # PPF, FRI=0
    hi = unit.mmio_read(FRCD0 + 12, 4)
    assert hi >> 31 == 1 and (hi >> 30) & 1 == 1 and hi & 0xFF == 0x6  # F, T1(read), FR
    assert unit.mmio_read(FRCD0, 8) == 0xABCDE000
    # FECTL.IM resets to 1: the event is held pending (IP) until software unmasks.
    assert unit.mmio_read(FECTL, 4) == 0xC0000000
    assert unit.stats["fault_interrupts"] == 0
    unmask_fault_event(unit)
    assert unit.mmio_read(FECTL, 4) == 0
    assert unit.stats["fault_interrupts"] == 1


def test_fault_event_sent_at_once_when_unmasked():
    unit = make_unit()
    seen = []
    unit.listeners.append(lambda u, event, fields: seen.append((event, fields)))
    unmask_fault_event(unit)
    unit.mmio_write(0x40, 4, 0xFEE01004)  # FEADDR
    unit.mmio_write(0x3C, 4, 0x21)  # FEDATA
    unit.faults.record(fault())
    assert unit.stats["fault_interrupts"] == 1
    assert ("fault_interrupt", {"addr": 0xFEE01004, "data": 0x21}) in seen


def test_overflow_sets_pfo_then_drops():
    unit = make_unit()  # NFR=1
    assert unit.faults.record(fault(sid=1))
    assert not unit.faults.record(fault(sid=2))
    assert unit.regs.get("FSTS", "pfo") == 1 and unit.stats["fault_overflow"] == 1
    assert not unit.faults.record(fault(sid=3))
    assert unit.stats["faults_dropped_pfo"] == 1
    assert [f.sid for _, f in unit.faults.pending()] == [1]


def test_same_sid_compression_is_configurable():
    unit = make_unit("server-sm")
    assert unit.faults.record(fault(sid=7))
    assert not unit.faults.record(fault(sid=7, addr=0x1000))
    assert unit.stats["faults_compressed"] == 1
    loose = make_unit("server-sm", compress_faults=False)
    assert loose.faults.record(fault(sid=7)) and loose.faults.record(fault(sid=7, addr=0x1000))
    assert [i for i, _ in loose.faults.pending()] == [0, 1]
    assert loose.regs.get("FSTS", "fri") == 0


def test_second_fault_raises_no_new_event():
    unit = make_unit("server-sm")
    unmask_fault_event(unit)
    unit.faults.record(fault(sid=1))
    unit.faults.record(fault(sid=2))
    assert unit.stats["fault_interrupts"] == 1


def test_next_index_wraps_and_reuses_a_cleared_record():
    unit = make_unit("server-sm")  # 8 records at 0x400
    for sid in range(8):
        assert unit.faults.record(fault(sid=sid))
    unit.mmio_write(0x400 + 12, 4, 0x80000000)  # clear F of FRCD0
    assert unit.faults.record(fault(sid=8))
    assert unit.regs.get("FRCD0", "sid") == 8
    assert not unit.faults.record(fault(sid=9))  # FRCD1 still full
    assert unit.regs.get("FSTS", "pfo") == 1


def test_fpd_suppresses_only_qualified_faults():
    unit = make_unit()
    assert not unit.faults.record(fault(reason=FaultReason.WRITE), fpd=True)
    assert unit.stats["faults_suppressed_fpd"] == 1 and not unit.faults.pending()
    assert unit.faults.record(fault(reason=FaultReason.ROOT_ENTRY_P), fpd=True)


def test_linux_dmar_fault_servicing_clears_ppf_and_ip():
    """dmar_fault: from FRI read each record's high dword, clear F, then write FSTS."""
    unit = make_unit("server-sm")
    unit.faults.record(fault(sid=1))
    unit.faults.record(fault(sid=2))
    fri = (unit.mmio_read(FSTS, 4) >> 8) & 0xFF
    index = fri
    while unit.mmio_read(0x400 + 16 * index + 12, 4) >> 31:
        unit.mmio_write(0x400 + 16 * index + 12, 4, 0x80000000)
        index = (index + 1) % 8
    assert index == 2
    assert unit.regs.get("FSTS", "ppf") == 0
    unit.mmio_write(FSTS, 4, 0x83)  # PFO | PPF | bit 7, as dmar_fault writes
    assert unit.mmio_read(FSTS, 4) & 0xFF == 0
    assert unit.regs.get("FECTL", "ip") == 0


def test_raise_iqe_sets_iqei_and_event():
    unit = make_unit()
    unmask_fault_event(unit)
    unit.faults.raise_iqe(3)
    assert unit.regs.get("FSTS", "iqe") == 1 and unit.regs.get("IQERCD", "iqei") == 3
    assert unit.stats["fault_interrupts"] == 1
    unit.mmio_write(FSTS, 4, 0x10)
    assert unit.regs.get("FSTS", "iqe") == 0


def test_queue_error_while_fault_pending_sends_no_new_event():
    unit = make_unit()
    unmask_fault_event(unit)
    unit.faults.record(fault())
    unit.faults.raise_ite(0x100)
    unit.faults.raise_ice(0x200)
    assert unit.stats["fault_interrupts"] == 1
    assert unit.regs.get("IQERCD", "itesid") == 0x100
    assert unit.regs.get("IQERCD", "icesid") == 0x200
    assert unit.regs.get("FSTS", "ite") == 1 and unit.regs.get("FSTS", "ice") == 1


def test_iqe_blocks_fault_event():
    unit = make_unit()
    unmask_fault_event(unit)
    unit.faults.raise_iqe(1)
    unit.faults.record(fault())
    assert unit.stats["fault_interrupts"] == 1
