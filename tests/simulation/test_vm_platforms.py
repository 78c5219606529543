"""The vIOMMU platforms of the timed simulator: the guest boots through the machine builder,
every queue-tail write is a VM exit priced with the VMM's counted work, the device's DMA is
translated by the unit that carries it (the host's for an assigned device)."""

import pytest

from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate

TABLE = constants.load()
NIC = {"ring": 128, "rx_buffers": "map"}  # one map/unmap per packet: per-I/O exit counts


def _nic(ios=600, table=TABLE, **mode):
    mode.setdefault("profile", "linux-6.12")
    return simulate("nic-rx", Mode(ios=ios, **mode), make_params("nic-rx", **NIC), table)


def test_nested_strict_unmap_is_an_exit_with_a_forwarded_invalidation():
    """A first-stage guest (x-flts, caching mode): no map-time flush, each strict unmap one
    exit (PASID-IOTLB + wait), QEMU forwarding one iommufd invalidation the host performs."""
    strict = _nic(platform="nested", policy="strict")
    exit_ns = TABLE.ns("vmexit_user_cycles")
    vmm_ns = (2 * TABLE["vmm_descriptor_ns"] + TABLE["iommufd_call_ns"]
              + TABLE["mmio_write_ns"] + 2 * TABLE["qi_descriptor_ns"])
    assert strict["domain_type"] == "dma"
    assert strict["exits_per_io"] == strict["iqt_writes_per_io"] == 1.0
    assert strict["vmm_ns_per_io"] == pytest.approx(vmm_ns)
    assert strict["unmap_ns"] >= exit_ns + vmm_ns
    assert strict["map_ns"] < TABLE.ns("vmexit_user_cycles")  # no exit at map time


def test_nested_lazy_batches_exits_and_walks_two_dimensions():
    """6.12 lets a first-stage default domain be lazy under caching mode (seed 003): the
    flush queue turns one exit per I/O into one per batch; the host walks the guest's first
    stage nested over its second stage: under cached entries (spec 6.2.5) a nested miss reads
    the FS PTE and the SS leaf of its GPA where bare metal's reads its one SS PTE."""
    lazy = _nic(platform="nested", policy="lazy", ios=1200)
    bare = _nic(policy="lazy", ios=1200)
    assert lazy["domain_type"] == "dma_fq"
    assert 0 < lazy["exits_per_io"] < 0.05

    def per_miss(r):
        return r["translation_reads_per_4k"] / r["iotlb_misses_per_4k"]

    assert 2.0 <= per_miss(lazy) < 2.2 and 1.0 <= per_miss(bare) < 1.1


def test_shadow_maps_exit_too_and_pay_vfio():
    """A second-stage guest under caching mode flushes at map time (PSI): the shadow's MAP
    is a VFIO call; emulated has the same exits without VFIO."""
    shadow = _nic(platform="shadow", policy="strict")
    emulated = _nic(platform="emulated", policy="strict")
    assert shadow["exits_per_io"] == emulated["exits_per_io"] == 2.0
    assert shadow["map_ns"] >= TABLE.ns("vmexit_user_cycles") + TABLE["vfio_call_ns"]
    assert shadow["vmm_ns_per_io"] - emulated["vmm_ns_per_io"] >= 2 * TABLE["vfio_call_ns"]


def test_sidecore_takes_no_exit_but_waits_for_the_vmm():
    trap = _nic(platform="nested", policy="strict")
    side = _nic(platform="nested", policy="strict", exits="sidecore")
    assert side["exits_per_io"] == 0 and side["vmm_ns_per_io"] == trap["vmm_ns_per_io"]
    assert side["unmap_ns"] >= side["vmm_ns_per_io"] + TABLE["sidecore_detect_ns"]
    assert side["unmap_ns"] < trap["unmap_ns"]


def test_vm_platform_runs_are_deterministic():
    a, b = (_nic(platform="shadow", policy="lazy", seed=5) for _ in range(2))
    a.pop("timing"), b.pop("timing")
    assert a == b


def test_nvme_and_window_run_on_an_assigned_device():
    nvme = simulate("nvme", Mode(ios=200, platform="nested", profile="linux-6.12"),
                    make_params("nvme", qd=4), TABLE)
    window = simulate("dma-window", Mode(ios=300, platform="shadow", profile="linux-6.12"),
                      make_params("dma-window", window=1 << 20), TABLE)
    assert nvme["iops"] > 0 and nvme["exits_per_io"] == 1.0
    assert window["dma_latency_penalty_ns"] > 0


# Seed 003 (Tina Zhang, 257ec2907419): iperf receive on a first-stage vIOMMU with caching
# mode, Sapphire Rapids, 100 GbE: ~51 Gbit/s lazy vs ~39.3 forced strict = 1.30.  A check
# only: no constant was set from it.  Constants fixed (and committed) before it was measured:
# the receive-stack ones before the page-pool workload first ran, vmexit_user_cycles from
# viommu-and-costs.md 10.4's guest qi_submit_sync (data/constants.toml says how), and the ACK
# mechanism (one per NAPI poll and read, tcp_cleanup_rbuf) before the ratio was run.  The model
# gives ~1.37 with mlx5's page pool (data pages recycled, the ACKs' TX unmaps the only strict
# invalidations), far more with a dma_map per receive buffer and 1.0 with a premapped
# hugepage pool (README "Seed 003 under the simulator").
PUBLISHED_003 = 51 / 39.3


def _ratio_003(ios=6000, iova_pages="4k", **params) -> float:
    runs = {policy: simulate("nic-rx", Mode(ios=ios, platform="nested", profile="linux-6.12",
                                            policy=policy, iova_pages=iova_pages),
                             make_params("nic-rx", **params), TABLE)
            for policy in ("lazy", "strict")}
    return runs["lazy"]["gbps"] / runs["strict"]["gbps"]


def test_seed_003_bounds_bracket_the_published_ratio():
    """Per-packet maps make strict far worse than lazy, a premapped pool makes them equal;
    the page pool (data pages recycled, ACK unmaps only) lies between, as 1.30 does."""
    per_packet = _ratio_003(3000, rx_buffers="map")
    premapped = _ratio_003(3000, "2m", rx_buffers="map")
    pool = _ratio_003()
    assert premapped == pytest.approx(1.0)
    assert per_packet > 10 * PUBLISHED_003
    assert premapped < PUBLISHED_003 < pool < per_packet / 5


def test_seed_003_ratio_within_ten_percent_of_published():
    assert _ratio_003() == pytest.approx(PUBLISHED_003, rel=0.10)


def test_passthrough_guest_of_an_assigned_device_has_guest_ram_mapped():
    """An identity domain in the guest: QEMU disables the device's IOMMU region, VFIO maps
    guest RAM 1:1 and stops listening - the whole-space UNMAP of enabling DMAR must not
    take that mapping away (it did: every DMA faulted)."""
    pt = _nic(platform="shadow", policy="passthrough")
    assert pt["domain_type"] == "identity" and pt["exits_per_io"] == 0
    assert pt["gbps"] == _nic(policy="off")["gbps"]


def test_ats_device_on_a_vmm_gets_device_iotlb_and_its_invalidations():
    """``--ats`` on a VM: QEMU offers device-iotlb=on, so the guest enables ATS and a strict
    unmap adds a device-TLB invalidation to the exit."""
    plain = _nic(platform="emulated", policy="strict")
    ats = _nic(platform="emulated", policy="strict", ats=True)
    assert ats["ats"] and ats["exits_per_io"] == plain["exits_per_io"]
    assert ats["descriptors_per_io"] == plain["descriptors_per_io"] + 1
