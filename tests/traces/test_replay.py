"""`vtdsim replay`: the bundled recording agrees exactly; every shared recording agrees (exactly
for strict and caching-mode ones, by the lazy rule otherwise); a changed descriptor is found
and reported as the first divergence; the report is deterministic; the QEMU-side pieces
(batches, trace-start alignment, boot classification) on hand-made input."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtdsim.cli.main import _register, cli
from vtdsim.errors import BadInput
from vtdsim.traces import compare as cmp
from vtdsim.traces import events as ev
from vtdsim.traces.qemu_log import silent_kinds
from vtdsim.traces.recording import Recording
from vtdsim.traces.replay import (
    FQ_TIMER_TICKS,
    LAZY_TOLERANCE,
    TICK_NS,
    read_setup,
    recording_profile,
    replay,
    skip_boot_mappings,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "legacy-cm-default"
TRACES = ROOT.parent / "shared" / "traces"
# name: (lazy, DID of the traced device, recorded D, recorded T)
EXPECTED = {
    "legacy-cm-ats": (False, 7, 72346 + 36172 + 18, 108518 + 19),
    "legacy-cm-default": (False, 5, 5942, 5943),
    "legacy-nocm-ats-lazy": (True, 7, None, None),
    "legacy-nocm-lazy": (True, 5, None, None),
    "legacy-nocm-strict": (False, 5, 2958 + 2, 2958 + 3),
    "sm-nocm-lazy": (True, 5, None, None),
    # parallel4.sh: both vCPUs map and unmap at once
    "legacy-nocm-par-strict": (False, 5, 6416, 6417),
    "sm-nocm-par-lazy": (True, 5, None, None),
    "legacy-cm-ats-par": (False, 7, 107456, 107457),
    # Linux 6.12 under QEMU 10.0: the trace holds the boot's work (no QEMU boot part but the
    # IQT=0 write); ATS batches IOTLB PSI + device-TLB in one IQT write (D > T).
    "linux612-legacy-cm": (False, 5, 6708, 6709),
    "linux612-legacy-cm-ats": (False, 7, 133880, 89261),
    "linux612-sm-cm-flts-strict": (False, 5, 3373, 3374),
    "linux612-legacy-nocm-lazy": (True, 5, None, None),
    "linux612-sm-nocm-lazy": (True, 5, None, None),
    "linux612-sm-cm-flts": (True, 5, None, None),
}
SHARED = sorted(EXPECTED)


def run_cli(*args: str):
    _register()
    return CliRunner().invoke(cli, ["replay", *args])


def report(path, **kwargs):
    result = replay(path, **kwargs)
    return result, *cmp.report(result, LAZY_TOLERANCE)


def test_bundled_example_agrees_exactly():
    res = run_cli(str(EXAMPLE))
    lines = res.output.splitlines()
    assert res.exit_code == 0, res.output
    assert lines[-1] == "agreement: 5942/5942 descriptors, 5943/5943 queue-tail writes"
    assert "no divergence" in lines
    assert "traced device 00:03.0 (dmesg: pci function): group 3, DMA domain, DID 5, ATS off" \
        in lines
    assert any(line.startswith("not modelled, excluded from D and T: interrupt remapping")
               for line in lines)


def _tamper(lines: list[str], nth: int) -> tuple[int, list[str]]:
    """Change the address of the ``nth`` iotlb_inv qi_submit line (the low bits, so AM moves);
    return its index among the non-iec submissions (1-based) and the new line's words."""
    seen = 0
    for i, line in enumerate(lines):
        if "qi_submit: iotlb_inv" in line:
            seen += 1
            if seen == nth:
                words = line.split()
                words[-3] = hex(int(words[-3], 16) ^ 0x1)
                lines[i] = " ".join(words)
                return seen, words[-6:]
    raise AssertionError("not enough iotlb_inv lines")


def _tampered_copy(tmp_path: Path, log: str, tamper) -> tuple[Path, object]:
    """The bundled example copied to ``tmp_path`` with ``log`` ("guest.log" or "qemu.log")
    decompressed and its lines changed in place by ``tamper``; the copy, and what ``tamper``
    returned."""
    copy = tmp_path / "rec"
    copy.mkdir()
    for name in ("config.toml", "guest.log.xz", "qemu.log.xz"):
        if name != f"{log}.xz":
            shutil.copy(EXAMPLE / name, copy / name)
    with lzma.open(EXAMPLE / f"{log}.xz", "rt") as stream:
        lines = stream.read().splitlines()
    changed = tamper(lines)
    (copy / log).write_text("\n".join(lines) + "\n")
    return copy, changed


