"""Seed 003: the first-stage vIOMMU under caching mode (vm-flts-cm), the policy that keeps its
default domain lazy (257ec2907419) or forces strict (before it), and a first-stage map that
needs no caching-mode flush (spec 6.1)."""

from __future__ import annotations

from pathlib import Path

from vtdsim.checker.boot import boot
from vtdsim.checker.litmus import Options, run_scenario
from vtdsim.checker.scenario import load
from vtdsim.driver import iommu_core
from vtdsim.driver.profiles import MAINLINE
from vtdsim.hardware.presets import get_preset

LITMUS = Path(__file__).resolve().parents[2] / "litmus"


def test_vm_flts_cm_offers_first_stage_only_with_caching_mode():
    caps = get_preset("vm-flts-cm")
    assert caps.caching_mode and caps.fsts and caps.smts and not caps.ssts
    assert iommu_core.first_level_by_default(caps)
    assert (caps.cap, caps.ecap) == (get_preset("vm-flts").cap | 1 << 7, get_preset("vm-flts").ecap)


def _policy(profile):
    policy = iommu_core.iommu_subsys_init("lazy")
    iommu_core.intel_iommu_caching_mode_policy(policy, [get_preset("vm-flts-cm")], profile)
    return policy


def test_first_stage_default_under_cm_stays_lazy_only_with_the_patch():
    assert _policy(MAINLINE).def_domain_type == "dma_fq"
    before = _policy(MAINLINE.with_(fq_allowed_under_caching_mode_first_stage=False))
    assert before.def_domain_type == "dma"
    assert "DMAR: IOMMU batching disallowed due to virtualization" in before.messages


def test_lazy_first_stage_domain_shows_only_the_lazy_window():
    outcome = run_scenario(load(LITMUS / "seed003_fs_default_cm_lazy.toml"), Options())
    assert outcome.unexpected == [] and outcome.result.exhaustive
    assert outcome.result.verdicts()["dma_after_free"] == "holds"
    exposure = outcome.observed["lazy_exposure"]
    chain = [r.chain for r in exposure.example.records if r.key]
    assert chain[-1].startswith("dma read 0xfffff000") and "free" in " ".join(chain)
    assert outcome.scenario.expect["lazy_exposure"] == "observed"


def test_strict_before_the_patch_flushes_with_type_6_and_exposes_nothing():
    sc = load(LITMUS / "seed003_fs_default_cm_strict_before_patch.toml")
    outcome = run_scenario(sc, Options())
    assert outcome.unexpected == [] and "lazy_exposure" not in outcome.observed
    system = boot(sc)
    assert system.domains["dom"].stage == "fs" and system.cookies["dom"].fq is None


def test_first_stage_map_under_cm_issues_no_invalidation_and_never_faults():
    sc = load(LITMUS / "seed003_fs_map_no_cm_flush.toml")
    system = boot(sc)
    unit = system.unit(0)
    before = unit.stats["iqt_writes"]
    # The unmapped IOVA: a first-stage walk ends at a not-present entry, which the unit never
    # caches even under CM (spec 6.1) - no negative IOTLB or PSC entry is possible.
    fills = unit.possible_fills(system.endpoint("dev1").sid, 0x1000)
    assert not any(f.cache in ("iotlb", "pscache") and not getattr(f.entry, "present", True)
                   for f in fills)
    prot = 3
    system.executor.run(system.driver.map(system.domains["dom"], 0x1000,
                                          system.pages["buf"], 0x1000, prot))
    assert unit.stats["iqt_writes"] == before  # no descriptor submitted at all
    outcome = run_scenario(sc, Options())
    assert outcome.unexpected == [] and outcome.result.verdicts()["spurious_fault"] == "holds"
