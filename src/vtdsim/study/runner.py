"""Runs the seed studies: every seed's litmus scenarios through the checker, its timed runs
through the simulator, its recordings through replay (in a worker process, ahead of time), and
gathers one report dict - everything the terminal summary, report.html and report.json show.

The report is deterministic for a given ``seed``; wall-clock times live only under
``"timing"``.

Not provided: parallel checker runs (the 2-core machine is shared; one worker replays).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vtdsim.errors import BadInput
from vtdsim.study import seed000, seed001, seed002, seed003, seed004
from vtdsim.study.base import Context, Seed
from vtdsim.study.checks import run_scenarios, verdict_word
from vtdsim.study.costs import Costs
from vtdsim.study.recordings import Recordings

SEEDS: tuple[Seed, ...] = tuple(m.SEED for m in (seed000, seed001, seed002, seed003, seed004))
FORMAT, VERSION = "vtdsim-study", 1
TIMING_NOTE = "wall-clock seconds: the only part that differs between two runs"
BUNDLED = "legacy-cm-default"  # examples/: the recording every checkout has
IOS, QUICK_IOS = 1000, 300


@dataclass(frozen=True)
class Inputs:
    litmus_dir: Path
    traces_dir: Path
    bundled_dir: Path
    seed: int = 0
    quick: bool = False
    numbers: tuple[str, ...] = ()  # seed threads to study; empty: all


def select(numbers: tuple[str, ...]) -> list[Seed]:
    known = {s.number: s for s in SEEDS}
    chosen = []
    for number in numbers:
        key = number.zfill(3)
        if key not in known:
            raise BadInput(f"--thread {number!r}: expected one of {', '.join(known)}")
        chosen.append(known[key])
    return chosen or list(SEEDS)


def steps_for(seeds: list[Seed]) -> int:
    """Progress steps: one per scenario, one per seed's costs, one for the bundled recording."""
    return sum(len(s.scenarios()) + 1 for s in seeds) + 1


def run_study(inputs: Inputs, step: Callable[[str], None] = lambda text: None) -> dict:
    start = time.perf_counter()
    seeds = select(inputs.numbers)
    costs = Costs(QUICK_IOS if inputs.quick else IOS, inputs.seed)
    recordings = Recordings(inputs.traces_dir, inputs.bundled_dir, inputs.seed)
    names = sorted({BUNDLED, *(r for s in seeds for r in s.recordings)})
    with ProcessPoolExecutor(max_workers=1) as pool:
        recordings.prefetch(names, pool)
        # All checker runs first, then the costs: the replays, slower, finish meanwhile.
        checked, checker_s = [], {}
        for seed in seeds:
            results, seconds = run_scenarios(
                inputs.litmus_dir, seed.scenarios(), inputs.seed,
                lambda name, n=seed.number: step(f"{n}: check {name}"))
            checked.append(results)
            checker_s.update(seconds)
        studies = [_one(seed, results, Context(costs, recordings), step)
                   for seed, results in zip(seeds, checked, strict=True)]
        step(f"recording {BUNDLED}")
        bundled = [recordings.exits_per_pair(BUNDLED, "bundled"),
                   recordings.exits_per_pair(BUNDLED, "bundled", "model")]
    return {
        "format": FORMAT, "version": VERSION, "seed": inputs.seed,
        "ios_per_run": costs.ios, "traces_dir": str(inputs.traces_dir),
        "seeds": studies,
        "bundled": {"recording": f"examples/{BUNDLED}",
                    "figures": [f.as_json() for f in bundled]},
        "timing": {"note": TIMING_NOTE, "total_s": round(time.perf_counter() - start, 3),
                   "checker_s": checker_s, "simulate_s": costs.wall,
                   "replay_s": recordings.wall},
    }


def _one(seed: Seed, results: list[dict], ctx: Context, step) -> dict:
    step(f"{seed.number}: costs and recordings")
    words = {r["name"]: verdict_word(r) for r in results}
    for r in results:
        r["side"] = "before" if r["name"] in seed.before else "after"
        r["word"] = words[r["name"]]
    figures = seed.figures(ctx)
    return {
        "number": seed.number, "title": seed.title, "thread": f"shared/seeds/{seed.thread}",
        "question": seed.question,
        "claims": [{"who": c.who, "when": c.when, "quote": c.quote} for c in seed.claims],
        "scenarios": results,
        "figures": [f.as_json() for f in figures],
        "published": [f.as_json() for f in seed.published],
        "conclusion": seed.conclusion, "note": seed.note_on(words, figures),
        "open": seed.open_questions,
    }
