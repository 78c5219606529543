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
EXACT = ["legacy-nocm-strict", "legacy-cm-default"]


@pytest.mark.parametrize("name", EXACT)
def test_trace_tail_writes_per_io_match_the_recording(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} absent")
    recorded = replay(path)
    result = simulate_trace(path, constants.load())
    assert result["ios"] == recorded.calls.unmap_calls
    assert result["iqt_writes"] == recorded.qemu.recorded_total
    assert result["iqt_writes_per_io"] == round(recorded.qemu.recorded_total / result["ios"], 4)
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


def test_trace_other_platform_is_a_one_line_error():
    example = Path(__file__).resolve().parents[2] / "examples" / "legacy-cm-default"
    _register()
    out = CliRunner().invoke(cli, ["simulate", "trace", str(example), "--platform", "shadow"])
    assert out.exit_code == 2 and "virtualization layer" in out.output
