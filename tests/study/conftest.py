"""A small study run shared by the study tests: seeds 000, 001, 003 and 004 (001 for its timed
iommu->lock runs; its eight checker files take ~15 s) with an empty traces folder, so the
shared recordings are marked "not present" and only the bundled one is replayed (about 40 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THREADS = ("000", "001", "003", "004")


def run_study(out: Path, traces: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "vtdsim.cli.main", "study", "--quick", "--out", str(out),
            "--traces", str(traces), "--litmus", str(REPO / "litmus"),
            "--bundled", str(REPO / "examples")]
    for thread in THREADS:
        args += ["--thread", thread]
    return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def study_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    traces = tmp_path_factory.mktemp("no-traces")
    done = run_study(out, traces)
    assert done.returncode == 0, done.stderr
    (out / "stdout.txt").write_text(done.stdout)
    (out / "traces.txt").write_text(str(traces))
    return out


def load(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())
