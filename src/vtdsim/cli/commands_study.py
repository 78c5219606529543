"""`vtdsim study`: the seed threads answered (study/): a panel per seed in the terminal,
``--out DIR`` writes report.html (self-contained) and report.json (every number shown)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from vtdsim.cli.options import SEED, writable_dir, write_json

REPO = Path(__file__).resolve().parents[3]  # src/vtdsim/cli -> the checkout


def _default(path: Path, fallback: str) -> str:
    return str(path) if path.exists() else fallback


@click.command("study")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="the random seed of every run (same seed: same report)")
@click.option("--thread", "threads", multiple=True,
              help="study only this seed thread (000..004; repeatable)")
@click.option("--out", "out_dir", default=None, help="write report.html and report.json here")
@click.option("--brief", is_flag=True,
              help="print only the closing table, one row per seed (the panels' evidence: "
                   "report.html/json with --out)")
@click.option("--quick", is_flag=True, help="shorter timed runs (300 I/Os instead of 1000)")
@click.option("--litmus", "litmus_dir", default=_default(REPO / "litmus", "litmus"),
              show_default=True, help="the litmus library")
@click.option("--traces", "traces_dir",
              default=os.environ.get("VTDSIM_TRACES",
                                     _default(REPO.parent / "shared" / "traces",
                                              "../shared/traces")),
              show_default=True, help="the shared recordings (missing ones are marked)")
@click.option("--bundled", "bundled_dir", default=_default(REPO / "examples", "examples"),
              show_default=True, help="the bundled recordings")
def study(seed, threads, out_dir, brief, quick, litmus_dir, traces_dir, bundled_dir) -> None:
    """Who was right in each seed thread, by what evidence, at what cost: the checker's
    verdicts before and after each patch (with every violation's chain), the simulator's
    costs, the recordings that measure the same thing and the figures the thread published."""
    from rich.console import Console

    from vtdsim.study import terminal
    from vtdsim.study.runner import Inputs, run_study, select, steps_for

    out = writable_dir(out_dir, "--out")
    inputs = Inputs(Path(litmus_dir), Path(traces_dir), Path(bundled_dir), seed, quick,
                    tuple(threads))
    with _progress(steps_for(select(inputs.numbers))) as step:
        report = run_study(inputs, step)
    tty = sys.stdout.isatty()
    terminal.render(report, Console(width=None if tty else 120, force_terminal=tty or None),
                    brief)
    click.echo(f"study: {len(report['seeds'])} seed(s) in {report['timing']['total_s']:.0f} s"
               + (f"; {_unexpected(report)}" if _unexpected(report) else ""))
    if out is not None:
        from vtdsim.study.html import write_html

        write_json(out / "report.json", report)
        write_html(out / "report.html", report)
        click.echo(f"wrote {out / 'report.html'} and {out / 'report.json'}")


def _unexpected(report: dict) -> str:
    notes = [s["number"] for s in report["seeds"] if s["note"]]
    return f"seed(s) {', '.join(notes)}: verdicts differ from the conclusion's" if notes else ""


@contextmanager
def _progress(total: int):
    """A rich progress bar on a terminal (stderr); nothing when piped."""
    if not sys.stderr.isatty():
        yield lambda text: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<60}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("study", total=total)

        def step(text: str) -> None:
            bar.update(task, advance=1, description=text)

        yield step


def register(group: click.Group) -> None:
    group.add_command(study)
