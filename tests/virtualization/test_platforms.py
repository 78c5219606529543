"""Each device kind behind the VMM, on each QEMU version: the guest driver model runs
unchanged, the VMM's exits and notifier work follow QEMU's rules."""

import pytest

from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_map_page, iommu_dma_unmap_page
from vtdsim.driver.iova import IovaDomain
from vtdsim.errors import BadInput
from vtdsim.hardware.descriptors import encode
from vtdsim.simulation.machine import build
from vtdsim.simulation.platform_demo import one_io
from vtdsim.virtualization.backends import Vhost

DEV = "01:00.0"
PHYS = 0x4000_0000


def _attached(platform, vmm="qemu-7.2", profile="linux-6.1", kind=None, ats=False):
    m = build(platform, vmm=vmm, profile=profile, device_iotlb=ats)
    m.device(DEV, kind=kind, ats=ats)
    domain = m.guest.attach([DEV])
    return m, IommuDmaCookie(m.guest.driver, domain, IovaDomain(ncpus=2), ncpus=2)


@pytest.mark.parametrize("vmm", ["qemu-7.2", "qemu-10.0"])
@pytest.mark.parametrize("platform", ["emulated", "shadow", "nested"])
def test_one_strict_io_reaches_the_buffer_and_the_stale_retry_is_blocked(platform, vmm):
    counts, done, stale, iova, phys, _, exits = one_io(platform, "linux-6.1", vmm, seed=3)
    assert [e.descriptors for e in exits] == [2] * counts["exits"]  # caller's + wait
    assert done and done.hpa == phys
    assert not stale
    # every guest queue-tail write is one exit, processed whole inside it
    assert counts["exits"] == counts["guest_iqt_writes"]
    assert counts["exit_descriptors"] == counts["descriptors"]


def test_shadow_costs_walks_vfio_calls_and_host_invalidations():
    counts, *_ = one_io("shadow", "linux-6.1", "qemu-7.2", seed=0)
    # CM: a PSI on map (walk -> MAP per 4K leaf) and on unmap (walk -> UNMAP)
    assert counts["exits"] == 2 and counts["vmm_walks"] == 2
    assert counts["vfio_map_dma"] == 2 and counts["vfio_unmap_dma"] == 2
    assert counts["vfio_pinned_pages"] == 2
    assert counts["host_invalidations"] >= 2  # the host's strict unmap flushes its IOTLB


def test_nested_forwards_the_guest_piotlb_and_needs_no_map_time_exit():
    counts, *_ = one_io("nested", "linux-6.1", "qemu-10.0", seed=0)
    assert counts["exits"] == 1  # first stage: no map-time flush under CM
    assert counts["iommufd_cache_invalidate"] == 1
    assert counts["vmm_walk_reads"] == 0


def test_emulated_needs_no_listener_work():
    counts, *_ = one_io("emulated", "mainline", "qemu-7.2", seed=0)
    assert counts["vmm_walks"] == 0 and counts["vfio_map_dma"] == 0


@pytest.mark.parametrize("ats", [False, True])
def test_vhost_iotlb_is_invalidated_by_unmap_or_deviotlb_unmap(ats):
    m, cookie = _attached("emulated", kind="vhost", ats=ats)
    vhost = m.backends[DEV]
    assert isinstance(vhost, Vhost)
    iova = m.guest.run(iommu_dma_map_page(cookie, PHYS, 4096))
    assert vhost.translate(iova, write=True) == PHYS
    assert vhost.translate(iova, write=True) == PHYS  # cached
    assert vhost.stats["vhost_iotlb_miss"] == 1
    m.guest.run(iommu_dma_unmap_page(cookie, iova, 4096))
    assert vhost.stats["vhost_invalidations"] >= 1
    assert not vhost.translate(iova, write=True)  # dropped, and QEMU's walk faults
    kind = "vmm_notify_deviotlb_unmap" if ats else "vmm_notify_unmap"
    assert m.vmm.stats[kind] >= 1


def test_a_map_notifier_needs_caching_mode():
    from vtdsim.hardware.memory import PhysicalMemory
    from vtdsim.virtualization import qemu
    from vtdsim.virtualization.vmm import Vmm

    vmm = Vmm(qemu.QEMU_72, qemu.QemuProperties(caching_mode=False), PhysicalMemory())
    with pytest.raises(BadInput, match="caching-mode"):
        vmm.register_notifier(0x100, frozenset({"map", "unmap"}), print)


