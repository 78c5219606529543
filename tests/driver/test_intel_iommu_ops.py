"""intel_iommu_ops end to end on a unit: boot attach and DMA map/unmap descriptor sequences,
checked against the Linux 6.1 recordings (QEMU 7.2) and the mainline rules.

``make_system`` is the builder the other driver protocol tests import."""

from __future__ import annotations

import lzma
import re
from pathlib import Path

import pytest

from vtdsim.driver.intel_iommu_ops import EINVAL
from vtdsim.driver.profiles import LINUX_6_1, MAINLINE
from vtdsim.hardware.presets import get_preset
from vtdsim.simulation import system as simulation

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"


class System(simulation.System):
    """The library's booted machine with two test conveniences."""

    def run_recorded(self, gen) -> tuple[object, list]:
        """Run ``gen`` and also return every step it yielded, in order."""
        steps: list = []

        def tap():
            reply = None
            try:
                while True:
                    step = gen.send(reply)
                    steps.append(step)
                    reply = yield step
            except StopIteration as stop:
                return stop.value

        return self.executor.run(tap()), steps

    def take(self) -> list[list[tuple[str, int, int]]]:
        """The submissions since the last call, each a list of (label, qw0, qw1)."""
        return [[(label, qw0, qw1) for label, qw0, qw1, *_ in sub]
                for sub in self.take_submissions() if sub]


def make_system(preset: str, profile=LINUX_6_1, *, translation: bool = True,
                **cap_fields) -> System:
    """A booted unit of ``preset`` (``cap_fields`` change CAP/ECAP fields, e.g. ``cm=1``)."""
    caps = get_preset(preset)
    if cap_fields:
        caps = caps.with_(**cap_fields)
    return System.boot(caps, profile, enable_translation=translation)


def flat(submissions) -> list[tuple[str, int, int]]:
    return [d for sub in submissions for d in sub]


def qemu_descriptors(folder: str) -> list[tuple[str, int, int]]:
    """(QEMU type name, low, high) of every descriptor in a recording's QEMU log."""
    path = TRACES / folder / "qemu.log.xz"
    if not path.exists():
        pytest.skip(f"recording {folder} not present")
    pat = re.compile(r"vtd_inv_desc invalidate desc type (\S+) "
                     r"high (0x[0-9a-f]+) low (0x[0-9a-f]+)")
    with lzma.open(path, "rt") as f:
        return [(m[1], int(m[3], 16), int(m[2], 16)) for m in map(pat.search, f) if m]


# -- boot: legacy attach under caching mode -------------------------------------------------------
# The recorded machine's IOMMU groups (legacy-cm-ats guest.log "=== GROUPS"), in probe order.
GROUPS = [["00:00.0"], ["00:01.0"], ["00:02.0"], ["00:03.0"], ["00:1f.0", "00:1f.2", "00:1f.3"],
          ["01:00.0"]]


def boot_attach(system: System, ats_sid: str = "01:00.0"):
    domains, infos = [], {}
    for group in GROUPS:
        domain = system.run(system.driver.domain_alloc_paging(system.iommu))
        domains.append(domain)
        for name in group:
            ats = name == ats_sid
            info = system.probe(name, ats=ats, ats_qdep=32 if ats else 0)
            assert system.run(system.driver.attach_dev(domain, info)) == 0
            infos[name] = info
    return domains, infos


def test_linux61_boot_attach_matches_the_recording_exactly():
    """SRTP globals, then per device cc_inv(device, DID 0) + iotlb_inv(DSI, DID n): the first
    18 context/IOTLB descriptors QEMU saw in legacy-cm-ats, in order."""
    recorded = [(lo, hi) for kind, lo, hi in qemu_descriptors("legacy-cm-ats")
                if kind in ("context-cache", "iotlb")][:18]
    system = make_system("qemu72-legacy-cm-ats", translation=False)
    boot_attach(system)
    ours = [(qw0, qw1) for _label, qw0, qw1 in flat(system.take())
            if _label in ("cc_inv", "iotlb_inv")]
    assert ours == recorded
    assert (0x800000031, 0) in ours and (0x300E2, 0) in ours  # 00:01.0 -> DID 3


def test_linux61_one_descriptor_per_iqt_write_at_boot():
    system = make_system("qemu72-legacy-cm", translation=False)
    system.take()
    before = system.platform.units[0].stats["iqt_writes"]
    boot_attach(system, ats_sid="")
    subs = system.take()
    assert all(len(s) == 1 for s in subs)
    assert system.platform.units[0].stats["iqt_writes"] - before == len(subs) == 16


