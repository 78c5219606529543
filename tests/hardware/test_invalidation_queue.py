"""The queued-invalidation engine driven through a real RemappingUnit's MMIO registers."""

import pytest

from vtdsim.hardware.descriptors import encode
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit

GCMD, GSTS, FSTS, IQH, IQT, IQA, ICS, IECTL, IQERCD = (
    0x18, 0x1C, 0x34, 0x80, 0x88, 0x90, 0x9C, 0xA0, 0xB0,
)
QIE = 1 << 26
FSTS_IQE, FSTS_ITE = 1 << 4, 1 << 6
QUEUE = 0x10_0000
STATUS = 0x20_0000
DONE = 2  # Linux's QI_DONE


class Driver:
    """Just enough of Linux's qi_submit_sync to exercise the queue: slots, IQT writes."""

    def __init__(self, preset="qemu72-legacy-ats", *, wide=False, qs=0, qi_mode="sync"):
        self.memory = PhysicalMemory()
        self.unit = RemappingUnit(get_preset(preset), self.memory, qi_mode=qi_mode)
        self.width = 32 if wide else 16
        self.entries = (4096 << qs) // self.width
        self.next = 0
        self.unit.mmio_write(IQT, 8, 0)
        self.unit.mmio_write(IQA, 8, QUEUE | (1 << 11 if wide else 0) | qs)
        self.unit.mmio_write(GCMD, 4, QIE)
        assert self.unit.mmio_read(GSTS, 4) & QIE
        assert self.unit.stats["iqt_writes"] == 1  # Linux also writes IQT=0 before enabling

    def put(self, slot, qws):
        for i, qw in enumerate(qws[: self.width // 8]):
            # CPU stores: they stay in the CPU cache, so the fetch must be snooped.
            self.memory.cpu_store(QUEUE + slot * self.width + 8 * i, qw, 8)

    def queue(self, *descs):
        for qws in descs:
            self.put(self.next, qws)
            self.next = (self.next + 1) % self.entries

    def doorbell(self):
        self.unit.mmio_write(IQT, 8, self.next * self.width)

    def reg(self, offset, size=8):
        return self.unit.mmio_read(offset, size)

    def status(self, i):
        return self.memory.cpu_load(STATUS + 8 * i, 8) & 0xFFFF_FFFF


def wait(i, **flags):
    return encode("inv_wait", sw=1, status_data=DONE, status_addr=STATUS + 8 * i, **flags)


IOTLB_GLOBAL = encode("iotlb_inv", g=1, dr=1, dw=1)


def test_sync_mode_processes_the_whole_queue_inside_the_iqt_write():
    drv = Driver()
    drv.queue(IOTLB_GLOBAL, wait(0))
    drv.doorbell()
    assert drv.status(0) == DONE
    assert drv.reg(IQH) == drv.reg(IQT) == 0x20  # reference §7: two descriptors, 0x20
    stats = drv.unit.stats
    assert (stats["iqt_writes"], stats["desc:iotlb_inv"], stats["desc:inv_wait"]) == (2, 1, 1)
    assert drv.unit.queue.pending() == 0


def test_queue_wraps_around_at_its_end():
    drv = Driver()
    for _ in range(127):  # 254 slots used, as 127 Linux submissions of descriptor + wait
        drv.queue(IOTLB_GLOBAL, wait(0))
        drv.doorbell()
    assert drv.reg(IQH) == 254 * 16
    drv.queue(encode("cc_inv", g=1), wait(1), IOTLB_GLOBAL, wait(2))
    drv.doorbell()
    assert drv.reg(IQT) == 2 * 16 and drv.reg(IQH) == 2 * 16
    assert (drv.status(1), drv.status(2)) == (DONE, DONE)
    assert drv.unit.stats["desc:cc_inv"] == 1
    assert drv.unit.stats["iqt_writes"] == 1 + 128


def test_256_bit_queue_in_scalable_mode():
    drv = Driver("qemu72-sm", wide=True, qs=1)  # Linux SM: QS=1, DW=1, 256 x 32 B
    assert drv.unit.queue.wide and drv.unit.queue.size == 8192
    drv.queue(encode("pc_inv", g=3), encode("p_iotlb_inv", g=2, did=2, pasid=0), wait(0))
    drv.doorbell()
    assert drv.reg(IQH) == 0x60 and drv.status(0) == DONE
    assert drv.unit.stats["desc:pc_inv"] == drv.unit.stats["desc:p_iotlb_inv"] == 1


def test_dw_is_ignored_without_smts():
    drv = Driver("qemu72-legacy", wide=False)
    drv.unit.mmio_write(IQA, 8, QUEUE | 1 << 11)  # DW is RO without ECAP.SMTS
    assert not drv.unit.queue.wide and drv.unit.queue.width == 16


def test_pasid_descriptor_in_a_128_bit_queue_is_invalid_width():
    drv = Driver("qemu72-sm", wide=False)
    drv.queue(encode("pc_inv", g=3), wait(0))
    drv.doorbell()
    assert drv.reg(FSTS, 4) & FSTS_IQE
    assert drv.reg(IQERCD) & 0xF == 5
    assert drv.reg(IQH) == 0 and drv.status(0) == 0


def test_misaligned_tail_in_256_bit_mode_is_iqei_6():
    drv = Driver("qemu72-sm", wide=True, qs=1)
    drv.queue(wait(0))
    drv.unit.mmio_write(IQT, 8, 0x10)
    assert drv.reg(FSTS, 4) & FSTS_IQE and drv.reg(IQERCD) & 0xF == 6
    assert drv.status(0) == 0


def test_tail_beyond_the_queue_is_iqei_1():
    drv = Driver(qs=0)  # 4 KiB: 256 x 16 B
    drv.unit.mmio_write(IQT, 8, 0x1000)
    assert drv.reg(FSTS, 4) & FSTS_IQE and drv.reg(IQERCD) & 0xF == 1
    assert drv.unit.queue.pending() == 0


def test_iqe_stops_at_the_bad_descriptor_until_cleared_and_iqt_rewritten():
    drv = Driver()
    bad = (IOTLB_GLOBAL[0] | 1 << 40, 0, 0, 0)  # reserved qw0 bit 40
    drv.queue(wait(0), bad, wait(1))
    drv.doorbell()
    assert drv.status(0) == DONE and drv.status(1) == 0
    assert drv.reg(IQH) == 0x10  # left on the bad descriptor
    assert drv.reg(FSTS, 4) & FSTS_IQE and drv.reg(IQERCD) & 0xF == 4
    drv.doorbell()  # IQE still set: nothing is fetched
    assert drv.reg(IQH) == 0x10 and drv.status(1) == 0
    # Linux qi_check_fault: overwrite the bad slot with a copy of the wait, clear IQE.
    drv.put(1, wait(2))
    drv.unit.mmio_write(FSTS, 4, FSTS_IQE)
    assert drv.unit.queue.pending() == 0  # no resumption without an IQT write
    drv.doorbell()
    assert (drv.status(2), drv.status(1)) == (DONE, DONE)
    assert drv.reg(IQH) == 0x30


def test_psi_mask_beyond_mamv_raises_iqe():
    drv = Driver("server-sm", wide=True, qs=1)  # MAMV 9
    drv.queue(encode("iotlb_inv", g=3, did=2, am=10, addr=0), wait(0))
    drv.doorbell()
    assert drv.reg(FSTS, 4) & FSTS_IQE and drv.reg(IQERCD) & 0xF == 4
    assert drv.status(0) == 0


def test_async_mode_processes_one_descriptor_per_step():
    drv = Driver(qi_mode="async")
    drv.queue(IOTLB_GLOBAL, wait(0))
    drv.doorbell()
    queue = drv.unit.queue
    assert queue.pending() == 2 and drv.reg(IQH) == 0 and drv.status(0) == 0
    assert drv.unit.qi_step()
    assert queue.pending() == 1 and drv.reg(IQH) == 0x10 and drv.status(0) == 0
    assert queue.performed == "desc:iotlb_inv"  # what the timed engine prices a step by
    assert drv.unit.qi_step()
    assert queue.pending() == 0 and drv.status(0) == DONE
    assert queue.performed == "desc:inv_wait"
    assert not drv.unit.qi_step()
    assert queue.performed == ""


def test_a_rejected_descriptor_is_not_performed():
    drv = Driver("server-sm", wide=True, qs=1, qi_mode="async")
    drv.queue(encode("iotlb_inv", g=3, did=2, am=10, addr=0), wait(0))  # AM beyond MAMV
    drv.doorbell()
    assert drv.unit.qi_step()
    assert drv.reg(FSTS, 4) & FSTS_IQE and drv.unit.queue.performed == ""


def test_wait_with_if_sets_iwc_and_the_completion_interrupt():
    drv = Driver()
    drv.queue(encode("inv_wait", if_=1))
    drv.doorbell()
    assert drv.reg(ICS, 4) & 1
    assert drv.reg(IECTL, 4) & (1 << 30)  # IECTL.IM resets to 1: IP is left pending
    drv.unit.mmio_write(ICS, 4, 1)  # software clears IWC
    drv.unit.mmio_write(IECTL, 4, 0)  # and unmasks
    before = drv.unit.stats["completion_interrupts"]
    drv.queue(encode("inv_wait", if_=1, fn=1))
    drv.doorbell()
    assert drv.reg(ICS, 4) & 1
    assert drv.unit.stats["completion_interrupts"] == before + 1


def test_iqt_write_with_qi_disabled_is_counted_but_not_processed():
    memory = PhysicalMemory()
    unit = RemappingUnit(get_preset("qemu72-legacy"), memory)
    memory.cpu_store(QUEUE, wait(0)[0], 8)
    memory.cpu_store(QUEUE + 8, wait(0)[1], 8)
    unit.mmio_write(IQA, 8, QUEUE)
    unit.mmio_write(IQT, 8, 0x10)
    assert unit.stats["iqt_writes"] == 1
    assert unit.queue.pending() == 0 and memory.cpu_load(STATUS, 8) == 0


def test_garbage_in_the_queue_never_raises():
    drv = Driver("server-sm", wide=True, qs=1)
    for qw0 in (0, 0xF, 0xFFFF_FFFF_FFFF_FFFF, 0x1A, 0x209):
        drv.unit.mmio_write(FSTS, 4, FSTS_IQE)
        drv.queue((qw0, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF, 0))
        drv.doorbell()
        assert drv.reg(FSTS, 4) & FSTS_IQE
        assert drv.reg(IQERCD) & 0xF in (3, 4)
        drv.next -= 1  # overwrite the same slot next time


def _ats_endpoint(drv, sid, respond):
    from vtdsim.devices.endpoint import Endpoint

    endpoint = Endpoint(sid, ats=True, respond_to_invalidations=respond)
    endpoint.connect(drv.unit)
    return endpoint


def test_device_tlb_timeout_raises_ite_and_aborts_pending_waits():
    pytest.importorskip("vtdsim.devices.endpoint")
    drv = Driver("qemu72-legacy-ats")
    _ats_endpoint(drv, 0x100, respond=False)
    drv.queue(encode("dev_tlb_inv", sid=0x100, addr=0x7FFF_FFFF_FFFF_F000, s=1), wait(0))
    drv.doorbell()
    fsts = drv.reg(FSTS, 4)
    assert fsts & FSTS_ITE and not fsts & FSTS_IQE
    assert (drv.reg(IQERCD) >> 32) & 0xFFFF == 0x100  # ITESID
    assert drv.status(0) == 0  # the wait was aborted
    assert drv.reg(IQH) == drv.reg(IQT)
    # Linux clears ITE and resubmits; the queue resumes on that IQT write.
    drv.unit.mmio_write(FSTS, 4, FSTS_ITE)
    drv.queue(IOTLB_GLOBAL, wait(1))
    drv.doorbell()
    assert drv.status(1) == DONE


def test_device_tlb_invalidation_reaches_a_responding_endpoint():
    pytest.importorskip("vtdsim.devices.endpoint")
    drv = Driver("qemu72-legacy-ats")
    _ats_endpoint(drv, 0x100, respond=True)
    drv.queue(encode("dev_tlb_inv", sid=0x100, addr=0xFFFB4000, s=1), wait(0))
    drv.doorbell()
    assert drv.status(0) == DONE and not drv.reg(FSTS, 4) & FSTS_ITE
