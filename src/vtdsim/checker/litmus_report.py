"""A litmus run's report: one line per scenario for people (the chain and table only for
unexpected verdicts, or all with verbosity 2), JSON and JUnit XML for machines.  Timings live
only in the marked timing section (text) and under ``"timing"`` (JSON), so two runs of the
same command differ nowhere else.

Not provided: HTML, colour, diffs between two runs.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from vtdsim.checker.report import causal_chain, counterexample_table
from vtdsim.errors import BadInput

TIMING_MARK = "--- timing (the only part that differs between runs) ---"
FORMAT, VERSION = "vtdsim-check", 1


@dataclass
class Report:
    """Every scenario run (``outcomes``), every bad file (``bad``: (file, message)), and
    where a Ctrl-C stopped (``interrupted``: (file, executions so far))."""

    outcomes: list = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    interrupted: tuple[str, int] | None = None
    skipped: int = 0  # not matching -k
    seconds: float = 0.0

    def counts(self) -> tuple[int, int]:
        good = sum(len(o.expected) for o in self.outcomes)
        return good, sum(len(o.unexpected) for o in self.outcomes)

    def summary_line(self) -> str:
        good, bad = self.counts()
        line = f"verdicts: {good} as expected, {bad} unexpected"
        if self.bad:
            line += f"; {len(self.bad)} bad input file(s)"
        if self.interrupted:
            line += f"; interrupted in {self.interrupted[0]}"
        return line


# -- for people ---------------------------------------------------------------------------------
def scenario_line(outcome, pad: int = 0) -> str:
    """``ok   NAME  prop=verdict ...  [N executions, exhaustive]`` (``!`` marks an unexpected
    verdict; the properties shown are those the scenario states, and any violated one)."""
    res = outcome.result
    status = "UNEXPECTED" if outcome.unexpected else "ok"
    shown = [v.short() for v in outcome.verdicts if v.wanted is not None or not v.agrees]
    scope = "exhaustive" if res.exhaustive else f"bounded: {res.limit}"
    return (f"{status:<10} {outcome.scenario.name:<{pad}}  {' '.join(shown)}  "
            f"[{res.executions} executions, {scope}]")


def unexpected_detail(outcome, width: int) -> str:
    """The chain and table of each unexpected violation, then the unexpected lines."""
    wrong = {v.name for v in outcome.verdicts if not v.agrees}
    parts = [causal_chain(c) + "\n\n" + counterexample_table(c, width)
             for c in outcome.counterexamples if c.prop in wrong]
    parts += [f"UNEXPECTED {line}" for line in outcome.unexpected]
    return "\n\n".join(parts)


def timing_section(report: Report, seconds: float, width: int) -> str:
    per = ", ".join(f"{o.scenario.name} {o.result.seconds:.2f}" for o in report.outcomes)
    body = textwrap.wrap(f"seconds per scenario: {per}", width) if per else []
    return "\n".join([TIMING_MARK, f"total {seconds:.2f} s", *body])


# -- for machines -------------------------------------------------------------------------------
def as_json(report: Report, seconds: float) -> dict:
    good, bad = report.counts()
    return {
        "format": FORMAT,
        "version": VERSION,
        "scenarios": [_scenario_json(o) for o in report.outcomes],
        "bad_inputs": [{"file": f, "error": e} for f, e in report.bad],
        "interrupted": None if report.interrupted is None else
        {"file": report.interrupted[0], "executions": report.interrupted[1]},
        "summary": {"scenarios": len(report.outcomes), "as_expected": good, "unexpected": bad,
                    "bad_inputs": len(report.bad), "skipped": report.skipped},
        "timing": {"total_seconds": round(seconds, 3),
                   "scenarios": {o.scenario.name: round(o.result.seconds, 3)
                                 for o in report.outcomes}},
    }


def _scenario_json(outcome) -> dict:
    res = outcome.result
    return {
        "name": outcome.scenario.name,
        "file": outcome.scenario.path,
        "status": "unexpected" if outcome.unexpected else "ok",
        "verdicts": [{"property": v.name, "verdict": v.verdict, "expected": v.wanted,
                      "agrees": v.agrees} for v in outcome.verdicts],
        "executions": res.executions,
        "exhaustive": res.exhaustive,
        "limit": res.limit,
        "strategy": res.strategy,
        "counterexamples": [{"property": c.prop, "message": c.message,
                             "chain": causal_chain(c),
                             "steps": [{"actor": r.actor, "text": r.text, "key": r.key}
                                       for r in c.records]}
                            for c in outcome.counterexamples],
    }


def as_junit(report: Report) -> ET.Element:
    """One ``testcase`` per scenario: ``failure`` for unexpected verdicts, ``error`` for a
    bad file (a kernel tree's CI reads it like any test suite)."""
    _, bad = report.counts()
    suite = ET.Element("testsuite", name="vtdsim-litmus",
                       tests=str(len(report.outcomes) + len(report.bad)),
                       failures=str(sum(bool(o.unexpected) for o in report.outcomes)),
                       errors=str(len(report.bad)))
    for o in report.outcomes:
        case = ET.SubElement(suite, "testcase", classname="litmus", name=o.scenario.name,
                             file=o.scenario.path, time=f"{o.result.seconds:.3f}")
        if o.unexpected:
            failure = ET.SubElement(case, "failure", message="; ".join(o.unexpected))
            failure.text = unexpected_detail(o, 120)
    for file, error in report.bad:
        case = ET.SubElement(suite, "testcase", classname="litmus", name=Path(file).stem,
                             file=file)
        ET.SubElement(case, "error", message=error)
    return suite


def write_file(path: str | Path, text: str) -> None:
    """Write a report file; BadInput naming it when it cannot be written."""
    try:
        Path(path).write_text(text)
    except OSError as err:
        raise BadInput(f"cannot write: {err.strerror or err}", str(path)) from None


def dump_json(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def junit_text(report: Report) -> str:
    tree = as_junit(report)
    ET.indent(tree)
    return ET.tostring(tree, encoding="unicode", xml_declaration=True) + "\n"
