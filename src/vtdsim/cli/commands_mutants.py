"""`vtdsim mutants`: the litmus library's mutation self-test (checker/mutants.py).

Not provided: parallel runs, mutants of the virtualization layer.
"""

from __future__ import annotations

import sys

import click

from vtdsim.cli.options import live_status, writable_file, write_json


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--only", "only", multiple=True, help="run this mutant only (repeatable)")
@click.option("--json", "json_path", default=None, help="write the results as JSON here")
def mutants(paths: tuple[str, ...], only: tuple[str, ...], json_path: str | None) -> None:
    """Seed each protocol bug into the driver model and run the litmus scenarios (PATHS, the
    library litmus/ by default) until one's verdicts differ from its expectation.  The
    unmutated library runs first and must pass.  Exit status 1 unless every mutant is caught
    and the clean run passed."""
    from vtdsim.checker import mutants as mt
    from vtdsim.checker.litmus import Options

    json_file = writable_file(json_path, "--json")
    selected = mt.select(list(only))
    scenarios = mt.load_all(list(paths) or ["litmus"])
    opts = Options()
    with live_status() as status:
        status("clean run of the library")
        flagged = mt.clean_run(scenarios, opts)
        for line in flagged:
            click.echo(f"CLEAN RUN FLAGGED {line}")
        click.echo(f"clean run: {len(scenarios)} scenarios, {len(flagged)} unexpected "
                   "verdicts")
        results = []
        try:
            for i, m in enumerate(selected, 1):
                status(f"mutant {i}/{len(selected)}: {m.name}")
                results.append(mt.hunt(m, scenarios, opts))
        except KeyboardInterrupt:  # Ctrl-C: what was hunted so far
            click.echo(mt.table(results))
            click.echo(f"mutants: interrupted after {len(results)}/{len(selected)} (Ctrl-C)")
            sys.exit(130)
    click.echo(mt.table(results))
    click.echo(mt.timing(results))
    caught = sum(r.by is not None for r in results)
    click.echo(f"mutants: caught {caught}/{len(results)}")
    if json_file:
        write_json(json_file, mt.as_json(results, flagged, len(scenarios)))
    if flagged or caught != len(results):
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(mutants)
