"""`vtdsim check --workers/--scheduler`: a folder's scenarios as Dask tasks; the report (text,
JSON) equals the serial run's but for the timing section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtdsim.checker.litmus_report import TIMING_MARK
from vtdsim.cli.main import _register, cli

LITMUS = Path(__file__).resolve().parents[2] / "litmus"
FILES = ["unmap_free_race_noflush.toml", "flush_submitted_without_wait.toml",
         "cm_map_with_sync_map.toml"]


@pytest.fixture
def folder(tmp_path):
    for name in FILES:
        shutil.copy(LITMUS / name, tmp_path / name)
    (tmp_path / "broken.toml").write_text('name = "broken"\npreset = 3\n')
    return tmp_path


def _check(args: list[str]) -> tuple[int, str]:
    _register()
    result = CliRunner().invoke(cli, ["check", *args])
    return result.exit_code, result.output


def _untimed(text: str) -> str:
    """The output without its timing section (a block from the mark to the summary line)."""
    lines = text.splitlines()
    start = lines.index(TIMING_MARK)
    return "\n".join(lines[:start] + lines[-1:])


def _json(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("timing", None)
    for scenario in data["scenarios"]:
        scenario.pop("seconds", None)
    return data


def test_local_cluster_report_equals_the_serial_one(folder, tmp_path):
    pytest.importorskip("distributed")
    code, serial = _check([str(folder), "-v", "--json", str(tmp_path / "s.json")])
    dcode, dask = _check([str(folder), "-v", "--workers", "2",
                          "--json", str(tmp_path / "d.json")])
    assert code == dcode == 2  # the bad file: reported, the others still run
    assert "BAD INPUT" in serial and "violated" in serial
    assert _untimed(dask) == _untimed(serial)
    assert _json(tmp_path / "d.json") == _json(tmp_path / "s.json")


def test_a_scheduler_address_with_workers_is_a_usage_error(folder):
    code, output = _check([str(folder), "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"])
    assert code == 2 and "not with a scheduler address" in output


def test_the_cost_estimate_ranks_a_long_exploration_first_and_a_bad_file_last(folder):
    from vtdsim.checker.litmus import Options, schedule_length

    def cost(path: Path) -> int:
        return schedule_length((str(path), Options()))

    long_one = cost(LITMUS / "seed001_teardown_before_walk_unlocked.toml")
    assert long_one > cost(LITMUS / "unmap_free_race_noflush.toml") > 0
    assert cost(folder / "broken.toml") == 0
