"""Counterexamples and summaries for people: a herd7-style table and closing lines.

A counterexample prints as one column per actor and one row per step (herd7 litmus columns,
with the schedule loom never prints), the step number marked ``*`` when the world flagged it
as part of the causal chain, under a one-line causal chain built from those flagged steps.
The summary ends like herd7's output: ``Test``, ``Executions``, exhaustive or bounded, one
verdict per property, ``Observation NAME.PROP Never|Sometimes|Always violating others``,
``Time``.

Not done: colour, HTML, or graph output of happens-before.
"""

from __future__ import annotations

import textwrap

from vtdsim.checker.explore import VIOLATED, Counterexample, Result
from vtdsim.checker.world import StepRecord

MIN_COLUMN = 12
MAX_LINES = 3  # per cell; longer text is cut with an ellipsis
STEP_WIDTH = 5


def causal_chain(cex: Counterexample, verb: str = "violates") -> str:
    """``set-up map(...) -> fill -> clear PTE -> ... -> violates prop`` from the steps the
    world marked as key (``verb`` "shows" for an observation), led by the ``[[setup]]`` ops
    whose stores a key step read (``detail["setup"]``: (index, label) pairs), in set-up
    order."""
    setup = sorted({pair for r in cex.records if r.key for pair in r.detail.get("setup", ())})
    links = [label for _, label in setup] + [r.chain for r in cex.records if r.key]
    return " -> ".join([*links, f"{verb} {cex.prop}"])


def counterexample_table(cex: Counterexample, width: int = 120) -> str:
    """The schedule as an aligned plain-text table, at most ``width`` columns wide."""
    columns = _columns(cex.records, width)
    if columns is None:
        return _as_list(cex, width)
    widths = _fit([_natural(cex.records, col, keys) for col, keys in columns], width)
    lines = [_row(" step", [c for c, _ in columns], widths)]
    lines.append("-" * STEP_WIDTH + "".join("-+-" + "-" * w for w in widths))
    for number, record in enumerate(cex.records, 1):
        cells = [_cell(record, keys) if record.actor in keys else "" for _, keys in columns]
        mark = "*" if record.key else " "
        lines += _wrapped_row(f"{mark}{number:>{STEP_WIDTH - 1}}", cells, widths)
    lines.append(f"=> {cex.prop}: {cex.message}")
    return "\n".join(line.rstrip() for line in lines)


def _columns(records: list | tuple, width: int) -> list[tuple[str, set[str]]] | None:
    """One column per actor; when they do not fit, one per actor family (the text before
    ':' - "hw", "dev1"), and None when even those do not fit."""
    actors = list(dict.fromkeys(r.actor for r in records))
    room = width - STEP_WIDTH
    if len(actors) * (MIN_COLUMN + 3) <= room:
        return [(a, {a}) for a in actors]
    families: dict[str, set[str]] = {}
    for actor in actors:
        families.setdefault(actor.split(":", 1)[0], set()).add(actor)
    if len(families) * (MIN_COLUMN + 3) <= room:
        return list(families.items())
    return None


def _cell(record: StepRecord, keys: set[str]) -> str:
    if len(keys) == 1:
        return record.text
    return f"{record.actor.split(':', 1)[-1]}: {record.text}"


def _natural(records: list | tuple, header: str, keys: set[str]) -> int:
    texts = [_cell(r, keys) for r in records if r.actor in keys]
    return max([len(header), MIN_COLUMN, *(len(t) for t in texts)])


def _fit(widths: list[int], width: int) -> list[int]:
    """Shrink the widest columns until the row fits in ``width``."""
    widths = list(widths)
    room = width - STEP_WIDTH - 3 * len(widths)
    while sum(widths) > room:
        widest = max(range(len(widths)), key=widths.__getitem__)
        if widths[widest] <= MIN_COLUMN:
            break
        widths[widest] -= 1
    return widths


def _row(first: str, cells: list[str], widths: list[int]) -> str:
    parts = [first.ljust(STEP_WIDTH)]
    parts += [" | " + _clip(cell, w).ljust(w) for cell, w in zip(cells, widths, strict=True)]
    return "".join(parts)


def _wrapped_row(first: str, cells: list[str], widths: list[int]) -> list[str]:
    wrapped = [_wrap(cell, w) for cell, w in zip(cells, widths, strict=True)]
    height = max(len(w) for w in wrapped)
    lines = []
    for k in range(height):
        parts = [w[k] if k < len(w) else "" for w in wrapped]
        lines.append(_row(first if k == 0 else "", parts, widths))
    return lines


def _wrap(text: str, width: int) -> list[str]:
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES]
        lines[-1] = _clip(lines[-1] + " ...", width, force=True)
    return lines


def _clip(text: str, width: int, force: bool = False) -> str:
    if len(text) <= width and not force:
        return text
    return text if len(text) <= width else text[: width - 1] + "~"


def _as_list(cex: Counterexample, width: int) -> str:
    """Too many actor families for columns: one line per step, actor then text."""
    lines = []
    for number, r in enumerate(cex.records, 1):
        mark = "*" if r.key else " "
        lines.append(_clip(f"{mark}{number:>{STEP_WIDTH - 1}} {r.actor}: {r.text}", width))
    lines.append(f"=> {cex.prop}: {cex.message}")
    return "\n".join(lines)


def summary(result: Result, name: str | None = None, timed: bool = True) -> str:
    """herd7-style closing lines (``timed`` False: without the ``Time`` line, which a litmus
    run keeps in its timing section)."""
    test = name or result.model
    scope = "Exhaustive" if result.exhaustive else f"Bounded, not exhaustive: {result.limit}"
    lines = [
        f"Test {test} ({result.strategy})",
        f"Executions {result.executions} (steps {result.steps}, states {result.states}, "
        f"sleep-blocked {result.sleep_blocked})",
        scope,
        "Bounds " + ", ".join(f"{k}={v}" for k, v in sorted(result.bounds.items())),
    ]
    lines += [f"Property {p.name}: {p.verdict}" for p in result.properties.values()]
    lines += [_observation(test, result, p) for p in result.properties.values()]
    if timed:
        lines.append(f"Time {test} {result.seconds:.2f}")
    return "\n".join(lines)


def _observation(test: str, result: Result, prop) -> str:
    """herd7's Observation: how often the property's violation was observed."""
    violating, total = prop.violating, result.executions
    if prop.verdict != VIOLATED:
        kind = "Never"
    elif total and violating >= total:
        kind = "Always"
    else:
        kind = "Sometimes"
    return f"Observation {test}.{prop.name} {kind} {violating} {max(total - violating, 0)}"


def render(result: Result, width: int = 120) -> str:
    """Every counterexample (chain, then table), then the summary."""
    parts = []
    for prop in result.properties.values():
        if prop.counterexample is not None:
            cex = prop.counterexample
            parts.append(causal_chain(cex) + "\n\n" + counterexample_table(cex, width))
    parts.append(summary(result))
    return "\n\n".join(parts)
