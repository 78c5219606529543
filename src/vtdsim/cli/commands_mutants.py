"""`vtdsim mutants`: the litmus library's mutation self-test (checker/mutants.py).

Not provided: parallel runs, mutants of the virtualization layer.
"""

from __future__ import annotations

import sys

import click


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--only", "only", multiple=True, help="run this mutant only (repeatable)")
def mutants(paths: tuple[str, ...], only: tuple[str, ...]) -> None:
    """Seed each protocol bug into the driver model and run the litmus scenarios (PATHS, the
    library litmus/ by default) until one's verdicts differ from its expectation.  The
    unmutated library runs first and must pass.  Exit status 1 unless every mutant is caught
    and the clean run passed."""
    from vtdsim.checker import mutants as mt
    from vtdsim.checker.litmus import Options

    selected = mt.select(list(only))
    scenarios = mt.load_all(list(paths) or ["litmus"])
    opts = Options()
    flagged = mt.clean_run(scenarios, opts)
    for line in flagged:
        click.echo(f"CLEAN RUN FLAGGED {line}")
    click.echo(f"clean run: {len(scenarios)} scenarios, {len(flagged)} unexpected verdicts")
    results = [mt.hunt(m, scenarios, opts) for m in selected]
    click.echo(mt.table(results))
    caught = sum(r.by is not None for r in results)
    click.echo(f"mutants: caught {caught}/{len(results)}")
    if flagged or caught != len(results):
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(mutants)