def test_legacy_without_caching_mode_attach_issues_nothing():
    system = make_system("qemu72-legacy", translation=False)
    boot_attach(system, ats_sid="")
    assert flat(system.take()) == [("cc_inv", 0x11, 0), ("iotlb_inv", 0xD2, 0)]  # SRTP only


# -- seed 002: iotlb_sync_map static / dynamic, tag order, RWBF ----------------------------------
def test_static_iotlb_sync_map_rejects_incompatible_attach():
    """A domain allocated for a non-CM unit has no map flush; attaching it to a CM unit would
    leave shadow tables stale, so mainline refuses (-EINVAL)."""
    plain = make_system("qemu72-legacy", MAINLINE)
    domain = plain.run(plain.driver.domain_alloc_paging(plain.iommu))
    assert not domain.iotlb_sync_map
    cm = make_system("qemu72-legacy-cm", MAINLINE)
    info = cm.probe("00:02.0")
    assert cm.run(cm.driver.attach_dev(domain, info)) == EINVAL
    cm_domain = cm.run(cm.driver.domain_alloc_paging(cm.iommu))
    assert cm_domain.iotlb_sync_map
    assert cm.run(cm.driver.attach_dev(cm_domain, info)) == 0


def _attach_steps(profile, preset="qemu72-legacy-cm"):
    system = make_system(preset, profile)
    info = system.probe("00:02.0", ats=True, ats_qdep=32)
    domain = system.run(system.driver.domain_alloc_paging(system.iommu))
    _rc, steps = system.run_recorded(system.driver.attach_dev(domain, info))
    return system, domain, steps


def _first_index(steps, pred) -> int:
    return next(i for i, s in enumerate(steps) if pred(s))


@pytest.mark.parametrize("before", [False, True])
def test_seed002_cache_tag_order_on_rid_attach(before):
    profile = MAINLINE.with_(cache_tag_assign_before_context=before)
    _system, _domain, steps = _attach_steps(profile)
    tag = _first_index(steps, lambda s: getattr(s, "event", "") == "cache_tag_assign")
    ctx_write = _first_index(steps, lambda s: s.why == "domain_context_mapping_one"
                             and type(s).__name__ == "CpuWrite")
    assert (tag < ctx_write) is before


def test_seed002_dynamic_flag_is_set_only_after_the_context_is_live():
    """Patch 02/11 sets the flag at attach; a map racing between the context write and the
    flag skips its flush (the window seed 002 objects to).  Static: set at allocation."""
    _system, domain, _steps = _attach_steps(MAINLINE.with_(iotlb_sync_map="dynamic"))
    assert domain.iotlb_sync_map
    system = make_system("qemu72-legacy-cm", MAINLINE)
    static = system.run(system.driver.domain_alloc_paging(system.iommu))
    assert static.iotlb_sync_map  # before any attach
    dynamic_system = make_system("qemu72-legacy-cm", MAINLINE.with_(iotlb_sync_map="dynamic"))
    dyn = dynamic_system.run(dynamic_system.driver.domain_alloc_paging(dynamic_system.iommu))
    assert not dyn.iotlb_sync_map


@pytest.mark.parametrize("switch", [False, True])
def test_seed002_rwbf_flush_before_context(switch):
    profile = MAINLINE.with_(rwbf_flush_before_context=switch)
    caps_name = "qemu72-legacy"
    system = make_system(caps_name, profile)
    system.iommu.rwbf_quirk = True  # a unit that needs write-buffer flushing
    info = system.probe("00:02.0")
    domain = system.run(system.driver.domain_alloc_paging(system.iommu))
    _rc, steps = system.run_recorded(system.driver.attach_dev(domain, info))
    wbf = [i for i, s in enumerate(steps) if s.why == "iommu_flush_write_buffer"]
    ctx = _first_index(steps, lambda s: s.why == "domain_context_mapping_one"
                       and type(s).__name__ == "CpuWrite")
    assert any(i < ctx for i in wbf) is switch
    assert any(i > ctx for i in wbf)  # the not-present -> present flush is always there


