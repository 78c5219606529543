"""Every scenario of the litmus library runs to its expected verdicts (the few taking more
than a few seconds are marked slow; `vtdsim check litmus/` runs them all)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtdsim.checker.litmus import Options, collect, run_scenario
from vtdsim.checker.scenario import load

LITMUS = Path(__file__).resolve().parents[2] / "litmus"
SLOW = {"seed000_unmap_devtlb_linux61", "cm_attach_context_flush",
        "seed000_flush_all_devtlb_mainline", "cm_map_with_sync_map",
        "seed000_flush_all_devtlb_linux61", "seed001_teardown_before_walk_unlocked",
        "seed001_teardown_after_walk_unlocked", "seed002_static_tags_before_context_cm",
        "seed002_rwbf_flush_before_context", "seed002_static_tags_after_context_cm",
        "seed002_rwbf_tags_before_context"}
FILES = collect([LITMUS])


def _param(path: Path):
    marks = [pytest.mark.slow] if path.stem in SLOW else []
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_scenario_meets_its_expectations(path):
    sc = load(path)
    outcome = run_scenario(sc, Options())
    assert outcome.unexpected == [], outcome.unexpected
    assert outcome.result.exhaustive


def test_every_scenario_is_documented_in_the_readme():
    readme = (LITMUS / "README.md").read_text()
    missing = [p.stem for p in FILES if f"`{p.stem}`" not in readme]
    assert missing == []


def test_lazy_scenario_reports_an_exposure_window():
    outcome = run_scenario(load(LITMUS / "seed003_lazy_exposure_legacy.toml"), Options())
    longest, pages = outcome.exposure
    assert pages == 1 and longest > 0


@pytest.mark.slow
def test_two_racing_strict_unmaps_are_exhausted():
    """Issue 10's reach scenario: two CPUs unmapping and freeing adjacent IOVAs of one mainline
    domain, a fill and a DMA per IOVA - exhausted by DPOR (2,592 executions), all hold."""
    sc = load(LITMUS / "reach" / "issue10_p5_two_strict_unmaps_mainline.toml")
    outcome = run_scenario(sc, Options())
    assert outcome.result.exhaustive and outcome.unexpected == []
    assert outcome.result.executions == 2592
