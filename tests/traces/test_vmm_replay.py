"""The model guest on the VMM model against QEMU's own events in a recording."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest

from vtdsim.errors import BadInput
from vtdsim.traces import compare as cmp
from vtdsim.traces import events as ev
from vtdsim.traces import recorded
from vtdsim.traces.recording import Recording
from vtdsim.traces.vmm_compare import collapse_switch_runs, compare_items
from vtdsim.traces.vmm_replay import replay_on_vmm, vmm_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "legacy-cm-default"
SHARED = ROOT.parent / "shared" / "traces"


def test_bundled_example_exits_and_actions_equal_qemus():
    _, comparison, vmm = replay_on_vmm(EXAMPLE)
    assert comparison.ok, comparison.lines()
    assert comparison.model_exits == comparison.recorded_exits == vmm.stats["exits"]
    assert comparison.kinds["vtd_inv_desc_iotlb_pages"] > 5000
    assert comparison.kinds["vtd_inv_desc_cc_device"] == 7
    assert comparison.kinds["switch-run"] >= 3


def _copy_with_qemu_log(tmp_path: Path, edit) -> Path:
    dst = tmp_path / "rec"
    shutil.copytree(EXAMPLE, dst)
    with lzma.open(dst / "qemu.log.xz", "rt") as f:
        lines = f.read().splitlines()
    with lzma.open(dst / "qemu.log.xz", "wt") as f:
        f.write("\n".join(edit(lines)) + "\n")
    return dst


def test_a_changed_decode_in_the_log_is_a_divergence(tmp_path):
    def edit(lines):
        i = max(n for n, line in enumerate(lines) if "iotlb invalidate domain" in line)
        lines[i] = lines[i].replace("mask 0x", "mask 0x1")
        return lines

    _, comparison, _ = replay_on_vmm(_copy_with_qemu_log(tmp_path, edit))
    assert not comparison.ok
    assert "vtd_inv_desc_iotlb_pages" in comparison.divergence


def test_the_unit_qemu_builds_must_be_the_one_the_guest_saw(tmp_path):
    dst = tmp_path / "rec"
    shutil.copytree(EXAMPLE, dst)
    config = (dst / "config.toml").read_text().replace("caching-mode=on", "caching-mode=off")
    (dst / "config.toml").write_text(config)
    with pytest.raises(BadInput, match="the guest saw"):
        replay_on_vmm(dst)


def test_vmm_version_and_properties_from_the_config():
    version, props = vmm_of(Recording(EXAMPLE))
    assert version.name == "qemu-7.2" and props.caching_mode and not props.scalable_mode


def test_switch_runs_compare_in_any_order():
    a = [("vtd_switch_address_space", 8, False), ("vtd_switch_address_space", 0, False)]
    assert list(collapse_switch_runs(a)) == list(collapse_switch_runs(a[::-1]))
    assert compare_items(a, iter(a[::-1])).ok


@pytest.mark.skipif(not (SHARED / "sm-nocm-lazy").exists(), reason="shared recordings absent")
def test_scalable_recording_noop_pasid_cache_descriptor_is_a_head_only():
    _, comparison, vmm = replay_on_vmm(SHARED / "sm-nocm-lazy")
    assert comparison.ok, comparison.lines()
    assert vmm.stats["vmm_noop_type7"] == 1


def _exit(did: int) -> list[tuple]:
    return [("vtd_inv_qi_tail", 0), ("vtd_inv_qi_head", 0),
            ("vtd_inv_desc", "iotlb", 0x20 | did << 16, 0), ("vtd_inv_desc_iotlb_domain", did)]


def test_lazy_rule_allows_a_flush_timing_boundary_only():
    recorded = [*_exit(2) * 20, ("vtd_dmar_enable", False)]
    one_more = _exit(2) * 21
    assert compare_items(one_more, iter(recorded), lazy=True).ok
    assert not compare_items(one_more, iter(recorded)).ok  # strict recordings: exact
    other_did = [*_exit(2) * 19, *_exit(3)]
    result = compare_items(other_did, iter(recorded), lazy=True)
    assert not result.ok and not result.at_exit_boundary


@pytest.mark.skipif(not (SHARED / "linux612-sm-cm-flts-strict").exists(),
                    reason="shared recordings absent")
def test_qemu100_xflts_recording_pasid_iotlb_processed_pasid_cache_silent():
    """QEMU 10.0.2 with x-flts: PASID-IOTLB descriptors are decoded (``p-iotlb``), the
    PASID-cache ones fetched silently; a mainline guest stands for 6.12 on this path."""
    _, comparison, vmm = replay_on_vmm(SHARED / "linux612-sm-cm-flts-strict", "mainline")
    assert vmm.version.name == "qemu-10.0"
    assert comparison.ok, comparison.lines()
    assert comparison.model_exits == comparison.recorded_exits
    assert vmm.stats["vmm_noop_type7"] > 0 and vmm.stats["desc:p_iotlb_inv"] == 0
    assert vmm.unit.stats["desc:p_iotlb_inv"] > 0


def test_cli_replay_with_vmm_prints_the_comparison_and_agrees():
    from click.testing import CliRunner

    from vtdsim.cli.main import _register, cli

    _register()
    res = CliRunner().invoke(cli, ["replay", str(EXAMPLE), "--vmm"])
    assert res.exit_code == 0, res.output
    assert "VMM model vs QEMU events: 41613/41613 items equal" in res.output
    assert "exits: model 5943, QEMU 5943" in res.output


def test_the_recorded_workload_with_its_device_assigned_through_vfio():
    """The same QEMU events (listeners add no trace), and the shadow's cost: every guest PSI
    a walk, every 4 KiB leaf a VFIO ioctl, every UNMAP a strict host invalidation."""
    _, comparison, vmm = replay_on_vmm(EXAMPLE, assign=True)
    assert comparison.ok, comparison.lines()
    (vfio,) = vmm.backends
    assert vmm.stats["vmm_walks"] >= comparison.kinds["vtd_inv_desc_iotlb_pages"]
    assert vfio.stats["vfio_map_dma"] > comparison.kinds["vtd_inv_desc_iotlb_pages"]
    assert vfio.host.unit.stats["desc:iotlb_inv"] >= vfio.stats["vfio_unmap_dma"] - 10
    # what VFIO still maps is what QEMU's iova_tree holds: the guest's live mappings
    assert len(vfio.dma) == len(vfio.vas.iova_tree) > 0


# -- tied timestamps: the model's exits compared in QEMU's order ------------------------------
def _psi_exit(addr: int) -> list[tuple]:
    """One exit of the VMM model: a PSI at ``addr`` and its wait."""
    return [("vtd_inv_qi_tail", 0), ("vtd_inv_qi_head", 0),
            ("vtd_inv_desc", "iotlb", 0x700F2, addr), ("vtd_inv_desc_iotlb_pages", 7, addr, 0, 0),
            ("vtd_inv_qi_head", 0), ("vtd_inv_desc", "wait", 0x25, 0x1000),
            ("vtd_inv_desc_wait_sw", 0x1000, 2)]


def _guest_line(cpu: int, ts_us: int, addr: int) -> ev.QiSubmit:
    return ev.QiSubmit(1, "<idle>", 0, cpu, ts_us, ev.HARDIRQ, True, "iotlb_inv", "dmar0",
                       0x700F2, addr, 0, 0)


def _qemu_batch(line: int, addr: int) -> cmp.QemuBatch:
    return cmp.qemu_batch(line, (("iotlb", 0x700F2, addr), ("wait", 0x25, 0x1000)))


def _exit_orders(qemu_addrs: tuple[int, ...]) -> tuple[list, int]:
    """CPU0 and CPU1 print a PSI each at one timestamp (CPU0 first: ftrace's tie order), a
    later line of CPU0 closes the group; the model made its IQT writes 0, 1, 2 in the trace's
    order; QEMU's log has the batches of ``qemu_addrs`` in that order.  What the recorded side
    reports: the model's exits in QEMU's order per reordered group, and the tie groups."""
    addrs = (0xA000, 0xC000, 0xB000)
    lines = [_guest_line(0, 100, addrs[0]), _guest_line(1, 100, addrs[1]),
             _guest_line(0, 101, addrs[2])]
    batches = [_qemu_batch(10 * (i + 1), addr) for i, addr in enumerate(qemu_addrs)]
    side = recorded._RecordedSide(iter(lines), cmp.QEMU72_SILENT, iter(batches))
    for write, addr in enumerate(addrs):
        side.push_model(recorded.model_batch(("hand-made", (("iotlb_inv", 0x700F2, addr, 0, 0),))),
                        write)
    found = side.finish()
    assert found.guest.matched == 3 and found.misfits == 0
    return found.exit_orders, found.tie_groups


def test_tied_lines_give_the_model_exits_in_qemus_order():
    assert _exit_orders((0xC000, 0xA000, 0xB000)) == ([(1, 0)], 1)
    assert _exit_orders((0xA000, 0xC000, 0xB000)) == ([], 0)  # QEMU in the trace's order


def test_vmm_exits_of_a_tied_group_compare_in_qemus_order():
    boot = [("vtd_dmar_enable", True), ("vtd_switch_address_space", 8, True)]
    model = boot + _psi_exit(0xA000) + _psi_exit(0xC000) + _psi_exit(0xB000)
    qemu = boot + _psi_exit(0xC000) + _psi_exit(0xA000) + _psi_exit(0xB000)
    in_trace_order = compare_items(model, iter(qemu))
    assert not in_trace_order.ok and "0xa000" not in in_trace_order.divergence
    assert in_trace_order.matched == 4  # up to the first exit's descriptor
    result = compare_items(model, iter(qemu), exit_orders=[(1, 0)])
    assert result.ok and result.matched == result.compared == 2 + 3 * 7
    assert result.reordered == 1 and "QEMU's order" in result.lines()[-1]
    # a group whose last exit is the model's last
    assert compare_items(model, iter(boot + _psi_exit(0xA000) + _psi_exit(0xB000)
                                      + _psi_exit(0xC000)), exit_orders=[(0, 2, 1)]).ok


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "legacy-cm-ats-par").exists(), reason="shared recordings absent")
def test_parallel_recording_vmm_events_equal_qemus_item_by_item():
    result, comparison, _ = replay_on_vmm(SHARED / "legacy-cm-ats-par")
    assert comparison.ok, comparison.lines()
    assert comparison.model_exits == comparison.recorded_exits == 107_457
    assert comparison.reordered == result.tie_groups == 53
