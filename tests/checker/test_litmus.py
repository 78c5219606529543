"""Running scenario files: verdicts against expectations, the CLI's exit status and last line,
saved counterexamples that replay."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtdsim.checker.litmus import Options, collect, run_paths
from vtdsim.cli.main import _register, cli
from vtdsim.errors import BadInput

LITMUS = Path(__file__).resolve().parents[2] / "litmus"
FAST = ["unmap_free_race_noflush.toml", "flush_submitted_without_wait.toml"]


@pytest.fixture
def folder(tmp_path):
    for name in FAST:
        shutil.copy(LITMUS / name, tmp_path / name)
    return tmp_path


def test_every_library_scenario_parses_and_states_expectations():
    files = collect([LITMUS])
    assert len(files) >= 8
    from vtdsim.checker.scenario import load
    assert all(load(f).expect for f in files)


def test_run_paths_counts_verdicts(folder):
    lines: list[str] = []
    good, bad = run_paths([folder], Options(), lines.append)
    assert (good, bad) == (8, 0)
    assert lines[-1] == "verdicts: 8 as expected, 0 unexpected"


def test_a_wrong_expectation_is_unexpected(folder):
    path = folder / FAST[0]
    path.write_text(path.read_text().replace('dma_after_free = "violated"',
                                             'dma_after_free = "holds"'))
    lines: list[str] = []
    _, bad = run_paths([path], Options(), lines.append)
    assert bad == 1
    assert "UNEXPECTED dma_after_free: violated (expected holds)" in "\n".join(lines)


def test_missing_path_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no such scenario"):
        collect([tmp_path / "nope.toml"])


def test_cli_exit_status_and_replay(folder, tmp_path):
    _register()
    runner = CliRunner()
    saved = tmp_path / "cex"
    ok = runner.invoke(cli, ["check", str(folder / FAST[0]), "--save-counterexample",
                             str(saved)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip().splitlines()[-1] == "verdicts: 4 as expected, 0 unexpected"
    schedule = saved / "unmap_free_race_noflush.dma_after_free.json"
    again = runner.invoke(cli, ["check", str(folder / FAST[0]), "--replay", str(schedule)])
    assert again.exit_code == 0, again.output
    assert "violates dma_after_free" in again.output
    path = folder / FAST[0]
    path.write_text(path.read_text().replace("[expect]", "[expect]\ntorn_entry = \"violated\""))
    bad = runner.invoke(cli, ["check", str(path)])
    assert bad.exit_code == 1


def test_cli_bad_file_is_one_line(tmp_path):
    _register()
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[[thread]]\nname = "T0"\nops = [{op = "teleport"}]\n')
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:4:" in result.output