def test_psi_covering_a_whole_page_directory_entry_unmaps_every_page():
    """The 2018 fix: a PSI whose range covers a whole PDE must UNMAP what it held."""
    m, cookie = _attached("shadow")
    shadow = m.backends[DEV]
    domain = cookie.domain
    iova = 0x4000_0000
    m.guest.run(m.guest.driver.map(domain, iova, PHYS, 1 << 21, 3))
    mapped = len(shadow.dma)
    assert mapped >= 1
    m.guest.run(m.guest.driver.unmap(domain, iova, 1 << 21))
    assert all(not (iova <= b < iova + (1 << 21)) for b in shadow.dma)


def test_dsi_walks_the_whole_domain_and_the_iova_tree_skips_what_is_unchanged():
    m, cookie = _attached("shadow")
    iova = m.guest.run(iommu_dma_map_page(cookie, PHYS, 4096))
    vas = m.vmm.address_spaces[0x100]
    maps = m.backends[DEV].stats["vfio_map_dma"]
    m.guest.run(m.guest.driver.flush_iotlb_all(cookie.domain))  # a DSI
    assert m.vmm.stats["vmm_walk_skipped_same"] >= 1
    assert m.backends[DEV].stats["vfio_map_dma"] == maps  # nothing remapped
    assert vas.iova_tree.find(iova, 4096) is not None