# -- seed 004: enforce_cache_coherency -----------------------------------------------------------
def test_seed004_second_stage_sets_snp_in_later_ptes_and_is_permanent():
    system = make_system("server-sm", MAINLINE)
    info = system.probe("00:02.0")
    domain = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    assert system.run(system.driver.enforce_cache_coherency(domain)) is True
    system.run(system.driver.map(domain, 0x10000, 0x200000, 0x1000, 3))
    _paddr, _level, pte = domain.pgtable.lookup(system.platform.memory, 0x10000)
    assert pte & (1 << 11)  # SNP
    # 0fa6f0893466's intel_iommu_enforce_cache_coherency_ss checks has_mappings on every call:
    # a repeat call on the now-mapped domain is refused, but the enforcement stays.
    assert system.run(system.driver.enforce_cache_coherency(domain)) is False
    assert domain.force_snooping and domain.pgtable.force_snoop


def test_enforce_on_a_mapped_second_stage_domain_is_refused_by_mainline_only():
    """e645c20e8e9c (v6.7): old PTEs would keep SNP=0 while coherency is promised."""
    for profile, accepted in ((MAINLINE, False), (LINUX_6_1, True)):
        system = make_system("server-sm", profile)
        info = system.probe("00:02.0")
        domain = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
        assert system.run(system.driver.attach_dev(domain, info)) == 0
        system.run(system.driver.map(domain, 0x10000, 0x200000, 0x1000, 3))
        assert system.run(system.driver.enforce_cache_coherency(domain)) is accepted
        assert domain.force_snooping is accepted


def test_seed004_first_stage_sets_pgsnp_and_flushes_the_present_entry():
    system = make_system("server-sm", MAINLINE)
    info = system.probe("00:02.0")
    domain = system.run(system.driver.domain_alloc_paging(system.iommu, stage="fs"))
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    system.take()
    assert system.run(system.driver.enforce_cache_coherency(domain)) is True
    labels = [label for label, *_ in flat(system.take())]
    assert labels == ["pc_inv", "p_iotlb_inv"]  # no ATS: no device-TLB descriptor


def test_seed004_rejects_non_snoop_control_units():
    system = make_system("qemu72-legacy", MAINLINE.with_(iotlb_sync_map="notify"))
    info = system.probe("00:02.0")
    domain = system.run(system.driver.domain_alloc_paging(system.iommu))
    assert system.run(system.driver.attach_dev(domain, info)) == 0
    sc = system.iommu.caps.sc
    assert system.run(system.driver.enforce_cache_coherency(domain)) is sc
    # A force-snooping domain cannot later take a device behind a unit without SC.
    other = make_system("server-sm", MAINLINE)
    dom2 = other.run(other.driver.domain_alloc_paging(other.iommu, stage="ss"))
    other.run(other.driver.attach_dev(dom2, other.probe("00:03.0")))
    assert other.run(other.driver.enforce_cache_coherency(dom2)) is True
    assert system.run(system.driver.attach_dev(dom2, system.probe("00:04.0"))) == EINVAL


def test_seed004_switch_off_means_no_op():
    system = make_system("server-sm", MAINLINE.with_(enforce_cache_coherency=False))
    domain = system.run(system.driver.domain_alloc_paging(system.iommu, stage="ss"))
    assert system.run(system.driver.enforce_cache_coherency(domain)) is False
    assert not domain.force_snooping


def test_mainline_rid_reattach_blocks_first_and_drops_old_tags_before_the_teardown():
    """§4.7: old tags unassigned, entry torn down (flushes), old DID released, then the new
    context, then the new tags."""
    system = make_system("qemu72-legacy-cm", MAINLINE)
    info = system.probe("00:02.0")
    first = system.run(system.driver.domain_alloc_paging(system.iommu))
    second = system.run(system.driver.domain_alloc_paging(system.iommu))
    assert system.run(system.driver.attach_dev(first, info)) == 0
    _rc, steps = system.run_recorded(system.driver.attach_dev(second, info))
    order = [s.event if hasattr(s, "event") else s.why for s in steps
             if getattr(s, "event", "") in ("cache_tag_unassign", "cache_tag_assign")
             or s.why in ("domain_context_clear_one", "domain_context_mapping_one")]
    first_of = {name: order.index(name) for name in reversed(order)}
    assert (first_of["cache_tag_unassign"] < first_of["domain_context_clear_one"]
            < first_of["domain_context_mapping_one"] < first_of["cache_tag_assign"])
    assert not first.cache_tags and not first.iommu_array
    assert second.domain_id_iommu(system.iommu) == 2  # the old DID was freed and reused