def test_changed_descriptor_is_the_first_divergence(tmp_path):
    """One PSI changed in the guest trace: the guest stream diverges right there, the QEMU
    pairing notices the guest line no longer fits its queue-tail write, exit status 1."""
    copy, (index, words) = _tampered_copy(tmp_path, "guest.log", lambda lines: _tamper(lines, 200))
    res = run_cli(str(copy))
    out = res.output
    assert res.exit_code == 1, out
    assert (f"first divergence in the guest's qi_submit stream (traced part), item {index}:"
            in out)
    label, _, *qws = words
    assert f"> recorded  {label} {' '.join(qws)}  [guest trace line" in out
    assert "1 guest submissions have no matching QEMU queue-tail write" in out
    assert out.splitlines()[-1] == ("agreement: 5942/5942 descriptors, "
                                    "5943/5943 queue-tail writes")


def test_malformed_qemu_line_is_one_line_error(tmp_path):
    """A bad line in QEMU's log, read by the recorded side's worker, stops the replay with
    the line's file:line, not a traceback."""
    def corrupt(lines: list[str]) -> tuple[int, str]:
        n = [i for i, line in enumerate(lines) if line.startswith("vtd_inv_desc ")][5000]
        lines[n] = lines[n].replace("high 0x", "high 0xZZ")
        return n + 1, lines[n].split(" ", 1)[1]

    copy, (lineno, text) = _tampered_copy(tmp_path, "qemu.log", corrupt)
    res = run_cli(str(copy))
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"vtdsim: error: {copy / 'qemu.log'}:{lineno}: vtd_inv_desc text does not match "
        f"'invalidate desc type %s high 0x%x low 0x%x': {text!r}"]


def test_report_is_deterministic():
    first = report(EXAMPLE, seed=3)[1]
    assert report(EXAMPLE, seed=3)[1] == first


@pytest.mark.parametrize("name", SHARED)
def test_shared_recording_agrees(name):
    path = TRACES / name
    if not path.is_dir():
        pytest.skip(f"recording {name} not present under {TRACES}")
    result, lines, verdict = report(path)
    lazy, did, d_rec, t_rec = EXPECTED[name]
    assert verdict.ok, "\n".join(lines)
    assert result.profile == ("linux-6.12" if name.startswith("linux612-") else "linux-6.1")
    assert verdict.lazy == lazy
    assert f"DID {did}," in next(line for line in lines if line.startswith("traced device"))
    if not lazy:
        assert (verdict.desc_recorded, verdict.tail_recorded) == (d_rec, t_rec)
        assert result.guest.exact and result.qemu.exact
    else:
        # Every flush compared is a DSI (+ a full device-TLB flush with ATS), the same words.
        assert result.guest.kinds_agree() and result.qemu.kinds_agree()
    assert result.boot_cmp.stream.exact


def test_fq_timer_fires_on_the_fourth_tick():
    # msecs_to_jiffies(10) at HZ=250 is 3 ticks, plus the timer wheel's round-up (the timed
    # simulator's timer; replay waits for the softirq line instead).
    assert (FQ_TIMER_TICKS, TICK_NS) == (4, 4_000_000)


# -- QEMU-side pieces on hand-made input -------------------------------------------------------
def _qemu(*events):
    return list(cmp.qemu_batches(events))


def test_qemu_batches_group_by_tail_write_and_keep_silent_slots():
    batches = _qemu(ev.QemuQiTail(1, 0),
                    ev.QemuQiTail(2, 2), ev.QemuQiHead(3, 0), ev.QemuInvDesc(4, "iotlb", 0xD2, 0),
                    ev.QemuQiHead(5, 1), ev.QemuInvDesc(6, "wait", 0x25, 0x1000),
                    ev.QemuQiTail(7, 4), ev.QemuQiHead(8, 2), ev.QemuQiHead(9, 3),
                    ev.QemuInvDesc(10, "wait", 0x25, 0x1008))
    assert [b.line for b in batches] == [1, 2, 7]
    assert batches[0].slots == () and batches[0].waits == 0
    assert batches[1].view == ((0xD2, 0),) and batches[1].waits == 1
    assert batches[2].silent and batches[2].view == (cmp.SILENT,)


def _model(label, qw0, qw1=0):
    return cmp.ModelBatch((cmp.ModelDesc(label, (qw0, qw1, 0, 0), "test"),), "test")


def _batch(line, *slots):
    return cmp.qemu_batch(line, (*slots, ("wait", 0x25, 0x1000 + line)))