def _submit(m, *descs):
    """Write raw descriptors into the guest's queue and ring the tail (a guest doing it by
    hand), as one exit."""
    unit, q = m.vmm.unit, m.vmm.unit.queue
    tail = q.tail
    for qws in descs:
        for i, qw in enumerate(qws[: q.width // 8]):
            unit.memory.write_qword(q.base + tail + 8 * i, qw)
        tail = (tail + q.width) % q.size
    unit.mmio_write(0x88, 4, tail)  # IQT


@pytest.mark.parametrize("vmm, iqe", [("qemu-7.2", False), ("qemu-10.0", True)])
def test_pasid_iotlb_in_legacy_mode_is_a_noop_on_72_and_iqe_on_100(vmm, iqe):
    m, _ = _attached("emulated", vmm=vmm)
    before = m.vmm.stats["exits"]
    _submit(m, encode("p_iotlb_inv", g=2, did=2, pasid=0))
    assert m.vmm.stats["exits"] == before + 1
    fsts = m.vmm.unit.regs.get("FSTS", "iqe")
    assert bool(fsts) == iqe


def test_device_tlb_invalidation_never_times_out_on_the_vmm():
    """QEMU has no ITE: an endpoint that would never answer an ATS invalidation on
    hardware (bare metal: ITE) is not even asked."""
    m, _ = _attached("emulated", ats=True)
    m.guest.endpoint(DEV).respond_to_invalidations = False
    _submit(m, encode("dev_tlb_inv", sid=0x100, s=0, addr=0))
    assert not m.vmm.unit.regs.get("FSTS", "ite")
    bare = build("bare", unit="qemu72-legacy-cm-ats")
    bare.device(DEV, ats=True)
    bare.guest.attach([DEV])
    bare.guest.endpoint(DEV).respond_to_invalidations = False
    unit, q = bare.guest.unit, bare.guest.unit.queue
    for i, qw in enumerate(encode("dev_tlb_inv", sid=0x100, s=0, addr=0)[:2]):
        unit.memory.write_qword(q.base + q.tail + 8 * i, qw)
    unit.mmio_write(0x88, 4, (q.tail + q.width) % q.size)
    assert unit.regs.get("FSTS", "ite")


def test_kvm_wbinvd_works_only_with_noncoherent_dma():
    m = build("shadow")
    assert not m.guest.platform.wbinvd_works
    m.device(DEV)
    # the host unit has ECAP.SC: enforce_cache_coherency succeeds, WBINVD stays a no-op
    assert m.kvm.noncoherent_dma == 0 and not m.guest.platform.wbinvd_works
    m.kvm.register_noncoherent_dma()
    assert m.guest.platform.wbinvd_works


def test_vfio_registers_noncoherent_dma_when_the_host_unit_cannot_force_snoop():
    """Seed 004: without ECAP.SC enforce_cache_coherency fails, VFIO tells KVM, and the
    guest's WBINVD is executed from then on."""
    m = build("shadow", host_unit="qemu72-legacy")
    m.device(DEV)
    assert m.kvm.noncoherent_dma == 1 and m.guest.platform.wbinvd_works


def test_iqe_leaves_the_head_on_the_bad_descriptor_until_cleared_and_written_again():
    """7.2's ``default:`` case (type 8 unknown): IQE, IQH stays, nothing fetched until the
    guest clears FSTS.IQE and writes IQT again (then the queue resumes after it)."""
    m, _ = _attached("emulated", vmm="qemu-7.2")
    q, unit = m.vmm.unit.queue, m.vmm.unit
    head = q.head
    _submit(m, encode("p_dev_tlb_inv", sid=0x100, pasid=0, s=0, addr=0, g=0))
    assert unit.regs.get("FSTS", "iqe") and q.head == head
    processed = m.vmm.stats["exit_descriptors"]
    unit.mmio_write(0x88, 4, q.tail)  # no clearing: nothing happens
    assert m.vmm.stats["exit_descriptors"] == processed
    unit.mmio_write(0x34, 4, unit.regs["FSTS"])  # FSTS is write-1-to-clear
    q.unit.memory.write_qword(q.base + head, encode("iotlb_inv", g=1)[0])  # fix the slot
    q.unit.memory.write_qword(q.base + head + 8, 0)
    unit.mmio_write(0x88, 4, q.tail)
    assert not unit.regs.get("FSTS", "iqe") and q.head == q.tail


def test_device_selective_context_invalidation_ignores_the_did_on_qemu():
    m, cookie = _attached("emulated")
    iova = m.guest.run(iommu_dma_map_page(cookie, PHYS, 4096))
    assert m.dma_endpoint(DEV).dma_read(iova, 8)  # fills the context cache
    assert 0x100 in m.vmm.unit.context_cache
    _submit(m, encode("cc_inv", g=3, did=99, sid=0x100, fm=0))
    assert 0x100 not in m.vmm.unit.context_cache


def test_a_dsi_walks_the_whole_domain_a_psi_only_its_range():
    """Why Linux keeps strict mode (PSIs) under CM for second-stage domains (29b32839725f):
    the shadowing VMM answers a DSI with a walk of the whole domain."""
    m, cookie = _attached("shadow")
    domain = cookie.domain
    m.guest.run(m.guest.driver.map(domain, 0x100_0000, PHYS, 64 << 12, 3))
    before = m.vmm.stats["vmm_walk_reads"]
    m.guest.run(m.guest.driver.unmap(domain, 0x100_0000, 4096))  # one PSI
    psi_reads = m.vmm.stats["vmm_walk_reads"] - before
    before = m.vmm.stats["vmm_walk_reads"]
    m.guest.run(m.guest.driver.flush_iotlb_all(domain))  # one DSI
    dsi_reads = m.vmm.stats["vmm_walk_reads"] - before
    assert psi_reads <= 3 < 512 + 512 <= dsi_reads  # every entry of the top and leaf tables


@pytest.mark.parametrize("vmm", ["qemu-7.2", "qemu-10.0"])
def test_emulated_ats_device_atc_is_invalidated_through_deviotlb_unmap(vmm):
    m, cookie = _attached("emulated", vmm=vmm, ats=True)
    iova = m.guest.run(iommu_dma_map_page(cookie, PHYS, 4096))
    device = m.dma_endpoint(DEV)
    assert device.dma_read(iova, 8) and len(device.device_tlb) == 1
    m.guest.run(iommu_dma_unmap_page(cookie, iova, 4096))
    assert m.backends[DEV].stats["emulated_atc_invalidations"] == 1
    assert len(device.device_tlb) == 0 and not device.dma_read(iova, 8)


@pytest.mark.parametrize("am, iqe", [(18, False), (19, True)])
def test_psi_address_mask_above_mamv_18_is_iqe(am, iqe):
    """vtd_process_iotlb_desc rejects AM > VTD_MAMV (18), the value QEMU advertises."""
    m, _ = _attached("emulated")
    _submit(m, encode("iotlb_inv", g=3, did=2, addr=0, am=am, ih=0))
    assert bool(m.vmm.unit.regs.get("FSTS", "iqe")) is iqe


@pytest.mark.parametrize("platform", ["emulated", "shadow", "nested"])
def test_a_built_platform_pickles_whole(platform):
    """The checker snapshots worlds by pickling: a VM platform must copy as one graph (the
    copy's queue still belongs to the copy's VMM, its DMA still works)."""
    import pickle

    m, cookie = _attached(platform)
    copy = pickle.loads(pickle.dumps((m, cookie)))
    m2, cookie2 = copy
    assert m2.vmm.unit.queue.vmm is m2.vmm
    iova = m2.guest.run(iommu_dma_map_page(cookie2, PHYS, 4096))
    assert m2.dma_endpoint(DEV).dma_read(iova, 8)
    assert not m.dma_endpoint(DEV).dma_read(iova, 8)  # the original has no such mapping


def test_domain_selective_context_invalidation_is_global_and_traced_as_both():
    m = build("emulated", record=True)
    m.device(DEV)
    m.guest.attach([DEV])
    assert 0x100 in m.vmm.address_spaces
    m.vmm.events.clear()
    _submit(m, encode("cc_inv", g=2, did=2, sid=0, fm=0))
    names = [e[0] for e in m.vmm.events]
    assert names.index("vtd_inv_desc_cc_domain") < names.index("vtd_inv_desc_cc_global")
    assert "vtd_switch_address_space" in names  # every address space switched, as global
