"""`simulate trace DIR`: the recording's calls through the timed engine make exactly the
queue-tail writes the real driver made (strict and caching-mode recordings)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtdsim.cli.main import _register, cli
from vtdsim.simulation import constants
from vtdsim.traces.replay import replay
from vtdsim.traces.timed import simulate_trace

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
EXACT = ["legacy-nocm-strict", "legacy-cm-default", "linux612-legacy-cm"]


@pytest.mark.parametrize("name", EXACT)
def test_trace_tail_writes_per_io_match_the_recording(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} absent")
    recorded = replay(path)
    result = simulate_trace(path, constants.load())
    assert result["ios"] == recorded.calls.unmap_calls
    assert result["iqt_writes"] == _calls_tail_writes(recorded)
    assert result["iqt_writes_per_io"] == round(result["iqt_writes"] / result["ios"], 4)
    assert result["unmap_ns"] > 0


def test_trace_what_if_lazy_cuts_tail_writes():
    path = SHARED / "legacy-nocm-strict"
    if not path.exists():
        pytest.skip(f"{path} absent")
    lazy = simulate_trace(path, constants.load(), policy="lazy")
    assert lazy["domain_type"] == "dma_fq" and lazy["iqt_writes_per_io"] < 0.1


def test_bundled_recording_through_the_cli():
    """The bundled caching-mode recording: the CLI's JSON carries the recording's exact
    queue-tail writes (replay's recorded side is the answer) and is the same for one seed."""
    example = Path(__file__).resolve().parents[2] / "examples" / "legacy-cm-default"
    _register()
    runner = CliRunner()
    runs = [runner.invoke(cli, ["simulate", "trace", str(example), "--json"])
            for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    first, second = (json.loads(r.output) for r in runs)
    first.pop("timing"), second.pop("timing")
    assert first == second
    recorded = replay(example)
    assert first["iqt_writes"] == recorded.qemu.recorded_total
    assert first["ios"] == recorded.calls.unmap_calls


def _calls_tail_writes(recorded) -> int:
    """The queue-tail writes replay counts in the traced part, less the boot's own batches
    that fell into it (6.12's ftrace starts before ``intel_iommu_init``'s attaches): what
    the recorded map/unmap calls made."""
    boot = recorded.boot_cmp.in_trace if recorded.boot_cmp is not None else []
    return recorded.qemu.recorded_total - len(boot)


SEED_003 = {"linux612-sm-cm-flts": "lazy", "linux612-sm-cm-flts-strict": "strict"}


@pytest.mark.parametrize("name", sorted(SEED_003))
def test_seed_003_pair_tail_writes_as_replay_counts_them(name):
    """Seed 003 recorded: the same workload, lazy vs strict, on a first-stage vIOMMU under
    caching mode.  Strict: every unmap call's writes exactly; lazy: replay's lazy rule
    (flush points move with the timer, counts within 5%)."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} absent")
    recorded = replay(path)
    result = simulate_trace(path, constants.load(), platform="nested")
    assert result["profile"] == "linux-6.12" and result["ios"] == recorded.calls.unmap_calls
    expected = _calls_tail_writes(recorded)
    if SEED_003[name] == "strict":
        assert result["domain_type"] == "dma" and result["iqt_writes"] == expected
    else:
        assert result["domain_type"] == "dma_fq"
        assert abs(result["iqt_writes"] - expected) <= 0.05 * expected
    assert result["exits_per_io"] == result["iqt_writes_per_io"]  # each write an exit


def test_trace_on_a_vmm_prices_the_exits():
    """The bundled caching-mode recording on its own VMM (QEMU 7.2, legacy): every queue-tail
    write is an exit; assigned through VFIO each unmap's PSI is also a VFIO unmap with the
    host's invalidation; a side core takes no exit."""
    example = Path(__file__).resolve().parents[2] / "examples" / "legacy-cm-default"
    table = constants.load()
    bare = simulate_trace(example, table)
    emulated = simulate_trace(example, table, platform="emulated")
    shadow = simulate_trace(example, table, platform="shadow")
    side = simulate_trace(example, table, platform="shadow", exits="sidecore")
    assert emulated["iqt_writes"] == shadow["iqt_writes"] == bare["iqt_writes"]
    assert emulated["exits_per_io"] == emulated["iqt_writes_per_io"] > 0
    assert bare["exits_per_io"] == side["exits_per_io"] == 0
    assert shadow["vmm_ns_per_io"] > emulated["vmm_ns_per_io"] > 0
    assert emulated["unmap_ns"] > table.ns("vmexit_user_cycles") > bare["unmap_ns"]
    assert bare["unmap_ns"] < side["unmap_ns"] < shadow["unmap_ns"]


def test_trace_nested_needs_a_first_stage_recording():
    example = Path(__file__).resolve().parents[2] / "examples" / "legacy-cm-default"
    _register()
    out = CliRunner().invoke(cli, ["simulate", "trace", str(example), "--platform", "nested"])
    assert out.exit_code == 2 and "x-flts=on" in out.output and "Traceback" not in out.output


def test_trace_shadow_of_a_first_stage_vmm_is_refused():
    path = SHARED / "linux612-sm-cm-flts-strict"
    if not path.exists():
        pytest.skip(f"{path} absent")
    _register()
    out = CliRunner().invoke(cli, ["simulate", "trace", str(path), "--platform", "shadow"])
    assert out.exit_code == 2 and "x-flts=on" in out.output and "Traceback" not in out.output
