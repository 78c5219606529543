"""The malformed-input corpus (tests/inputs/bad/): every bad scenario file, saved schedule,
recording config and command line ends in one clear line naming the file (or option) and
exit status 2 - never a traceback, never a silent default.  Each file states the error it
expects in its first line (``# expect: ...``); the command-line cases are in cli.txt."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from vtdsim.checker.scenario import load
from vtdsim.cli.main import main

BAD = Path(__file__).parent / "inputs" / "bad"
ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "litmus" / "unmap_free_race_noflush.toml"
RECORDING = ROOT / "examples" / "legacy-cm-default"


def _expected(path: Path) -> str:
    first = path.read_text(errors="replace").splitlines()[0]
    assert first.startswith(("# expect: ", "// expect: ")), path
    return first.split("expect: ", 1)[1]


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    out = capsys.readouterr()
    return stop.value.code, out.out + out.err


def _one_line_error(capsys, argv: list[str], expected: str, where: str) -> None:
    status, text = _run(capsys, argv)
    assert "Traceback" not in text
    hits = [line for line in text.splitlines() if expected in line]
    assert status == 2, text
    assert len(hits) == 1, text
    assert where in hits[0], text


def test_the_base_scenario_is_valid():
    assert load(BAD / "base_scenario.toml").name == "base"


def test_the_corpus_is_large():
    files = [p for p in BAD.rglob("*") if p.is_file()
             and p.name not in ("base_scenario.toml", "EXPECT.txt")]
    cli = [line for line in (BAD / "cli.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert len(files) - 1 + len(cli) >= 120


@pytest.mark.parametrize("path", sorted((BAD / "scenarios").glob("*.toml")), ids=lambda p: p.stem)
def test_bad_scenario(capsys, path):
    _one_line_error(capsys, ["check", str(path)], _expected(path), str(path))


def test_a_folder_run_reports_each_bad_file_and_goes_on(capsys, tmp_path):
    for name in ("iova_string", "dup_thread", "unknown_op"):
        shutil.copy(BAD / "scenarios" / f"{name}.toml", tmp_path / f"{name}.toml")
    shutil.copy(SCENARIO, tmp_path / SCENARIO.name)
    status, text = _run(capsys, ["check", str(tmp_path)])
    assert status == 2 and "Traceback" not in text
    assert text.count("BAD INPUT") == 3
    assert "ok         unmap_free_race_noflush" in text
    assert text.splitlines()[-1].endswith("3 bad input file(s)")


def _schedule_cases() -> list[tuple[str, str]]:
    lines = (BAD / "schedules" / "EXPECT.txt").read_text().splitlines()
    return [tuple(line.split(" => ")) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize(("name", "expected"), _schedule_cases(), ids=lambda a: a)
def test_bad_schedule(capsys, name, expected):
    path = BAD / "schedules" / name
    _one_line_error(capsys, ["check", str(SCENARIO), "--replay", str(path)], expected, "")


@pytest.mark.parametrize("path", sorted((BAD / "recordings").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_bad_recording_config(capsys, path, tmp_path):
    for name in ("guest.log.xz", "qemu.log.xz"):
        (tmp_path / name).symlink_to(RECORDING / name)
    body = path.read_text().splitlines()[1:]
    if not body or not body[0].startswith("#"):  # the recorded versions line, unless the case
        body.insert(0, (RECORDING / "config.toml").read_text().splitlines()[0])  # is about it
    (tmp_path / "config.toml").write_text("\n".join(body) + "\n")
    _one_line_error(capsys, ["replay", str(tmp_path)], _expected(path), "config.toml")


def _cli_cases() -> list[tuple[str, str]]:
    cases = []
    for line in (BAD / "cli.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            args, expected = line.split(" => ")
            cases.append((args.strip(), expected.strip()))
    return cases


@pytest.mark.parametrize(("args", "expected"), _cli_cases(), ids=lambda a: a[:40])
def test_bad_command_line(capsys, args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in shlex.split(args)]
    _one_line_error(capsys, argv, expected, "")
