import pytest
from _driver_fixtures import booted

from vtdsim.driver import qi
from vtdsim.driver.intel_iommu import IntelIommu
from vtdsim.hardware.descriptors import encode
from vtdsim.hardware.presets import get_preset

QEMU = IntelIommu(0, get_preset("qemu72-legacy-cm"))  # CAP.DRD/DWD set, as recorded


@pytest.mark.parametrize("desc,raw", [
    (qi.desc_flush_iotlb(QEMU, 7, 0xFFFFE000, 1, qi.DMA_TLB_PSI_FLUSH), (0x700F2, 0xFFFFE001)),
    (qi.desc_flush_iotlb(QEMU, 5, 0xFFF80000, 5, qi.DMA_TLB_PSI_FLUSH), (0x500F2, 0xFFF80005)),
    (qi.desc_flush_iotlb(QEMU, 7, 0, 0, qi.DMA_TLB_DSI_FLUSH), (0x700E2, 0)),
    (qi.desc_flush_iotlb(QEMU, 0, 0, 0, qi.DMA_TLB_GLOBAL_FLUSH), (0xD2, 0)),
    (qi.desc_flush_context(0, 0x8, 0, qi.DMA_CCMD_DEVICE_INVL), (0x800000031, 0)),
    (qi.desc_flush_context(0, 0, 0, qi.DMA_CCMD_GLOBAL_INVL), (0x11, 0)),
    (qi.desc_flush_dev_iotlb(0x100, 0, 0, 0xFFFF8000, 0), (0x10000000003, 0xFFFF8000)),
    (qi.desc_flush_dev_iotlb(0x100, 0, 32, 0xFFFB4000, 1), (0x10000000003, 0xFFFB4001)),
    (qi.desc_flush_dev_iotlb(0x100, 0, 0, 0xFFE00000, 8), (0x10000000003, 0xFFE7F001)),
    (qi.desc_flush_dev_iotlb(0x100, 0, 0, 0, 52), (0x10000000003, 0x7FFFFFFFFFFFF001)),
    (qi.desc_global_iec(), (0x4, 0)),
])
def test_builders_match_recorded_qwords(desc, raw):
    assert desc == (*raw, 0, 0)


def test_wait_descriptor_matches_the_qemu_log():
    assert qi.desc_wait(0x1052004, False)[:2] == (0x200000025, 0x1052004)


def test_pasid_builders():
    # 3 pages round up to 4 (AM 2) and the address aligns down to 16 KiB, IH kept.
    expected = encode("p_iotlb_inv", g=3, did=3, pasid=5, addr=0x4000, ih=1, am=2)
    assert qi.desc_flush_piotlb(3, 5, 0x5000, 3, 1) == expected
    assert qi.desc_flush_piotlb(3, 5, 0, -1, 0) == encode("p_iotlb_inv", g=2, did=3, pasid=5)
    whole = qi.desc_flush_dev_iotlb_pasid(0x100, 0, 5, 0, 0, 52)
    assert whole[1] == 0x7FFFFFFFFFFFF800  # S in bit 11, bit 63 cleared


def test_submission_is_one_iqt_write_and_reclaims_its_slots():
    platform, ex, iommu = booted()
    unit = platform.units[0]
    seen = []
    ex.listeners.append(seen.append)
    before = unit.stats["iqt_writes"]
    rc = ex.run(qi.qi_submit_sync(iommu, [qi.desc_flush_iotlb(iommu, 2, 0, 0, 2)]))
    assert rc == 0 and unit.stats["iqt_writes"] == before + 1
    assert iommu.qi.free_cnt == qi.QI_LENGTH and iommu.qi.free_tail == iommu.qi.free_head
    assert [a.data[:3] for a in seen] == [("iotlb_inv", "dmar0", 0x200E2)]
    assert ex.held == {}


def test_a_submission_is_the_steps_of_qi_submit_sync():
    """Lock, each descriptor copied into its slot with one store (then its trace event), the
    wait's status set in use and the wait copied, one IQT write, the status polled, unlock;
    the unit fetches exactly the words that were stored."""
    platform, ex, iommu = booted()
    gen = qi.qi_submit_sync(iommu, [qi.desc_flush_iotlb(iommu, 2, 0, 0, 2)])
    steps, reply = [], None
    try:
        while True:
            step = gen.send(reply)
            steps.append(step)
            reply = ex.apply(step)
    except StopIteration:
        pass
    assert [type(s).__name__ for s in steps] == [
        "Lock", "CpuWrite", "Annotate", "CpuWrite", "CpuWrite", "MmioWrite", "CpuRead", "Unlock"]
    desc, status, wait = steps[1], steps[3], steps[4]
    assert (desc.size, wait.size, status.size) == (16, 16, 4)
    assert desc.value == 0x200E2  # qw0 in bits 63:0; qw1, 0 for a DSI, above
    assert wait.value & (2**64 - 1) == qi.desc_wait(status.addr, False)[0]
    assert wait.value >> 64 == status.addr == steps[6].addr
    assert platform.units[0].stats["desc:iotlb_inv"] >= 1


