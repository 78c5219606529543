"""GCMD/GSTS: the Linux 6.1 boot sequence as recorded, one-shot vs persistent status, SRTP
latching and cache effects (spec 10.4.4-10.4.6, reference §4, §5)."""

from vtdsim.hardware.caches.context_cache import ContextCacheEntry
from vtdsim.hardware.global_command import requested_commands
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import CacheConfig, RemappingUnit

GCMD, GSTS, RTADDR, IQH, IQT, IQA, IRTA = 0x18, 0x1C, 0x20, 0x80, 0x88, 0x90, 0xB8
TE, SRTP, WBF, QIE, IRE, SIRTP = 1 << 31, 1 << 30, 1 << 27, 1 << 26, 1 << 25, 1 << 24


def make_unit(caps=None, **kw):
    return RemappingUnit(caps or get_preset("qemu72-legacy-cm"), PhysicalMemory(), **kw)


def gsts(unit):
    return unit.mmio_read(GSTS, 4)


def fill_context(unit, sid=8):
    unit.context_cache.fill(sid, ContextCacheEntry(sid=sid, present=True, raw=1, did=1))


def test_linux61_init_sequence_as_recorded():
    """The GCMD writes of qemu.log (legacy-cm-default), with the GSTS the guest saw."""
    unit = make_unit()
    unit.mmio_write(IQT, 4, 0)
    unit.mmio_write(IQA, 8, 0x2A3B000)
    unit.mmio_write(GCMD, 4, 0x04000000)
    assert gsts(unit) == 0x04000000
    unit.mmio_write(IRTA, 8, 0x2B0000F)
    unit.mmio_write(GCMD, 4, 0x05000000)
    assert gsts(unit) == 0x05000000  # SIRTP done: IRTPS, QIES kept
    assert unit.irta == 0x2B0000F
    unit.mmio_write(GCMD, 4, 0x06000000)
    assert gsts(unit) == 0x07000000  # the "GSTS before" of step 4
    unit.mmio_write(RTADDR, 8, 0x4F0F000)
    assert unit.root_table_addr == 0  # latched only at SRTP
    unit.mmio_write(GCMD, 4, 0x46000000)
    assert gsts(unit) == 0x47000000  # the "GSTS before" of step 5: RTPS stays set
    assert (unit.root_table_addr, unit.ttm) == (0x4F0F000, 0)
    assert not unit.translation_enabled
    unit.mmio_write(GCMD, 4, 0x86000000)
    assert gsts(unit) == 0xC7000000 and unit.translation_enabled
    unit.mmio_write(GCMD, 4, 0x06000000)  # shutdown: TE cleared
    assert gsts(unit) == 0x47000000 and not unit.translation_enabled
    assert unit.stats["gcmd_writes"] == 6 and unit.stats["gcmd_multiple_commands"] == 0


def test_requested_commands_one_shot_and_persistent():
    assert requested_commands(0x46000000, 0x07000000) == ["srtp"]
    assert requested_commands(0x86000000, 0x47000000) == ["te"]
    assert requested_commands(0x06000000, 0xC7000000) == ["te"]
    assert requested_commands(0x07000000, 0x07000000) == ["sirtp"]  # one-shot acts every time
    assert requested_commands(TE | SRTP, 0) == ["te", "srtp"]


def test_several_commands_at_once_are_counted_and_all_done():
    unit = make_unit()
    unit.mmio_write(RTADDR, 8, 0x1000)
    unit.mmio_write(GCMD, 4, TE | SRTP)
    assert unit.stats["gcmd_multiple_commands"] == 1
    assert unit.translation_enabled and unit.root_table_addr == 0x1000


def test_scalable_ttm_latched_from_recorded_rtaddr():
    unit = make_unit(get_preset("qemu72-sm"))
    unit.mmio_write(RTADDR, 8, 0x4ECB400)
    unit.mmio_write(GCMD, 4, SRTP)
    assert (unit.root_table_addr, unit.ttm) == (0x4ECB000, 1)
    assert unit.stats["srtp_invalid_ttm"] == 0


def test_unsupported_ttm_is_latched_and_counted():
    unit = make_unit()  # legacy-only unit
    unit.mmio_write(RTADDR, 8, 0x4ECB400)
    unit.mmio_write(GCMD, 4, SRTP)
    assert unit.ttm == 1 and unit.stats["srtp_invalid_ttm"] == 1


def test_srtp_without_esrtps_keeps_caches():
    unit = make_unit()
    fill_context(unit)
    unit.mmio_write(GCMD, 4, SRTP)
    assert len(unit.context_cache) == 1


def test_srtp_with_esrtps_flushes_caches():
    unit = make_unit(get_preset("server-sm"))
    fill_context(unit)
    unit.mmio_write(GCMD, 4, SRTP)
    assert len(unit.context_cache) == 0


def test_te_change_flushes_only_in_qemu_mode():
    spec = make_unit()
    fill_context(spec)
    spec.mmio_write(GCMD, 4, TE)
    assert len(spec.context_cache) == 1
    qemu = make_unit(cache_config=CacheConfig(qemu_resets=True))
    fill_context(qemu)
    qemu.mmio_write(GCMD, 4, TE)
    assert len(qemu.context_cache) == 0


def test_wbf_flushes_posted_writes_and_wbfs_reads_clear():
    unit = make_unit(get_preset("qemu72-legacy").with_(rwbf=1))
    assert unit.memory.write_buffer
    unit.memory.cpu_store(0x5000, 0x1234, 8)
    assert unit.memory.read_qword(0x5000) == 0  # posted
    unit.mmio_write(GCMD, 4, WBF)
    assert unit.memory.read_qword(0x5000) == 0x1234
    assert gsts(unit) & WBF == 0 and unit.stats["wbf"] == 1


def test_qie_enable_resets_iqh():
    unit = make_unit()
    unit.regs.update("IQH", qh=5)
    unit.mmio_write(GCMD, 4, QIE)
    assert unit.mmio_read(IQH, 8) == 0 and gsts(unit) == QIE


def test_qie_disable_refused_while_descriptors_pending():
    unit = make_unit(qi_mode="async")
    unit.mmio_write(IQA, 8, 0x10000)
    unit.mmio_write(GCMD, 4, QIE)
    unit.mmio_write(IQT, 4, 0x20)  # two descriptors submitted, none processed yet
    unit.mmio_write(GCMD, 4, 0)
    assert gsts(unit) == QIE and unit.stats["qie_disable_refused"] == 1
    unit.mmio_write(IQT, 4, 0)  # back to IQH: quiescent
    unit.mmio_write(GCMD, 4, 0)
    assert gsts(unit) == 0


def test_commands_without_capability_are_ignored():
    caps = get_preset("qemu72-legacy").with_(ir=0, qi=0)
    unit = make_unit(caps)
    unit.mmio_write(GCMD, 4, IRE)
    unit.mmio_write(GCMD, 4, QIE)
    unit.mmio_write(GCMD, 4, SIRTP)
    assert gsts(unit) == 0 and unit.stats["gcmd_unsupported"] == 3


def test_fault_log_commands_with_afl():
    unit = make_unit(get_preset("qemu72-legacy").with_(afl=1))
    unit.mmio_write(GCMD, 4, 1 << 29)  # SFL: one-shot, FLS stays set
    assert gsts(unit) == 1 << 29
    unit.mmio_write(GCMD, 4, 1 << 28)  # EAFL: persistent; SFL not rewritten
    assert gsts(unit) == (1 << 29) | (1 << 28)
    unit.mmio_write(GCMD, 4, 0)
    assert gsts(unit) == 1 << 29
