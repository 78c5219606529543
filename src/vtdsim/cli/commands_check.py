"""`vtdsim check`: run litmus scenarios through the interleaving checker (checker/litmus.py)."""

from __future__ import annotations

import sys

import click

from vtdsim.checker.explore import STRATEGIES
from vtdsim.cli.options import (
    POSITIVE,
    SEED,
    WIDTH,
    FiniteSeconds,
    progress_for_terminal,
    writable_dir,
    writable_file,
)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--strategy", type=click.Choice(STRATEGIES), default="dpor", show_default=True,
              help="exploration strategy")
@click.option("--seed", type=SEED, default=0, show_default=True, help="for random and pct")
@click.option("--max-executions", type=POSITIVE, default=None, help="stop after this many")
@click.option("--max-seconds", type=FiniteSeconds(), default=None,
              help="stop after this long")
@click.option("--replay", "replay_path", type=click.Path(exists=True, dir_okay=False),
              default=None, help="re-run a saved counterexample on the (single) scenario")
@click.option("--save-counterexample", "save_dir", default=None,
              help="write each shrunk counterexample as a schedule file here")
@click.option("--width", type=WIDTH, default=120, show_default=True, help="table width")
@click.option("-v", "--verbose", count=True, help="every scenario's chain, table and summary")
@click.option("-q", "--quiet", is_flag=True, help="the summary line only")
@click.option("-k", "pattern", default="", help="only scenario files whose name contains it")
@click.option("-x", "--exitfirst", is_flag=True, help="stop at the first unexpected verdict")
@click.option("--json", "json_path", default=None, help="write the report as JSON here")
@click.option("--junit", "junit_path", default=None, help="write a JUnit XML report here")
@click.option("--scheduler", default=None,
              help="run the scenarios on Dask distributed: a scheduler ADDRESS, or 'local'")
@click.option("--workers", type=POSITIVE, default=None,
              help="worker processes of a local Dask cluster (default 2 with --scheduler local)")
def check(paths, strategy, seed, max_executions, max_seconds, replay_path, save_dir, width,
          verbose, quiet, pattern, exitfirst, json_path, junit_path, scheduler,
          workers) -> None:
    """Is this invalidation sequence safe?  Explore each scenario (files or folders of .toml)
    and compare the verdicts with its [expect] table.  One line per scenario; the chain and
    table for unexpected verdicts.  Exit status 1 on any unexpected verdict, 2 on bad input
    (each bad file is reported and the others still run), 130 on Ctrl-C.  With --scheduler or
    --workers each scenario is one Dask task (a LocalCluster unless an address is given);
    the report is the serial run's, timings apart."""
    from vtdsim.checker import litmus
    from vtdsim.checker import litmus_report as lr

    if replay_path is not None:
        if len(paths) != 1:
            raise click.UsageError("--replay needs exactly one scenario file")
        litmus.replay_file(paths[0], replay_path, click.echo, width)
        return
    json_file = writable_file(json_path, "--json")
    junit_file = writable_file(junit_path, "--junit")
    opts = litmus.Options(strategy, seed, max_executions, max_seconds,
                          writable_dir(save_dir, "--save-counterexample"), width,
                          verbosity=0 if quiet else 1 + verbose, pattern=pattern,
                          exitfirst=exitfirst, scheduler=scheduler, workers=workers)
    if scheduler not in (None, "local") and workers is not None:
        raise click.UsageError("--workers sizes a local cluster: not with a scheduler address")
    report = litmus.run_library(list(paths), opts, click.echo, progress_for_terminal())
    if json_file:
        lr.write_file(json_file, lr.dump_json(lr.as_json(report, report.seconds)))
    if junit_file:
        lr.write_file(junit_file, lr.junit_text(report))
    sys.exit(_status(report))


def _status(report) -> int:
    if report.interrupted:
        return 130
    if report.bad:
        return 2
    return 1 if report.counts()[1] else 0


def register(group: click.Group) -> None:
    group.add_command(check)
