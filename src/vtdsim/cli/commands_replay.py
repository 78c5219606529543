"""`vtdsim replay DIR`: the driver model against a recording of the real driver
(traces/replay.py, traces/compare.py); exit status 0 only on agreement."""

from __future__ import annotations

import sys

import click

from vtdsim.driver.profiles import PROFILES


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="linux-6.1",
              show_default=True, help="driver profile to replay with")
@click.option("--seed", type=int, default=0, show_default=True,
              help="reported only: replay draws nothing (the trace's softirq lines time the "
                   "flush-queue timer)")
@click.option("--device", default=None,
              help="the traced device (BB:DD.F) when the recording does not tell")
def replay(directory: str, profile: str, seed: int, device: str | None) -> None:
    """Replay a recording (guest.log, qemu.log, config.toml) through the driver model and
    compare what it submits with what Linux submitted and QEMU processed.  Prints the first
    divergence with context, a summary table and, last, the agreement line."""
    from vtdsim.traces import compare
    from vtdsim.traces.replay import LAZY_TOLERANCE
    from vtdsim.traces.replay import replay as run_replay

    result = run_replay(directory, profile, seed, device)
    lines, verdict = compare.report(result, LAZY_TOLERANCE)
    click.echo("\n".join(lines))
    if not verdict.ok:
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(replay)