def test_boot_comparison_classifies_what_the_model_does_not_do():
    iec = _batch(1, ("iec", 0x14, 0))
    cc = _batch(2, ("context-cache", 0x11, 0))
    silent_pc = _batch(3, cmp.SILENT)
    silent_iec = _batch(4, cmp.SILENT)
    iotlb = _batch(5, ("iotlb", 0xD2, 0))
    later = _batch(6, ("iotlb", 0x500F2, 0xFFFF0000))
    model = [_model("cc_inv", 0x11), _model("pc_inv", 0x37), _model("iotlb_inv", 0xD2)]
    boot = cmp.compare_boot(model, [iec, cc, silent_pc, silent_iec, iotlb, later])
    assert boot.stream.exact and boot.stream.matched == 3
    assert (boot.iec_batches, boot.silent_as_iec, boot.pre_trace) == (1, 1, [later])


def test_boot_work_after_the_trace_started_moves_to_the_traced_part():
    # 6.12's trace starts before intel_iommu_init: QEMU's boot part holds less than the
    # model's boot, whose rest is compared with the trace.
    model = [_model("cc_inv", 0x11), _model("iotlb_inv", 0xD2)]
    boot = cmp.compare_boot(model, [_batch(2, ("context-cache", 0x11, 0))])
    assert boot.stream.exact and boot.in_trace == model[1:]


def test_boot_comparison_reports_a_different_descriptor():
    boot = cmp.compare_boot([_model("cc_inv", 0x11)], [_batch(2, ("context-cache", 0x31, 0))])
    assert not boot.stream.exact and boot.in_trace == []


def test_qemu_10_logs_pasid_iotlb_descriptors():
    piotlb = _model("p_iotlb_inv", 0x50026)
    logged = _batch(1, ("p-iotlb", 0x50026, 0))
    assert not cmp.batch_matches(logged, piotlb)  # 7.2: silent
    assert cmp.batch_matches(logged, piotlb, silent_kinds("10.0", "x"))
    assert cmp.batch_matches(_batch(2, cmp.SILENT), _model("pc_inv", 0x37),
                             silent_kinds("10.0", "x"))
    with pytest.raises(BadInput, match="QEMU 9.1: .* known QEMU versions: 7.2, 10.0"):
        silent_kinds("9.1", "config.toml:1")


def _submit(line, label, qw0, qw1=0):
    return ev.QiSubmit(line, "dd", 1, 0, line, ev.TASK, True, label, "dmar0", qw0, qw1, 0, 0)


def test_batched_submissions_fill_one_qemu_batch_slot_by_slot():
    # 6.12 qi_batch: an IOTLB PSI and a device-TLB flush in one IQT write.
    batch = _batch(5, ("iotlb", 0x700F2, 0xFFFF0040), ("device", 0x10000000003, 0xFFFF0000))
    iotlb = _submit(1, "iotlb_inv", 0x700F2, 0xFFFF0040)
    devtlb = _submit(2, "dev_tlb_inv", 0x10000000003, 0xFFFF0000)
    assert cmp.guest_desc_fits(iotlb, batch, 0) and cmp.guest_desc_fits(devtlb, batch, 1)
    assert not cmp.guest_desc_fits(devtlb, batch, 0)
    assert not cmp.guest_desc_fits(devtlb, batch, 2)
    boot, rest = cmp.split_at_trace_start(iter([_batch(1, ("iec", 0x14, 0)), batch]),
                                          [iotlb, devtlb])
    assert [b.line for b in boot] == [1] and [b.line for b in rest] == [5]


def _attached(line, device):
    return ev.AttachDevice(line, "init", 1, 0, line, ev.TASK, False, device)


def _added(line, device):
    return ev.AddDeviceToGroup(line, "init", 1, 0, line, ev.TASK, False, 4, device)


def _map(line, iova):
    return ev.Map(line, "init", 1, 0, line, ev.TASK, False, iova, iova + 0x1000, iova, 0x1000)


def test_boot_direct_mappings_are_not_the_traced_devices_calls():
    grouped = {"0000:00:03.0", "0000:00:1f.0"}
    skipped = [0]
    events = [_added(1, "0000:00:03.0"), _added(2, "0000:00:1f.0"),
              _attached(3, "0000:00:03.0"), _map(4, 0), _attached(5, "0000:00:1f.0"),
              _map(6, 0xFFFFF000)]
    kept = list(skip_boot_mappings(events, grouped, skipped))
    assert [e.line for e in kept] == [1, 2, 3, 5, 6] and skipped == [1]
    # A trace that starts after the boot (6.1's) loses nothing.
    assert len(list(skip_boot_mappings([_map(1, 0), _map(2, 0x1000)], grouped, skipped))) == 2
    # One that starts after some attaches ends its boot at the first map of another task.
    driver = ev.Map(3, "kworker", 12, 1, 3, ev.TASK, False, 0xF000, 0x10000, 0xF000, 0x1000)
    kept = list(skip_boot_mappings([_attached(1, "0000:00:1f.0"), _map(2, 0), driver],
                                   grouped, skipped))
    assert [e.line for e in kept] == [1, 3]


