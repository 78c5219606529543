"""Seed 001's costs: the timed context-flush runs behind its figures, and the rule that notes a
conclusion its figures do not bear out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vtdsim.study import seed001
from vtdsim.study.base import Context
from vtdsim.study.costs import Costs


@pytest.fixture(scope="module")
def figures():
    return seed001.figures(Context(Costs(300, 0), None))


def _by_label(figures, label):
    return next(f for f in figures if f.label == label)


def test_both_sides_are_model_runs_naming_their_command(figures):
    runs = [f for f in figures if f.source == "model run"]
    assert {f.side for f in runs} == {"before", "after"}
    for f in runs:
        assert f.value is not None and "vtdsim simulate context-flush" in f.detail
        flag = "--flush inside" if f.side == "before" else "--flush outside"
        assert flag in f.detail


def test_the_figures_bear_the_conclusion_out(figures):
    assert seed001.disagrees(figures) == ""
    words = {name: "holds" for name in seed001.SEED.rests_on}
    assert seed001.SEED.note_on(words, figures) == ""


def test_a_contradicting_figure_is_named(figures):
    """Inside made as cheap as outside: the conclusion's premise fails, and the note says so."""
    label = seed001.hold_label("inside", seed001.HEADLINE)
    outside = _by_label(figures, seed001.hold_label("outside", seed001.HEADLINE)).value
    changed = [replace(f, value=outside) if f.label == label else f for f in figures]
    why = seed001.disagrees(changed)
    assert label in why and "not above" in why and "does not grow" in why
    words = {name: "holds" for name in seed001.SEED.rests_on}
    assert "figures do not bear this conclusion out" in seed001.SEED.note_on(words, changed)


def test_a_missing_figure_is_named(figures):
    label = seed001.rate_label("outside")
    assert label in seed001.disagrees([f for f in figures if f.label != label])
