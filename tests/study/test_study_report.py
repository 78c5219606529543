"""vtdsim study: the report's content, its markers, and its determinism."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import THREADS, load, run_study
from vtdsim.study.costs import Costs, Run
from vtdsim.study.evidence import NOT_MODELLED, NOT_PRESENT, SOURCES
from vtdsim.study.recordings import Recordings
from vtdsim.study.runner import SEEDS

SEEDS_DIR = Path(__file__).resolve().parents[3] / "shared" / "seeds"


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.skipif(not SEEDS_DIR.is_dir(), reason=f"{SEEDS_DIR} not present")
def test_every_claim_is_quoted_verbatim_from_its_thread():
    for seed in SEEDS:
        thread = _words((SEEDS_DIR / seed.thread).read_text().replace("\n> ", " "))
        for claim in seed.claims:
            assert _words(claim.quote) in thread, (seed.number, claim.quote)


def test_the_conclusions_rest_on_scenarios_the_seed_runs():
    for seed in SEEDS:
        assert set(seed.rests_on) <= set(seed.scenarios()), seed.number


def test_report_has_each_seed_with_verdicts_chains_and_sourced_figures(study_out):
    report = load(study_out)
    assert [s["number"] for s in report["seeds"]] == list(THREADS)
    for study in report["seeds"]:
        assert study["note"] == "", study["note"]  # the checker reproduced the conclusion's
        assert study["scenarios"] and all(s["verdicts"] for s in study["scenarios"])
        for s in study["scenarios"]:
            if s["word"] in ("violated", "observed"):
                assert s["chains"] and all(" -> " in c["chain"] for c in s["chains"])
        for f in study["figures"] + study["published"]:
            assert f["source"] in SOURCES and f["detail"]
            assert (f["value"] is None) == bool(f["note"])


def test_missing_recordings_are_marked_not_invented(study_out):
    report = load(study_out)
    seed000 = next(s for s in report["seeds"] if s["number"] == "000")
    shared = [f for f in seed000["figures"] if f["label"].startswith("legacy-cm-ats")]
    assert shared and all(f["value"] is None and f["note"] == NOT_PRESENT for f in shared)
    bundled = [f for f in seed000["figures"] if f["label"].startswith("legacy-cm-default")]
    assert bundled and all(f["value"] is not None for f in bundled)
    assert f"[{NOT_PRESENT}]" in (study_out / "stdout.txt").read_text()


def test_published_figure_is_cited():
    seed003 = next(s for s in SEEDS if s.number == "003")
    assert {f.value for f in seed003.published} == {39.3, 51.0}
    assert all(f.source == "cited" for f in seed003.published)


def test_a_vm_platform_run_is_a_number_or_the_marker():
    figure = Costs(50, 0).figure(Run("nvme", "qemu72-legacy-cm", "mainline", "strict",
                                     "emulated"), "exits_per_io", "x", "exits", "")
    assert figure.value is not None or figure.note.startswith(NOT_MODELLED)


def test_recording_figures_name_the_counts(tmp_path):
    rec = Recordings(tmp_path, Path(__file__).resolve().parents[2] / "examples", 0)
    f = rec.exits_per_pair("legacy-cm-default", "x")
    assert f.source == "recording" and f.value == pytest.approx(2.0, abs=0.01)
    assert re.search(r"\d+ / \d+ unmap calls", f.detail)


def _without_timing(html: str) -> str:
    return html[:html.index('<section id="timing"')]


def test_same_seed_same_report_apart_from_timing(study_out, tmp_path):
    again = tmp_path / "again"
    done = run_study(again, Path((study_out / "traces.txt").read_text()))
    assert done.returncode == 0, done.stderr
    first, second = load(study_out), load(again)
    assert first.pop("timing") and second.pop("timing")
    assert first == second
    a, b = ((d / "report.html").read_text() for d in (study_out, again))
    assert _without_timing(a) == _without_timing(b)


def test_unknown_thread_is_one_line_bad_input(tmp_path):
    done = run_study(tmp_path, tmp_path, "--thread", "9")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--thread '9'" in done.stderr


def test_piped_output_is_plain_panels_ending_with_the_summary(study_out):
    text = (study_out / "stdout.txt").read_text()
    assert "\x1b[" not in text  # no colour codes when piped
    for number in THREADS:
        assert f"seed {number}:" in text
    lines = text.splitlines()
    assert lines[-2].startswith(f"study: {len(THREADS)} seed(s) in ")
    assert lines[-1].startswith("wrote ")


def test_a_broken_shared_recording_is_one_line_bad_input(tmp_path):
    import subprocess
    import sys

    broken = tmp_path / "traces" / "linux612-sm-cm-flts"
    broken.mkdir(parents=True)
    (broken / "config.toml").write_text("garbage = [\n")
    done = subprocess.run([sys.executable, "-m", "vtdsim.cli.main", "study", "--quick",
                           "--thread", "003", "--traces", str(tmp_path / "traces")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "config.toml:1:" in done.stderr


def test_brief_prints_the_closing_table_alone(study_out):
    import io

    from rich.console import Console

    from vtdsim.study import terminal

    out = io.StringIO()
    terminal.render(load(study_out), Console(width=120, file=out), brief=True)
    text = out.getvalue()
    assert "the seed threads answered" in text
    assert not any(f"seed {number}:" in text for number in THREADS)  # no panel titles
    for number in THREADS:
        assert re.search(rf"^│ {number} ", text, re.M)
