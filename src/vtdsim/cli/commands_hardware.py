"""`vtdsim presets`, `vtdsim decode`, `vtdsim demo`: the hardware model at the command line."""

from __future__ import annotations

import click

from vtdsim.errors import BadInput


def _int(text: str) -> int:
    try:
        return int(text, 0) if text.lower().startswith("0x") else int(text, 16)
    except ValueError:
        raise BadInput(f"not a hexadecimal number: {text!r}") from None


@click.command()
@click.argument("name", required=False)
def presets(name: str | None) -> None:
    """List the named remapping units, or decode one preset's CAP/ECAP."""
    from vtdsim.hardware.presets import PRESETS, get_preset

    if name:
        caps = get_preset(name)
        click.echo(f"{name}: cap {caps.cap:x} ecap {caps.ecap:x}")
        click.echo(caps.describe())
        return
    width = max(len(n) for n in PRESETS)
    for n, caps in PRESETS.items():
        click.echo(f"{n:<{width}}  cap {caps.cap:016x}  ecap {caps.ecap:012x}")


@click.command()
@click.argument("qwords", nargs=-1, required=True)
def decode(qwords: tuple[str, ...]) -> None:
    """Decode an invalidation descriptor given as 1-4 hexadecimal qwords (qw0 first), e.g.
    ``vtdsim decode 0x500f2 0xfff80005``."""
    from vtdsim.hardware.descriptors import decode as decode_desc

    if len(qwords) > 4:
        raise BadInput("a descriptor has at most four qwords")
    qws = [_int(q) for q in qwords] + [0] * (4 - len(qwords))
    click.echo(decode_desc(tuple(qws)).describe())


@click.command()
@click.option("--preset", default="qemu72-legacy-cm-ats", show_default=True,
              help="The remapping unit (see `vtdsim presets`).")
@click.option("--seed", default=0, show_default=True, help="Buffer placement and contents.")
@click.option("--platform", "platforms", multiple=True,
              type=click.Choice(["bare", "emulated", "shadow", "nested"]),
              help="Instead of the guided run: one strict map/DMA/unmap on this platform "
                   "(repeatable) and its counts - exits, descriptors, VMM page-walk reads, "
                   "VFIO calls, host invalidations.")
@click.option("--profile", default="linux-6.1", show_default=True,
              help="The guest driver profile (with --platform).")
@click.option("--vmm", default="qemu-7.2", show_default=True,
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
