"""Seed 004's corruption case as an observation (no_snoop_stale_read): recorded only where
coherency is not promised, printed with its chain, and stated in [expect] as observed/never."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtdsim.checker.litmus import Options, render_outcome, run_scenario
from vtdsim.checker.properties import NO_SNOOP_STALE_READ, OBSERVATIONS
from vtdsim.checker.scenario import load, parse
from vtdsim.errors import BadInput

LITMUS = Path(__file__).resolve().parents[2] / "litmus"
NOOP = LITMUS / "seed004_no_enforce_wbinvd_noop.toml"


@pytest.fixture(scope="module")
def noop():
    return run_scenario(load(NOOP), Options())


def test_stale_read_without_enforcement_is_observed_not_violated(noop):
    assert noop.unexpected == [] and noop.result.exhaustive
    assert noop.result.verdicts()["no_snoop_coherent"] == "holds"
    stale = noop.observed[NO_SNOOP_STALE_READ]
    assert 0 < stale.executions <= noop.result.executions
    assert "=0x1111, last written 0xd0d0" in stale.message


def test_the_observation_comes_with_its_chain(noop):
    chain = [r.chain for r in noop.observed[NO_SNOOP_STALE_READ].example.records if r.key]
    assert chain[0] == "wbinvd" and chain.count("wbinvd") == 2
    assert chain[-2].startswith("dma write 0x1000") and chain[-1].startswith("CPU read")
    text = render_outcome(noop)
    assert "-> shows no_snoop_stale_read" in text
    assert "Observed seed004_no_enforce_wbinvd_noop.no_snoop_stale_read in " in text
    assert "not a violation of a promised property" in text


def test_a_wrong_observation_expectation_is_unexpected():
    sc = load(NOOP)
    sc.expect[NO_SNOOP_STALE_READ] = "never"
    outcome = run_scenario(sc, Options())
    assert outcome.unexpected == ["no_snoop_stale_read: observed (expected never)"]


def test_an_unstated_observation_is_not_unexpected():
    sc = load(NOOP)
    del sc.expect[NO_SNOOP_STALE_READ]
    assert run_scenario(sc, Options()).unexpected == []


def test_where_coherency_is_promised_the_stale_read_is_a_violation_not_an_observation():
    outcome = run_scenario(load(LITMUS / "seed004_no_enforce_dirty_line_written_back.toml"),
                           Options())
    assert outcome.result.verdicts()["no_snoop_coherent"] == "violated"
    assert NO_SNOOP_STALE_READ not in outcome.observed


def test_enforcement_leaves_nothing_to_observe():
    outcome = run_scenario(load(LITMUS / "seed004_enforce_ss_wbinvd_noop.toml"), Options())
    assert outcome.unexpected == [] and outcome.observed == {}
    assert "no_snoop_stale_read: never (expected never)" in outcome.expected


def test_observations_take_observed_or_never_only():
    text = NOOP.read_text().replace('no_snoop_stale_read = "observed"',
                                    'no_snoop_stale_read = "violated"')
    with pytest.raises(BadInput, match="expected 'observed' or 'never'"):
        parse(text, "x.toml")
    assert set(OBSERVATIONS) == {"lazy_exposure", NO_SNOOP_STALE_READ}
