"""Shared set-up for the driver-mechanics tests: a platform with one unit from a preset."""

from __future__ import annotations

from vtdsim.driver.executor import DirectExecutor
from vtdsim.driver.intel_iommu import IntelIommu
from vtdsim.driver.platform import Platform
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit


def booted(preset: str = "qemu72-legacy-cm", qi_mode: str = "sync", **caps):
    """(platform, executor, iommu) after ``init_hw``; ``caps`` change preset fields."""
    memory = PhysicalMemory()
    capabilities = get_preset(preset)
    if caps:
        capabilities = capabilities.with_(**caps)
    unit = RemappingUnit(capabilities, memory, qi_mode=qi_mode)
    platform = Platform(memory, [unit])
    executor = DirectExecutor(platform)
    iommu = IntelIommu(0)
    executor.run(iommu.init_hw())
    return platform, executor, iommu
