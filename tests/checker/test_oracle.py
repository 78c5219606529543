"""The checker's dma_after_free against a simple oracle (oracle.py) on every execution of
every litmus file without lazy mode (whose accepted exposure the oracle does not model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from oracle import bad_dmas, initial_events

from vtdsim.checker import boot
from vtdsim.checker.explore import explore
from vtdsim.checker.scenario import load

LITMUS = Path(__file__).resolve().parents[2] / "litmus"
FILES = sorted(p for p in LITMUS.glob("*.toml")
               if load(p).policy == "strict" and "context_flip_pri" not in p.read_text()
               and all(d.type != "dma_fq" for d in load(p).domains))  # lazy by domain type


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_dma_after_free_agrees_with_the_oracle_on_every_execution(path):
    sc = load(path)
    model = boot.build_model(sc)
    start = initial_events(sc, model.template.pages)
    disagreements = []

    def compare(world) -> None:
        oracle = bool(bad_dmas(start + world.monitor.events))
        checker = any(v.prop == "dma_after_free" for v in world.violations())
        if oracle != checker:
            disagreements.append((world.schedule, oracle, checker))

    explore(model, "dpor", observe=compare, max_executions=400)
    assert disagreements == []
