"""QEMU versions: CAP/ECAP from properties equal the recorded words; per-type policy."""

import pytest

from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_map_page, iommu_dma_unmap_page
from vtdsim.driver.iova import IovaDomain
from vtdsim.errors import BadInput
from vtdsim.hardware.presets import PRESETS
from vtdsim.simulation.machine import build
from vtdsim.virtualization import qemu
from vtdsim.virtualization.qemu import QEMU_72, QEMU_100, QemuProperties, qemu_caps


@pytest.mark.parametrize("props, preset", [
    (QemuProperties(), "qemu72-legacy"),
    (QemuProperties(caching_mode=True), "qemu72-legacy-cm"),
    (QemuProperties(device_iotlb=True), "qemu72-legacy-ats"),
    (QemuProperties(caching_mode=True, device_iotlb=True), "qemu72-legacy-cm-ats"),
    (QemuProperties(scalable_mode=True), "qemu72-sm"),
])
def test_qemu72_words_equal_the_recorded_ones(props, preset):
    caps = qemu_caps(QEMU_72, props)
    assert (caps.cap, caps.ecap) == (PRESETS[preset].cap, PRESETS[preset].ecap)


def test_qemu100_words_equal_the_linux612_recordings():
    flts = qemu_caps(QEMU_100, QemuProperties(caching_mode=True, scalable_mode=True, flts=True))
    assert (flts.cap, flts.ecap) == (0x1D2008C222F0686, 0x880000F00F4A)
    legacy = qemu_caps(QEMU_100, QemuProperties(caching_mode=True))
    assert (legacy.cap, legacy.ecap) == (0xD2008C222F0686, 0xF00F4A)
    sm = qemu_caps(QEMU_100, QemuProperties(scalable_mode=True))
    assert (sm.cap, sm.ecap) == (0xD2008C222F0606, 0x480080F00F4A)


def test_flts_needs_a_version_that_has_it():
    with pytest.raises(BadInput):
        qemu_caps(QEMU_72, QemuProperties(scalable_mode=True, flts=True))


@pytest.mark.parametrize("version, dtype, scalable, expected", [
    (QEMU_72, 6, False, qemu.NOOP), (QEMU_72, 7, True, qemu.NOOP),
    (QEMU_100, 6, False, qemu.REJECT), (QEMU_100, 6, True, qemu.PROCESS),
    (QEMU_100, 7, True, qemu.NOOP), (QEMU_72, 8, True, qemu.REJECT),
    (QEMU_100, 9, True, qemu.REJECT), (QEMU_72, 2, False, qemu.PROCESS),
])
def test_descriptor_policy(version, dtype, scalable, expected):
    assert version.policy(dtype, scalable) == expected


def test_qemu_iotlb_is_emptied_whole_when_full():
    from vtdsim.hardware.caches.iotlb import Iotlb, IotlbEntry

    tlb = Iotlb(capacity=4)
    tlb.flush_when_full = True
    for i in range(4):
        tlb.fill_entry(IotlbEntry(1, 0, i << 12, 1, i << 12, True, True, False, False, "ss"))
    tlb.fill_entry(IotlbEntry(1, 0, 9 << 12, 1, 0, True, True, False, False, "ss"))
    assert len(tlb) == 1 and tlb.stats.replaced == 4
    assert qemu.qemu_cache_config().iotlb == 1024



def _two_devices_one_domain(platform: str):
    """Two emulated devices in one guest domain, one page mapped; each device reads it twice
    (translations, IOTLB keys, walks), then the guest unmaps it (strict: a PSI of the DID)
    and what the IOTLB keeps."""
    m = build(platform)
    for name in ("01:00.0", "01:01.0"):
        m.device(name, kind="emulated")
    domain = m.guest.attach(["01:00.0", "01:01.0"])
    cookie = IommuDmaCookie(m.guest.driver, domain, IovaDomain(ncpus=2), ncpus=2)
    iova = m.guest.run(iommu_dma_map_page(cookie, 0x4000_0000, 4096))
    unit, did = m.guest.unit, domain.domain_id_iommu(m.guest.iommu)
    walks = unit.stats["walks"]
    hpas = [unit.translate(sid, iova).hpa for sid in (0x100, 0x108, 0x100, 0x108)]
    found = (hpas, sorted(unit.iotlb.keys()), unit.stats["walks"] - walks)
    m.guest.run(iommu_dma_unmap_page(cookie, iova, 4096))
    return did, iova >> 12, found, unit.iotlb.keys()


def test_qemu_iotlb_entries_are_per_requester_and_invalidated_by_domain():
    """QEMU's ``vtd_lookup_iotlb`` keys by source-id: the second device of the domain misses,
    walks and fills an entry of its own, where the spec's IOTLB (DID-tagged) shares one; the
    guest's PSI drops both, as ``vtd_hash_remove_by_page`` matches the entry's domain-id."""
    did, vpn, (hpas, keys, walks), left = _two_devices_one_domain("emulated")
    assert hpas == [0x4000_0000] * 4 and walks == 2 and left == []
    assert keys == [(did, 0, 1, vpn, 0x100), (did, 0, 1, vpn, 0x108)]
    did, vpn, (hpas, keys, walks), left = _two_devices_one_domain("bare")
    assert hpas == [0x4000_0000] * 4 and walks == 1 and left == []
    assert keys == [(did, 0, 1, vpn)]
