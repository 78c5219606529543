"""iommu.c: page-size choice, the gather, sg chunking, default-domain policy (seed 003)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from vtdsim.driver.iommu_core import (
    IommuIotlbGather,
    first_level_by_default,
    intel_iommu_caching_mode_policy,
    iommu_get_def_domain_type,
    iommu_pgsize,
    iommu_subsys_init,
    sg_chunks,
)
from vtdsim.hardware.presets import get_preset

SZ_4K, SZ_2M, SZ_1G = 1 << 12, 1 << 21, 1 << 30


def test_pgsize_prefers_large_pages_only_when_aligned():
    bitmap = SZ_4K | SZ_2M | SZ_1G
    assert iommu_pgsize(bitmap, 0x200000, 0x400000, SZ_2M) == (SZ_2M, 1)
    # 4K pages up to the next 2M boundary, then a 2M page becomes possible.
    assert iommu_pgsize(bitmap, 0x1FF000, 0x3FF000, SZ_2M + SZ_4K) == (SZ_4K, 1)
    # iova and paddr not equally offset in 2M: 4K pages all the way.
    assert iommu_pgsize(bitmap, 0x200000, 0x201000, SZ_2M) == (SZ_4K, 512)
    assert iommu_pgsize(SZ_4K, 0xFFFE0000, 0x5000, 0x20000) == (SZ_4K, 32)


def test_gather_tracks_inclusive_range_and_disjointness():
    g = IommuIotlbGather()
    assert g.empty
    g.add_range(0xFFFFD000, 0x1000)
    assert (g.start, g.end) == (0xFFFFD000, 0xFFFFDFFF)
    assert not g.is_disjoint(0xFFFFE000, 0x1000)  # touching is not disjoint
    assert g.is_disjoint(0xFFFF0000, 0x1000)


def test_sg_chunks_merge_physically_contiguous_segments():
    sg = [(0x10000, 0x1000), (0x11000, 0x1000), (0x20000, 0x2000)]
    assert sg_chunks(sg) == [(0x10000, 0x2000), (0x20000, 0x2000)]


@dataclass(frozen=True)
class P:
    fq_allowed_under_caching_mode_first_stage: bool


def test_debian_kconfig_lazy_then_caching_mode_forces_strict():
    policy = iommu_subsys_init("lazy")
    assert policy.def_domain_type == "dma_fq"
    assert policy.messages[-1] == "iommu: DMA domain TLB invalidation policy: lazy mode"
    intel_iommu_caching_mode_policy(policy, [get_preset("qemu72-legacy-cm")], P(True))
    assert (policy.def_domain_type, policy.dma_strict) == ("dma", True)
    assert "IOMMU batching disallowed due to virtualization" in policy.messages[-1]


def test_no_caching_mode_stays_lazy_and_cmdline_overrides_kconfig():
    policy = iommu_subsys_init("lazy")
    intel_iommu_caching_mode_policy(policy, [get_preset("qemu72-legacy")], P(False))
    assert policy.def_domain_type == "dma_fq"
    assert iommu_subsys_init("lazy", cmdline_strict=True).def_domain_type == "dma"
    assert iommu_subsys_init("strict", cmdline_passthrough=True).def_domain_type == "identity"
    # Passthrough refused under memory encryption; Kconfig passthrough implies non-strict.
    assert iommu_subsys_init("passthrough", mem_encrypt=True).def_domain_type == "dma_fq"


@pytest.mark.parametrize("switch,expected", [(True, "dma_fq"), (False, "dma")])
def test_seed003_first_stage_exception(switch, expected):
    """A CM vIOMMU offering only the first stage: lazy allowed iff the 2023 exception."""
    fs_only_cm = get_preset("vm-flts").with_(cm=1)
    assert first_level_by_default(fs_only_cm)
    policy = iommu_subsys_init("lazy")
    intel_iommu_caching_mode_policy(policy, [fs_only_cm], P(switch))
    assert policy.def_domain_type == expected


def test_first_level_never_default_in_legacy_or_ss_only_units():
    assert not first_level_by_default(get_preset("qemu72-legacy-cm"))
    assert not first_level_by_default(get_preset("qemu72-sm"))
    assert first_level_by_default(get_preset("server-sm"))


def test_untrusted_devices_are_always_strict_dma():
    policy = iommu_subsys_init("passthrough")
    iommu = SimpleNamespace(caps=get_preset("server-sm"))
    assert iommu_get_def_domain_type(policy, SimpleNamespace(untrusted=True, iommu=iommu)) == "dma"
    trusted = SimpleNamespace(untrusted=False, iommu=iommu)
    assert iommu_get_def_domain_type(policy, trusted) == "identity"
    no_pt_unit = SimpleNamespace(caps=get_preset("qemu72-legacy").with_(pt=0))
    no_pt = SimpleNamespace(untrusted=False, iommu=no_pt_unit)
    assert iommu_get_def_domain_type(policy, no_pt) == "dma"
