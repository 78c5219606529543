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
from vtdsim.traces import compare as cmp
from vtdsim.traces import events as ev
from vtdsim.traces.replay import FQ_EARLIEST_NS, FQ_TIMER_TICKS, LAZY_TOLERANCE, TICK_NS, replay

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "legacy-cm-default"
TRACES = ROOT.parent / "shared" / "traces"
SHARED = ["legacy-cm-ats", "legacy-cm-default", "legacy-nocm-ats-lazy", "legacy-nocm-lazy",
          "legacy-nocm-strict", "sm-nocm-lazy",
          # parallel4.sh: both vCPUs map and unmap at once
          "legacy-nocm-par-strict", "sm-nocm-par-lazy", "legacy-cm-ats-par"]
# name: (lazy, DID of the traced device, recorded D, recorded T)
EXPECTED = {
    "legacy-cm-ats": (False, 7, 72346 + 36172 + 18, 108518 + 19),
    "legacy-cm-default": (False, 5, 5942, 5943),
    "legacy-nocm-ats-lazy": (True, 7, None, None),
    "legacy-nocm-lazy": (True, 5, None, None),
    "legacy-nocm-strict": (False, 5, 2958 + 2, 2958 + 3),
    "sm-nocm-lazy": (True, 5, None, None),
    "legacy-nocm-par-strict": (False, 5, 6416, 6417),
    "sm-nocm-par-lazy": (True, 5, None, None),
    "legacy-cm-ats-par": (False, 7, 107456, 107457),
}


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
    # msecs_to_jiffies(10) at HZ=250 is 3 ticks, plus the timer wheel's round-up; armed just
    # before a tick, the fourth comes 12 ms later.
    assert (FQ_TIMER_TICKS, TICK_NS, FQ_EARLIEST_NS) == (4, 4_000_000, 12_000_000)


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


def test_boot_comparison_reports_a_missing_descriptor():
    boot = cmp.compare_boot([_model("cc_inv", 0x11), _model("iotlb_inv", 0xD2)],
                            [_batch(2, ("context-cache", 0x11, 0))])
    assert not boot.stream.exact
    assert boot.stream.first.recorded.startswith("(nothing")


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
