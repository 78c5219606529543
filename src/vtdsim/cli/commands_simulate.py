"""`vtdsim simulate WORKLOAD` (timed runs over the one model: simulation/run.py, and
traces/timed.py for `trace DIR`) and `vtdsim constants` (the cost table)."""

from __future__ import annotations

import functools

import click

from vtdsim.driver.profiles import PROFILES
from vtdsim.simulation.platforms import EXIT_MODES, VIRTUAL_PLATFORMS


def common_options(func):
    """The mode and output options every workload takes."""
    options = [
        click.option("--policy", type=click.Choice(["off", "passthrough", "strict", "lazy"]),
                     default="strict", show_default=True),
        click.option("--profile", type=click.Choice(sorted(PROFILES)), default="mainline",
                     show_default=True, help="driver profile"),
        click.option("--platform", type=click.Choice(["bare", *VIRTUAL_PLATFORMS]),
                     default="bare", show_default=True),
        click.option("--exits", type=click.Choice(EXIT_MODES), default="trap",
                     show_default=True, help="vIOMMU: trap each IQT write, or a side core"),
        click.option("--unit", default="server-sm", show_default=True,
                     help="unit preset (vtdsim presets)"),
        click.option("--iova-pages", type=click.Choice(["4k", "2m"]), default="4k",
                     show_default=True),
        click.option("--ats", is_flag=True, help="the device uses ATS (a device-TLB)"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--duration", default=None, help="simulated time (10ms, 1s ...)"),
        click.option("--ios", type=int, default=None, help="stop after this many I/Os"),
        click.option("--constants", "constants_file", type=click.Path(), default=None,
                     help="TOML file overriding constants"),
        click.option("--json", "as_json", is_flag=True, help="one JSON object"),
        click.option("--csv", "as_csv", is_flag=True, help="a CSV header and row"),
        click.option("--plot", default=None, help="write a plot (FILE.svg or FILE.png)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def mode_from(opts: dict):
    from vtdsim.simulation.workloads.common import Mode, parse_duration

    duration, ios = parse_duration(opts.pop("duration")), opts.pop("ios")
    if duration is None and ios is None:
        ios = 10_000
    return Mode(policy=opts.pop("policy"), profile=opts.pop("profile"),
                platform=opts.pop("platform"), exits=opts.pop("exits"), unit=opts.pop("unit"),
                iova_pages=opts.pop("iova_pages"), seed=opts.pop("seed"), duration_ns=duration,
                ios=ios, ats=opts.pop("ats"))


def emit(result: dict, as_json: bool, as_csv: bool, plot_file: str | None) -> None:
    from vtdsim.simulation import report

    if plot_file:
        report.plot(result, plot_file)
    if as_json:
        click.echo(report.to_json(result))
    elif as_csv:
        click.echo(report.to_csv([result]), nl=False)
    else:
        report.print_table(result)


def _workload_command(name: str, params_options: list, help_text: str):
    def run(**opts):
        from vtdsim.simulation import constants
        from vtdsim.simulation.run import make_params, simulate

        outputs = (opts.pop("as_json"), opts.pop("as_csv"), opts.pop("plot"))
        table = constants.load(opts.pop("constants_file"))
        mode = mode_from(opts)
        emit(simulate(name, mode, make_params(name, **opts), table), *outputs)

    command = functools.reduce(lambda f, opt: opt(f), reversed(params_options),
                               common_options(run))
    return click.command(name=name, help=help_text)(command)


NIC = [click.option("--flows", type=int, default=1, show_default=True),
       click.option("--ring", type=int, default=1024, show_default=True,
                    help="RX/TX ring entries (MTU frames; mlx5's default RQ size)"),
       click.option("--mtu", type=int, default=1500, show_default=True),
       click.option("--pages-per-desc", type=int, default=1, show_default=True),
       click.option("--link-gbps", type=float, default=100.0, show_default=True),
       click.option("--rx-buffers", type=click.Choice(["page-pool", "map"]),
                    default="page-pool", show_default=True,
                    help="nic-rx: pages recycled by a page_pool that maps them once, or a "
                         "fresh dma_map per buffer"),
       click.option("--pool-size", type=int, default=0, show_default=True,
                    help="page-pool ptr_ring entries (0: the ring's pages, as mlx5)")]
NVME = [click.option("--bs", type=int, default=4096, show_default=True),
        click.option("--qd", type=int, default=32, show_default=True),
        click.option("--jobs", type=int, default=1, show_default=True),
        click.option("--rw", type=click.Choice(["read", "randread", "write", "randwrite"]),
                     default="randread", show_default=True)]
CONTEXT = [click.option("--pasids", type=int, default=4, show_default=True,
                        help="PASIDs of the flipping device besides RID_PASID, a domain each"),
           click.option("--contenders", type=int, default=2, show_default=True,
                        help="CPUs taking iommu->lock on other devices"),
           click.option("--contend", type=click.Choice(["attach", "pasid"]), default="attach",
                        show_default=True, help="what the contenders do"),
           click.option("--flush", type=click.Choice(["inside", "outside"]), default="inside",
                        show_default=True, help="the invalidations inside or after iommu->lock"),
           click.option("--gap-ns", type=float, default=0.0, show_default=True,
                        help="the flipping CPU's pause between two changes"),
           click.option("--think-ns", type=float, default=2000.0, show_default=True,
                        help="a contender's mean pause between operations (exponential)")]
WINDOW = [click.option("--transfer", type=int, default=64, show_default=True),
          click.option("--window", type=int, default=8 << 20, show_default=True),
          click.option("--test", type=click.Choice(["latency", "bandwidth"]), default="latency",
                       show_default=True,
                       help="one read in flight (pcie-bench's latency test) or back to back "
                            "(its bandwidth test)"),
          click.option("--rw", type=click.Choice(["read", "write"]), default="read",
                       show_default=True, help="the device reads or writes (write: bandwidth)")]


@click.group()
def simulate() -> None:
    """Timed simulation of an I/O workload over the model (SimPy): throughput, CPU per I/O,
    map/unmap time, latency, translation counts per 4 KiB, exits."""


simulate.add_command(_workload_command("nic-rx", NIC, "iperf-like receive, one flow per core."))
simulate.add_command(_workload_command("nic-tx", NIC, "iperf-like send, one flow per core."))
simulate.add_command(_workload_command("nvme", NVME, "fio-like NVMe I/O."))
simulate.add_command(_workload_command("dma-window", WINDOW,
                                       "pcie-bench-like random DMA over a mapped window."))
simulate.add_command(_workload_command(
    "context-flush", CONTEXT,
    "Seed 001: one CPU changes a present context entry (context_flip_pri) while others take "
    "iommu->lock; its hold and wait times, flushes inside or outside the lock."))


@simulate.command("trace")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--policy", type=click.Choice(["recorded", "strict", "lazy"]),
              default="recorded", show_default=True,
              help="the recording's own policy, or force another")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default=None,
              help="driver profile [default: the recorded kernel's]")
@click.option("--platform", type=click.Choice(["bare", *VIRTUAL_PLATFORMS]), default="bare",
              show_default=True)
@click.option("--exits", type=click.Choice(EXIT_MODES), default="trap", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="the traced device (BB:DD.F)")
@click.option("--constants", "constants_file", type=click.Path(), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@click.option("--plot", "plot_file", default=None)
def trace(directory, policy, profile, platform, exits, seed, device, constants_file, as_json,
          as_csv, plot_file):
    """A recording's map/unmap calls at their timestamps, timed (the what-if: the same calls
    under another profile, policy or platform)."""
    from vtdsim.simulation import constants
    from vtdsim.traces.timed import simulate_trace

    table = constants.load(constants_file)
    result = simulate_trace(directory, table, profile=profile, policy=policy,
                            platform=platform, exits=exits, seed=seed, device=device)
    emit(result, as_json, as_csv, plot_file)


@click.command("constants")
@click.option("--constants", "constants_file", type=click.Path(), default=None,
              help="show the table with this file's overrides")
def constants_command(constants_file: str | None) -> None:
    """The timed simulator's constants: value, unit, source, confidence."""
    from rich.console import Console
    from rich.table import Table

    from vtdsim.simulation import constants

    table = constants.load(constants_file)
    t = Table(title=f"constants ({table.origin})", show_lines=False)
    for column in ("name", "value", "unit", "confidence", "source"):
        t.add_column(column, overflow="fold")
    for c in table.rows():
        t.add_row(c.name, f"{c.value:g}", c.unit, c.confidence, c.source)
    Console(width=160).print(t)


def register(group: click.Group) -> None:
    group.add_command(simulate)
    group.add_command(constants_command)
    group.add_command(sweep_command)


@click.command("sweep")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--scheduler", default=None, help="a Dask scheduler ADDRESS (default: a "
              "LocalCluster of worker processes)")
@click.option("--workers", type=int, default=2, show_default=True,
              help="LocalCluster worker processes")
@click.option("--serial", is_flag=True, help="run the points here, one after another")
@click.option("--csv", "csv_file", default=None, help="write the CSV here (default stdout)")
@click.option("--plot", "plot_file", default=None, help="FILE.svg or FILE.png")
def sweep_command(spec, scheduler, workers, serial, csv_file, plot_file):
    """A grid of timed runs (workload x mode x constants) on Dask distributed; the CSV is
    identical to a serial run's."""
    from pathlib import Path

    from vtdsim.simulation import report, sweep

    points, _name = sweep.load_spec(spec)
    results = sweep.run_serial(points) if serial else sweep.run_dask(points, scheduler,
                                                                       workers)
    text = report.to_csv(results)
    if csv_file:
        Path(csv_file).write_text(text)
    else:
        click.echo(text, nl=False)
    if plot_file:
        sweep.plot(results, plot_file)
