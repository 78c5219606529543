"""Option types shared by the subcommands: numbers with their ranges (a value out of range is
a usage error, exit status 2), output files checked writable before any work starts, and the
live progress display (rich, on a terminal only).

Not provided: colour themes; progress when output is piped (plain lines only).
"""

from __future__ import annotations

import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from vtdsim.checker.litmus import Progress

WIDTH = click.IntRange(40, 1000)
SEED = click.IntRange(0, (1 << 64) - 1)
POSITIVE = click.IntRange(min=1)


class FiniteSeconds(click.ParamType):
    """A duration in seconds: a finite number > 0 (``nan`` and ``inf`` are refused)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a finite number of seconds > 0", param, ctx)
        return number


def writable_file(path: str | None, option: str) -> Path | None:
    """``path`` when its folder exists and can be written; a usage error otherwise (checked
    before an exploration, not after it)."""
    if path is None:
        return None
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise click.BadParameter(f"{path} is a folder", param_hint=option)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise click.BadParameter(f"cannot write into {folder}", param_hint=option)
    return target


def writable_dir(path: str | None, option: str) -> Path | None:
    if path is None:
        return None
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise click.BadParameter(f"cannot create {path}: {err.strerror}",
                                 param_hint=option) from None
    if not os.access(target, os.W_OK):
        raise click.BadParameter(f"cannot write into {path}", param_hint=option)
    return target


def write_json(path: Path, data: dict) -> None:
    """A machine-readable report (sorted keys: byte-identical for identical runs)."""
    from vtdsim.checker.litmus_report import write_file

    write_file(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


class LiveProgress(Progress):
    """``exploring NAME: N executions`` on a terminal while a scenario runs (rich)."""

    def __init__(self, what: str = "exploring"):
        super().__init__()
        from rich.console import Console

        self.console = Console(stderr=True)
        self.what = what
        self.status = None
        self.name = ""

    def start(self, name: str) -> None:
        super().start(name)
        self.name = name
        self.status = self.console.status(f"{self.what} {name}")
        self.status.start()

    def tick(self, executions: int) -> None:
        super().tick(executions)
        if self.status is not None and executions % 16 == 0:
            self.status.update(f"{self.what} {self.name}: {executions} executions")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def progress_for_terminal(what: str = "exploring") -> Progress:
    """The live display when stderr is a terminal, else the silent one."""
    return LiveProgress(what) if sys.stderr.isatty() else Progress()


@contextmanager
def live_status():
    """``status(text)`` shown live on a terminal (rich) while the block runs; a no-op when
    stderr is piped.  Ctrl-C inside ends the command with what was printed so far."""
    if not sys.stderr.isatty():
        yield lambda text: None
        return
    from rich.console import Console

    with Console(stderr=True).status("") as shown:
        yield shown.update
