"""The study in the terminal: one rich panel per seed (question, claims, verdicts before and
after with each violation's chain, the figures with their sources, the conclusion), from the
report dict ``runner.run_study`` returns.

Not provided: the counterexample tables (report.html and ``vtdsim check -v`` show them).
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from vtdsim.study.evidence import fmt

WORD_STYLE = {"violated": "bold red", "observed": "yellow", "holds": "green"}


def render(report: dict, console: Console, brief: bool = False) -> None:
    """A panel per seed then the closing table; ``brief``: the closing table alone (the
    panels' evidence is in report.html/json)."""
    for study in () if brief else report["seeds"]:
        console.print(panel(study))
    bundled = report["bundled"]
    console.print(Text(f"bundled recording {bundled['recording']}: "
                       + "; ".join(_figure_text(f) for f in bundled["figures"])))
    console.print(closing_table(report))


def closing_table(report: dict) -> Table:
    """The study in one row per seed: the verdicts on each side and the conclusion's first
    sentence (the panels above hold the evidence)."""
    t = Table(title="the seed threads answered", title_justify="left", expand=True)
    t.add_column("seed", no_wrap=True)
    t.add_column("before", ratio=1)
    t.add_column("after", ratio=1)
    t.add_column("answer", ratio=4)
    for study in report["seeds"]:
        sides = [_tally(study, side) for side in ("before", "after")]
        answer = study["conclusion"].split(". ")[0].rstrip(".") + "."
        if study["note"]:
            answer = f"NOTE: {study['note']}"
        t.add_row(study["number"], *sides, Text(answer))
    return t


def _tally(study: dict, side: str) -> Text:
    words = [s["word"] for s in study["scenarios"] if s["side"] == side]
    return Text(", ".join(f"{words.count(w)} {w}" for w in ("violated", "observed", "holds")
                          if w in words))


def panel(study: dict) -> Panel:
    parts = [Text(study["question"], style="bold")]
    for claim in study["claims"]:
        parts.append(Text(f"{claim['who']} ({claim['when']}): \u201c{claim['quote']}\u201d",
                          style="italic"))
    parts += [verdict_table(study), chains(study), figure_table(study)]
    conclusion = Text("Conclusion: ", style="bold")
    conclusion.append(study["conclusion"])
    parts.append(conclusion)
    if study["note"]:
        parts.append(Text(f"NOTE: {study['note']}", style="bold red"))
    if study["open"]:
        parts.append(Text(f"Open: {study['open']}", style="dim"))
    return Panel(Group(*parts), title=f"seed {study['number']}: {study['title']}",
                 subtitle=study["thread"], expand=True)


def verdict_table(study: dict) -> Table:
    t = Table(title="checker verdicts (exhaustive DPOR)", title_justify="left", expand=True)
    for column in ("side", "scenario", "verdict", "properties", "executions"):
        t.add_column(column, overflow="fold")
    for s in study["scenarios"]:
        props = ", ".join(f"{v['property']}={v['verdict']}" + ("" if v["agrees"] else " (!)")
                          for v in s["verdicts"]
                          if v["verdict"] not in ("holds", "never") or not v["agrees"])
        t.add_row(s["side"], Text(s["name"]),
                  Text(s["word"], style=WORD_STYLE.get(s["word"], "")),
                  Text(props or "all hold"), str(s["executions"]))
    return t


def chains(study: dict) -> Group:
    lines = [Text(f"{s['name']}: {c['chain']}", style=WORD_STYLE.get(s["word"], ""))
             for s in study["scenarios"] for c in s["chains"]]
    return Group(*lines) if lines else Group(Text("no violation, no observation"))


def figure_table(study: dict) -> Table:
    t = Table(title="costs and measurements (each source in full: report.html/json)",
              title_justify="left", expand=True)
    t.add_column("figure", ratio=4)
    t.add_column("value", ratio=2)
    t.add_column("source", ratio=3, no_wrap=True, overflow="ellipsis")
    for f in study["figures"] + study["published"]:
        value = (f"[{f['note'].split(' (')[0]}]" if f["value"] is None
                 else f"{fmt(f['value'])} {f['unit']}")
        t.add_row(Text(f["label"]), Text(value), Text(f"{f['source']}: {f['detail']}"))
    return t


def _figure_text(f: dict) -> str:
    if f["value"] is None:
        return f"{f['label']} [{f['note']}]"
    return f"{f['label']} {fmt(f['value'])} {f['unit']} ({f['source']})"
