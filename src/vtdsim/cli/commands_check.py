"""`vtdsim check`: run litmus scenarios through the interleaving checker (checker/litmus.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vtdsim.checker.explore import STRATEGIES


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--strategy", type=click.Choice(STRATEGIES), default="dpor", show_default=True,
              help="exploration strategy")
@click.option("--seed", type=int, default=0, show_default=True, help="for random and pct")
@click.option("--max-executions", type=int, default=None, help="stop after this many")
@click.option("--max-seconds", type=float, default=None, help="stop after this long")
@click.option("--replay", "replay_path", type=click.Path(exists=True, dir_okay=False),
              default=None, help="re-run a saved counterexample on the (single) scenario")
@click.option("--save-counterexample", "save_dir", type=click.Path(file_okay=False),
              default=None, help="write each shrunk counterexample as a schedule file here")
@click.option("--width", type=int, default=120, show_default=True, help="table width")
def check(paths: tuple[str, ...], strategy: str, seed: int, max_executions: int | None,
          max_seconds: float | None, replay_path: str | None, save_dir: str | None,
          width: int) -> None:
    """Is this invalidation sequence safe?  Explore each scenario (files or folders of .toml)
    and compare the verdicts with its [expect] table; exit status 1 on any unexpected
    verdict (or an unexpected violation)."""
    from vtdsim.checker import litmus

    if replay_path is not None:
        if len(paths) != 1:
            raise click.UsageError("--replay needs exactly one scenario file")
        litmus.replay_file(paths[0], replay_path, click.echo, width)
        return
    opts = litmus.Options(strategy, seed, max_executions, max_seconds,
                          Path(save_dir) if save_dir else None, width)
    _, unexpected = litmus.run_paths(list(paths), opts, click.echo)
    if unexpected:
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(check)