def test_the_recorded_kernel_picks_the_profile(tmp_path):
    copy = tmp_path / "rec"
    shutil.copytree(EXAMPLE, copy)
    assert recording_profile(Recording(copy)) == "linux-6.1"
    config = copy / "config.toml"
    text = config.read_text().splitlines(keepends=True)
    config.write_text("# Linux 6.6.1-amd64 guest under QEMU emulator version 10.0.2 (x)\n"
                      + "".join(text[1:]))
    res = run_cli(str(copy))
    assert res.exit_code != 0
    assert res.output.strip().endswith("no driver profile for Linux 6.6; profiles: linux-6.1, "
                                       "linux-6.12, mainline (pass --profile)")
    assert len(res.output.strip().splitlines()) == 1


def test_trace_start_is_found_by_the_first_guest_submissions():
    first = [ev.QiSubmit(1, "init", 1, 0, 5, ev.TASK, True, "iec_inv", "dmar0", 0x14, 0, 0, 0),
             ev.QiSubmit(2, "dd", 1, 0, 6, ev.TASK, True, "iotlb_inv", "dmar0", 0x500F2,
                         0xFFFFF000, 0, 0)]
    batches = [_batch(1, ("iec", 0x14, 0)), _batch(2, ("iec", 0x14, 0)),
               _batch(3, ("iotlb", 0x500F2, 0xFFFFF000)), _batch(4, ("iec", 0x24, 0))]
    boot, rest = cmp.split_at_trace_start(iter(batches), first)
    assert [b.line for b in boot] == [1]
    assert [b.line for b in rest] == [2, 3, 4]
    assert cmp.split_at_trace_start(iter(batches[:1]), first) is None


# -- which device the trace is about -------------------------------------------------------------
def _without_pci_function_line(lines: list[str]) -> None:
    lines[:] = [line for line in lines if ": pci function " not in line]


def test_traced_device_found_from_qemus_translations(tmp_path):
    """No driver names its device in dmesg: QEMU's log shows which device's DMA went through
    the IOVAs the trace mapped, to the pages it mapped them to."""
    copy, _ = _tampered_copy(tmp_path, "guest.log", _without_pci_function_line)
    res = run_cli(str(copy))
    assert res.exit_code == 0, res.output
    assert ("traced device 00:03.0 (QEMU's log: translates the trace's mappings): group 3"
            in res.output)


def test_traced_device_from_translations_past_the_boots_direct_mappings():
    """linux612-legacy-cm-ats: every group is DMA (caching mode), no driver names its device,
    and the trace opens with the boot's direct mappings (RMRRs into other domains, no DMA
    through them): QEMU's translations of the first mappings after those name 01:00.0."""
    path = TRACES / "linux612-legacy-cm-ats"
    if not path.is_dir():
        pytest.skip(f"recording not present under {TRACES}")
    setup = read_setup(Recording(path))
    assert (setup.traced, setup.traced_how) == (0x100, "QEMU's log: translates the trace's "
                                                "mappings")


def test_unknown_traced_device_is_an_error_listing_the_candidates(tmp_path):
    copy, _ = _tampered_copy(tmp_path, "guest.log", _without_pci_function_line)
    with lzma.open(EXAMPLE / "qemu.log.xz", "rt") as stream:
        kept = [line for line in stream.read().splitlines()
                if not line.startswith("vtd_dmar_translate ")]
    (copy / "qemu.log.xz").unlink()
    (copy / "qemu.log").write_text("\n".join(kept) + "\n")
    res = run_cli(str(copy))
    assert res.exit_code == 2
    message = res.output.strip()
    assert message.startswith(f"vtdsim: error: {copy}: cannot tell which device")
    assert "(devices in DMA groups: 00:00.0, 00:01.0, 00:02.0, 00:03.0, 00:1f.0, 00:1f.2, " \
           "00:1f.3); pass --device BB:DD.F" in message
    assert run_cli(str(copy), "--device", "00:03.0").exit_code == 0