def test_scalable_queue_uses_32_byte_slots():
    platform, ex, iommu = booted("qemu72-sm")
    head = iommu.qi.free_head
    ex.run(qi.qi_submit_sync(iommu, [qi.desc_flush_pasid_cache(2, qi.QI_PC_PASID_SEL, 0)]))
    assert iommu.qi.shift == 5
    assert platform.units[0].regs["IQT"] == ((head + 2) % qi.QI_LENGTH) << 5


def test_iqe_on_our_descriptor_returns_einval_and_the_queue_recovers():
    platform, ex, iommu = booted()
    bad = qi.desc_flush_iotlb(iommu, 2, 0, 19, qi.DMA_TLB_PSI_FLUSH)  # AM 19 > MAMV 18
    assert ex.run(qi.qi_submit_sync(iommu, [bad])) == qi.EINVAL
    assert platform.units[0].regs["FSTS"] & qi.DMA_FSTS_IQE == 0
    assert ex.run(qi.qi_submit_sync(iommu, [qi.desc_flush_iotlb(iommu, 2, 0, 0, 2)])) == 0
    assert iommu.qi.free_cnt == qi.QI_LENGTH


def test_async_unit_is_stepped_by_the_wait():
    platform, ex, iommu = booted(qi_mode="async")
    assert ex.run(qi.qi_submit_sync(iommu, [qi.desc_flush_iotlb(iommu, 2, 0, 0, 2)])) == 0
    assert platform.units[0].queue.pending() == 0 and ex.steps["WaitQword"] >= 1


def test_batch_submits_when_full_and_at_the_end():
    platform, ex, iommu = booted()
    before = platform.units[0].stats["iqt_writes"]
    batch = qi.QiBatch(16)

    def flush_17():
        for did in range(2, 19):
            yield from batch.add(iommu, qi.desc_flush_iotlb(iommu, did, 0, 0, 2))
        yield from batch.flush()

    ex.run(flush_17())
    assert platform.units[0].stats["iqt_writes"] == before + 2
    assert platform.units[0].stats["desc:iotlb_inv"] >= 17


class _Queue:
    """The reclaim's view of a queue: slot states, wait slots, the free window."""

    def __init__(self, rng):
        self.desc_status = [rng.choice((qi.QI_FREE, qi.QI_IN_USE, qi.QI_DONE, qi.QI_ABORT))
                            for _ in range(qi.QI_LENGTH)]
        self.wait_slots = {s for s in range(qi.QI_LENGTH) if rng.random() < 0.4}
        self.free_tail = rng.randrange(qi.QI_LENGTH)
        self.free_cnt = rng.randrange(qi.QI_LENGTH + 1)

    def status_addr(self, slot):
        return 0x1000 + 4 * slot


def _reclaim_reference(q):
    """``reclaim_free_desc`` as one generator (the form before it handed back none)."""
    while q.free_cnt < qi.QI_LENGTH:
        slot = q.free_tail
        state = q.desc_status[slot]
        if state == qi.QI_IN_USE and slot in q.wait_slots:
            state = yield qi._status_read(q.status_addr(slot))
        if state not in (qi.QI_DONE, qi.QI_ABORT):
            return
        q.desc_status[slot] = qi.QI_FREE
        q.wait_slots.discard(slot)
        q.free_tail = (slot + 1) % qi.QI_LENGTH
        q.free_cnt += 1


@pytest.mark.parametrize("seed", range(40))
def test_reclaim_frees_and_reads_as_one_generator_would(seed):
    """``reclaim_free_desc`` (no generator unless a status word must be read) against the
    one-generator form: the same reads, replies and queue state on random queues."""
    import random

    runs = []
    for reclaim in (qi.reclaim_free_desc, _reclaim_reference):
        rng = random.Random(seed)
        q = _Queue(rng)
        words = {q.status_addr(s): rng.choice((qi.QI_IN_USE, qi.QI_DONE, qi.QI_ABORT))
                 for s in range(qi.QI_LENGTH)}
        steps, it, reply = [], iter(reclaim(q)), None
        try:
            while True:
                step = it.send(reply) if reply is not None else next(it)
                steps.append(step)
                reply = words[step.addr]
        except StopIteration:
            pass
        runs.append((steps, q.desc_status, q.wait_slots, q.free_tail, q.free_cnt))
    assert runs[0] == runs[1]
