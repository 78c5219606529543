"""`vtdsim presets`, `vtdsim decode`, `vtdsim demo`: the hardware model at the command line."""

from __future__ import annotations

import click

from vtdsim.cli.options import SEED, writable_file, write_json
from vtdsim.hardware.presets import PRESETS


def _qword(text: str, index: int) -> int:
    """A descriptor qword as Linux and QEMU print one: hex digits, ``0x`` optional, at most
    64 bits (no sign, no underscores)."""
    digits = text.lower().removeprefix("0x")
    if not digits or any(c not in "0123456789abcdef" for c in digits):
        raise click.BadParameter(f"{text!r} is not a hexadecimal number (qw{index})",
                                 param_hint="QWORDS")
    value = int(digits, 16)
    if value >> 64:
        raise click.BadParameter(f"{text!r} is wider than 64 bits (qw{index})",
                                 param_hint="QWORDS")
    return value


@click.command()
@click.argument("name", required=False)
@click.option("--json", "json_path", default=None, help="write the units as JSON here")
def presets(name: str | None, json_path: str | None) -> None:
    """List the named remapping units, one line each, or decode one preset's CAP/ECAP."""
    from vtdsim.hardware.presets import ABOUT, PRESETS, get_preset

    json_file = writable_file(json_path, "--json")
    names = [name] if name else list(PRESETS)
    units = {n: get_preset(n) for n in names}
    if name:
        click.echo(f"{name}: {ABOUT.get(name, '')}; {units[name].summary()}")
        click.echo(units[name].describe())
    else:
        width = max(len(n) for n in names)
        for n, caps in units.items():
            click.echo(f"{n:<{width}}  cap {caps.cap:016x} ecap {caps.ecap:012x}  "
                       f"{ABOUT.get(n, '')}; {caps.summary()}")
    if json_file:
        write_json(json_file, {"format": "vtdsim-presets", "version": 1, "presets": [
            {"name": n, "about": ABOUT.get(n, ""), "cap": f"{c.cap:#x}", "ecap": f"{c.ecap:#x}",
             "summary": c.summary(), "mgaw": c.mgaw, "caching_mode": bool(c.caching_mode),
             "scalable": bool(c.smts)} for n, c in units.items()]})


@click.command()
@click.argument("qwords", nargs=-1, required=True)
@click.option("--json", "json_path", default=None, help="write the decoded fields here")
def decode(qwords: tuple[str, ...], json_path: str | None) -> None:
    """Decode an invalidation descriptor given as 1-4 hexadecimal qwords (qw0 first), e.g.
    ``vtdsim decode 0x500f2 0xfff80005``."""
    from vtdsim.hardware.descriptors import decode as decode_desc

    if len(qwords) > 4:
        raise click.BadParameter("a descriptor has at most four qwords", param_hint="QWORDS")
    json_file = writable_file(json_path, "--json")
    qws = [_qword(q, i) for i, q in enumerate(qwords)] + [0] * (4 - len(qwords))
    desc = decode_desc(tuple(qws))
    click.echo(desc.describe())
    if json_file:
        write_json(json_file, {"format": "vtdsim-decode", "version": 1,
                               "qwords": [f"{q:#x}" for q in desc.qws], "type": desc.type,
                               "label": desc.label, "description": desc.describe(),
                               "fields": {k: v for k, v in sorted(desc.fields.items())}})


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="qemu72-legacy-cm-ats",
              show_default=True,
              help="The remapping unit (see `vtdsim presets`).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Buffer placement and contents.")
@click.option("--platform", "platforms", multiple=True,
              type=click.Choice(["bare", "emulated", "shadow", "nested"]),
              help="Instead of the guided run: one strict map/DMA/unmap on this platform "
                   "(repeatable) and its counts - exits, descriptors, VMM page-walk reads, "
                   "VFIO calls, host invalidations.")
@click.option("--profile", default="linux-6.1", show_default=True,
              help="The guest driver profile (with --platform).")
@click.option("--vmm", type=click.Choice(["qemu-7.2", "qemu-10.0", "qemu-nesting-2026"]),
              default="qemu-7.2", show_default=True,
              help="The VMM version: qemu-7.2 or qemu-10.0 (with --platform; nested uses the "
                   "2026 nesting series).")
def demo(preset: str, seed: int, platforms: tuple[str, ...], profile: str, vmm: str) -> None:
    """A guided run: Linux boots a unit, maps a buffer, a device DMAs through its device-TLB,
    the driver unmaps, the stale DMA is blocked; then one I/O's cost under both profiles."""
    if platforms:
        from vtdsim.simulation.platform_demo import run_platform_demo

        run_platform_demo(click.echo, list(platforms), profile=profile, vmm=vmm, seed=seed)
        return
    from vtdsim.simulation.demo import run_demo

    run_demo(click.echo, preset=preset, seed=seed)


def register(group: click.Group) -> None:
    group.add_command(demo)
    group.add_command(presets)
    group.add_command(decode)
