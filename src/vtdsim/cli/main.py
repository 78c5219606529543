"""The ``vtdsim`` command: one group, one module per family of subcommands.

Every subcommand reports bad input (a malformed trace, scenario, litmus file, unknown preset) as
one line on stderr with exit status 2 - never a Python traceback.
"""

from __future__ import annotations

import sys

import click

from vtdsim import __version__
from vtdsim.errors import BadInput, VtdsimError


class _Group(click.Group):
    """Turns vtdsim's own errors into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BadInput as e:
            click.echo(f"vtdsim: error: {e}", err=True)
            sys.exit(2)
        except VtdsimError as e:
            click.echo(f"vtdsim: {type(e).__name__}: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vtdsim")
def cli() -> None:
    """vtdsim - an executable model of Intel VT-d DMA remapping, the Linux intel-iommu
    driver's invalidation protocols (Linux 6.1 and mainline), and a VT-d-emulating VMM.

    \b
    It answers two questions:
      is this invalidation sequence safe?   vtdsim check  (interleaving checker)
      what does it cost?                    vtdsim simulate (timed workloads), sweep
    and shows that the model agrees with the real driver: vtdsim replay DIR.
    """


def _register() -> None:
    from vtdsim.cli import (
        commands_check,
        commands_hardware,
        commands_mutants,
        commands_replay,
        commands_simulate,
    )

    commands_hardware.register(cli)
    commands_check.register(cli)
    commands_replay.register(cli)
    commands_mutants.register(cli)
    commands_simulate.register(cli)


def main(argv: list[str] | None = None) -> None:
    _register()
    cli.main(args=argv, prog_name="vtdsim")


if __name__ == "__main__":
    main()
