import pytest
from _driver_fixtures import booted

from vtdsim.driver.executor import DirectExecutor
from vtdsim.driver.intel_iommu import DomainIdAllocator, IntelIommu
from vtdsim.driver.platform import Platform
from vtdsim.errors import SpecRuleBroken
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit


def _boot_log(preset: str):
    memory = PhysicalMemory()
    unit = RemappingUnit(get_preset(preset), memory)
    writes = []
    real = unit.mmio_write
    unit.mmio_write = lambda off, size, val: (writes.append((off, size, val)),
                                              real(off, size, val))
    platform = Platform(memory, [unit])
    ex = DirectExecutor(platform)
    labels = []
    ex.listeners.append(lambda a: labels.append((a.data[0], a.data[2])))
    iommu = IntelIommu(0)
    ex.run(iommu.init_hw(irta=0x2B00000))
    return unit, iommu, writes, labels


def test_legacy_boot_writes_the_recorded_sequence():
    unit, iommu, writes, labels = _boot_log("qemu72-legacy-cm")
    gcmd = [v for off, _, v in writes if off == 0x18]
    assert gcmd == [0x4000000, 0x5000000, 0x6000000, 0x46000000, 0x86000000]
    assert writes[0] == (0x88, 4, 0) and writes[1] == (0x90, 8, iommu.qi.base)
    assert (0x20, 8, iommu.root_table) in writes
    assert labels == [("iec_inv", 0x4), ("cc_inv", 0x11), ("iotlb_inv", 0xD2)]
    assert unit.translation_enabled and iommu.translation_enabled
    assert [v for off, _, v in writes if off == 0x88] == [0, 0x20, 0x40, 0x60]


def test_scalable_boot_sets_smt_wide_queue_and_pasid_cache_flush():
    unit, iommu, writes, labels = _boot_log("qemu72-sm")
    assert writes[1] == (0x90, 8, iommu.qi.base | 0x801)
    assert (0x20, 8, iommu.root_table | 0x400) in writes and unit.ttm == 1
    assert [lab for lab, _ in labels] == ["iec_inv", "cc_inv", "pc_inv", "iotlb_inv"]


def test_write_buffer_flush_only_with_rwbf():
    platform, ex, iommu = booted()
    ex.reset_steps()
    ex.run(iommu.iommu_flush_write_buffer())
    assert ex.steps["MmioWrite"] == 0
    platform, ex, iommu = booted(rwbf=1)
    ex.reset_steps()
    ex.run(iommu.iommu_flush_write_buffer())
    assert ex.steps["MmioWrite"] == 1 and ex.steps["WaitRegister"] == 1


@pytest.mark.parametrize("coherent,flushes", [(0, 1), (1, 0)])
def test_flush_cache_follows_ecap_c(coherent, flushes):
    platform, ex, iommu = booted(c=coherent)
    ex.reset_steps()
    ex.run(iommu.flush_cache(0x5000, 16))
    assert ex.steps["ClflushRange"] == flushes


@pytest.mark.parametrize("kind", ["bitmap", "ida"])
def test_domain_ids_start_at_two_and_reuse_the_lowest(kind):
    ids = DomainIdAllocator(16, kind)
    assert [ids.alloc() for _ in range(3)] == [2, 3, 4]
    ids.free(3)
    assert ids.alloc() == 3
    with pytest.raises(SpecRuleBroken):
        ids.free(9)
