"""QEMU versions: CAP/ECAP from properties equal the recorded words; per-type policy."""

import pytest

from vtdsim.errors import BadInput
from vtdsim.hardware.presets import PRESETS
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
