"""`vtdsim check` output: one line per scenario, detail only for unexpected verdicts, -q/-v/-k/-x,
JSON valid against the schema kept in the repo, JUnit XML, runs identical outside the timing
section, Ctrl-C keeping what was explored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import pytest

from vtdsim.checker import litmus
from vtdsim.checker.litmus_report import TIMING_MARK
from vtdsim.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
LITMUS = ROOT / "litmus"
SCHEMA = ROOT / "src" / "vtdsim" / "data" / "check-report.schema.json"
FAST = ["unmap_free_race_noflush", "flush_submitted_without_wait", "cm_map_without_sync_map"]


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "lib"
    out.mkdir()
    for name in FAST:
        shutil.copy(LITMUS / f"{name}.toml", out / f"{name}.toml")
    return out


def run(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    return stop.value.code, capsys.readouterr().out


def test_one_line_per_scenario_and_no_python_reprs(capsys, folder):
    status, out = run(capsys, "check", folder)
    lines = out.splitlines()
    assert status == 0
    assert [line.split()[1] for line in lines[:3]] == sorted(FAST)
    assert all(line.startswith("ok ") for line in lines[:3])
    assert "spurious_fault=violated" in out and "step |" not in out  # expected: no table
    assert lines[3] == TIMING_MARK and lines[-1] == "verdicts: 11 as expected, 0 unexpected"


def test_unexpected_verdict_prints_chain_and_table_with_vtd_notation(capsys, folder):
    path = folder / "cm_map_without_sync_map.toml"
    path.write_text(path.read_text().replace('spurious_fault = "violated"',
                                             'spurious_fault = "holds"'))
    status, out = run(capsys, "check", path)
    assert status == 1
    assert "UNEXPECTED cm_map_without_sync_map" in out
    assert "spurious_fault=violated!(expected holds)" in out
    assert "-> violates spurious_fault" in out and " step |" in out
    assert "DMAR fault READ (0x6: read from a page without read permission) read " \
           "sid=00:02.0 addr=0x1000" in out
    assert "Fault(" not in out and "<FaultReason" not in out


def test_quiet_verbose_k_and_x(capsys, folder):
    assert run(capsys, "check", folder, "-q")[1].splitlines() == [
        "verdicts: 11 as expected, 0 unexpected"]
    verbose = run(capsys, "check", folder, "-v")[1]
    assert verbose.count("Test ") == 3 and "Property dma_after_free: violated" in verbose
    only = run(capsys, "check", folder, "-k", "noflush")[1]
    assert "unmap_free_race_noflush" in only and "flush_submitted" not in only
    for name in FAST:
        path = folder / f"{name}.toml"
        path.write_text(path.read_text().replace('deadlock_free = "holds"',
                                                 'deadlock_free = "violated"'))
    status, first = run(capsys, "check", folder, "-x")
    assert status == 1 and first.count("UNEXPECTED ") == 2  # the line and its detail


def test_json_validates_and_two_runs_differ_only_in_timing(capsys, folder, tmp_path):
    outs, reports = [], []
    for k in range(2):
        target = tmp_path / f"r{k}.json"
        outs.append(run(capsys, "check", folder, "--json", target)[1])
        reports.append(json.loads(target.read_text()))
    schema = json.loads(SCHEMA.read_text())
    for report in reports:
        jsonschema.validate(report, schema)
        report.pop("timing")
    assert reports[0] == reports[1]
    before = [out.split(TIMING_MARK)[0] for out in outs]
    assert before[0] == before[1]
    assert outs[0].splitlines()[-1] == outs[1].splitlines()[-1]


def test_junit_has_a_case_per_scenario_and_errors_for_bad_files(capsys, folder, tmp_path):
    (folder / "broken.toml").write_text('name = "broken"\n')
    target = tmp_path / "junit.xml"
    status, _ = run(capsys, "check", folder, "--junit", target)
    suite = ET.parse(target).getroot()
    assert status == 2
    assert suite.get("tests") == "4" and suite.get("errors") == "1"
    error = suite.find("testcase[@name='broken']/error")
    assert "thread: required key missing" in error.get("message")


def test_ctrl_c_prints_what_was_explored(folder):
    class Interrupting(litmus.Progress):
        def tick(self, executions: int) -> None:
            super().tick(executions)
            if executions == 3:
                raise KeyboardInterrupt

    lines: list[str] = []
    report = litmus.run_library([folder], litmus.Options(), lines.append, Interrupting())
    assert report.interrupted == (str(folder / "cm_map_without_sync_map.toml"), 3)
    assert any("interrupted after 3 executions" in line for line in lines)
    assert lines[-1].endswith("interrupted in " + str(folder / "cm_map_without_sync_map.toml"))
