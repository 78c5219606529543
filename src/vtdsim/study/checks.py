"""The checker's side of a seed: its litmus scenarios run through ``checker.litmus`` (exhaustive
DPOR), each verdict with its expectation, and every violation's (and observation's) causal
chain and table exactly as ``vtdsim check -v`` prints them.

Not provided: scenarios of its own - a seed names files of the litmus library.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from vtdsim.checker import litmus
from vtdsim.checker.report import causal_chain, counterexample_table
from vtdsim.errors import BadInput

TABLE_WIDTH = 110


def scenario_paths(litmus_dir: Path, names: list[str]) -> list[Path]:
    """The library's files for ``names``; BadInput naming the first missing one."""
    paths = []
    for name in names:
        path = litmus_dir / f"{name}.toml"
        if not path.is_file():
            raise BadInput("no such litmus scenario (the study names it)", str(path))
        paths.append(path)
    return paths


def run_scenarios(litmus_dir: Path, names: list[str], seed: int,
                  tick: Callable[[str], None] = lambda name: None) -> tuple[list[dict], dict]:
    """Each scenario's verdicts and chains (deterministic), and the seconds each took
    (the timing, kept apart)."""
    opts = litmus.Options(seed=seed, verbosity=0)
    results, seconds = [], {}
    for path in scenario_paths(litmus_dir, names):
        tick(path.stem)
        start = time.perf_counter()
        outcome = litmus.run_scenario(litmus.load(path), opts)
        seconds[path.stem] = round(time.perf_counter() - start, 3)
        results.append(outcome_json(outcome, path))
    return results, seconds


def outcome_json(outcome, path: Path) -> dict:
    res = outcome.result
    chains = [_chain(c, "violates") for c in outcome.counterexamples]
    chains += [_chain(o.example, "shows") for o in outcome.observed.values()
               if o.example is not None]
    return {
        "name": path.stem,
        "file": f"litmus/{path.name}",
        "doc": outcome.scenario.doc or "",
        "status": "unexpected" if outcome.unexpected else "as expected",
        "verdicts": [{"property": v.name, "verdict": v.verdict, "expected": v.wanted,
                      "agrees": v.agrees}
                     for v in outcome.verdicts if v.wanted is not None or not v.agrees],
        "executions": res.executions,
        "exhaustive": res.exhaustive,
        "chains": chains,
        "unexpected": list(outcome.unexpected),
    }


def _chain(cex, verb: str) -> dict:
    return {"property": cex.prop, "kind": "violation" if verb == "violates" else "observation",
            "message": cex.message, "chain": causal_chain(cex, verb),
            "table": counterexample_table(cex, TABLE_WIDTH)}


def verdict_word(scenario: dict) -> str:
    """``violated``/``observed`` if any, else ``holds`` - the scenario in one word."""
    words = {v["verdict"] for v in scenario["verdicts"]}
    for word in ("violated", "observed"):
        if word in words:
            return word
    return "holds"
