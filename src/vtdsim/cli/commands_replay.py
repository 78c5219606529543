"""`vtdsim replay DIR`: the driver model against a recording of the real driver
(traces/replay.py, traces/compare.py); exit status 0 only on agreement."""

from __future__ import annotations

import sys

import click

from vtdsim.cli.options import SEED, writable_file, write_json
from vtdsim.driver.profiles import PROFILES


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default=None,
              help="driver profile to replay with (default: the recorded kernel's, from "
                   "config.toml's first line: linux-6.1 or linux-6.12)")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="reported only: replay draws nothing (the trace's softirq lines time the "
                   "flush-queue timer)")
@click.option("--device", default=None,
              help="the traced device (BB:DD.F) when the recording does not tell")
@click.option("--json", "json_path", default=None, help="write the agreement as JSON here")
@click.option("--vmm", is_flag=True,
              help="run the guest on the VMM model (QEMU's version and properties from the "
                   "recording) and compare its actions with QEMU's own events too")
@click.option("--assign", is_flag=True,
              help="with --vmm: the traced device assigned through VFIO (shadowed into a "
                   "host unit); prints what the workload costs there")
def replay(directory: str, profile: str | None, seed: int, device: str | None,
           json_path: str | None, vmm: bool, assign: bool) -> None:
    """Replay a recording (guest.log, qemu.log, config.toml) through the driver model and
    compare what it submits with what Linux submitted and QEMU processed.  Prints the first
    divergence with context, a summary table and, last, the agreement line."""
    from vtdsim.traces import compare
    from vtdsim.traces.replay import LAZY_TOLERANCE
    from vtdsim.traces.replay import replay as run_replay

    json_file = writable_file(json_path, "--json")
    vmm_ok = True
    if vmm:
        from vtdsim.traces.vmm_replay import replay_on_vmm

        result, comparison, the_vmm = replay_on_vmm(directory, profile, seed, device, assign)
        vmm_ok = comparison.ok
    else:
        result = run_replay(directory, profile, seed, device)
    lines, verdict = compare.report(result, LAZY_TOLERANCE)
    click.echo("\n".join(lines))
    if vmm:
        _echo_vmm(the_vmm, comparison)
    if json_file:
        write_json(json_file, {
            "format": "vtdsim-replay", "version": 1, "recording": directory,
            "profile": result.profile, "seed": seed, "agrees": verdict.ok, "lazy": verdict.lazy,
            "descriptors": {"matched": verdict.desc_matched, "recorded": verdict.desc_recorded},
            "queue_tail_writes": {"matched": verdict.tail_matched,
                                  "recorded": verdict.tail_recorded},
            "vmm_agrees": vmm_ok if vmm else None,
            "report": lines})
    if not (verdict.ok and vmm_ok):
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(replay)


def _echo_vmm(the_vmm, comparison) -> None:
    """The VMM model's counts and its comparison with QEMU's own events."""
    click.echo(the_vmm.summary())
    for backend in the_vmm.backends:
        counts = dict(backend.stats)
        host = getattr(backend, "host", None)
        if host is not None:  # the host's own queue: its strict invalidations
            counts["host_iqt_writes"] = host.unit.stats["iqt_writes"]
            counts["host_iotlb_inv"] = host.unit.stats["desc:iotlb_inv"]
        click.echo(f"{type(backend).__name__}: "
                   + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    click.echo("\n".join(comparison.lines()))
