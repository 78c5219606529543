"""The ``vtdsim`` command: one group, one module per family of subcommands.

Every subcommand reports bad input (a malformed trace, scenario, litmus file, unknown preset) as
one line on stderr with exit status 2 - never a Python traceback.
"""

from __future__ import annotations

import os
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
        commands_study,
    )

    commands_hardware.register(cli)
    commands_check.register(cli)
    commands_replay.register(cli)
    commands_mutants.register(cli)
    commands_simulate.register(cli)
    commands_study.register(cli)


def main(argv: list[str] | None = None) -> None:
    """Run the command; usage errors, bad input and Ctrl-C end in one line, never a
    traceback (``VTDSIM_DEBUG=1`` shows one for an internal error, a vtdsim bug)."""
    _register()
    try:
        cli.main(args=argv, prog_name="vtdsim", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # bare `vtdsim`: the help, as click does
        click.echo(e.ctx.get_help())
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx else "vtdsim"
        click.echo(f"{command}: error: {e.format_message()} (see {command} --help)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"vtdsim: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("vtdsim: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get("VTDSIM_DEBUG"):
            raise
        click.echo(f"vtdsim: internal error (a vtdsim bug; VTDSIM_DEBUG=1 shows where): "
                   f"{type(e).__name__}: {e}", err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
