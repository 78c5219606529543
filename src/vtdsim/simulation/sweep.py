"""A grid of timed runs (``vtdsim sweep SPEC.toml``): workload x mode x constants, each point
one task on Dask distributed (a scheduler at ``--scheduler ADDRESS``, or a LocalCluster of
worker processes), gathered in grid order so the CSV is the same as a serial run's.

Spec (TOML)::

    workload = "nic-rx"            # or a list, or a grid key
    ios = 2000                     # or duration = "5ms"
    constants = "file.toml"        # optional: a base override file (relative to the spec)
    [fixed]                        # mode fields and workload parameters, one value each
    flows = 2
    [grid]                         # lists; the grid is their product, in key order
    policy = ["strict", "lazy"]
    "constants.llc_read_ns" = [245, 298]

Mode fields: policy, profile, platform, exits, unit, iova_pages, seed, ats; workload parameters as
the workload's options (flows, ring, mtu, pages_per_desc, link_gbps, rx_buffers, pool_size,
bs, qd, jobs, rw, transfer, window, test, pasids, contenders, contend, flush, gap_ns, think_ns);
``constants.NAME`` overrides one constant.

Not modelled: sweeping ``trace`` runs (recordings are read where the worker runs).
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from pathlib import Path

from vtdsim.errors import BadInput
from vtdsim.simulation import constants as constants_mod
from vtdsim.simulation.run import WORKLOADS, make_params, simulate
from vtdsim.simulation.workloads.common import Mode, parse_duration

MODE_KEYS = ("policy", "profile", "platform", "exits", "unit", "iova_pages", "seed", "ats")
TOP_KEYS = ("workload", "ios", "duration", "constants", "fixed", "grid")


def _param_keys(workload: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(WORKLOADS[workload][0]))


def load_spec(path: str | Path) -> tuple[list[dict], str]:
    """The grid's points (each a dict of settings, in grid order) and the spec's name."""
    path = Path(path)
    data = constants_mod._read_toml(path)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise BadInput(f"{path}: key {unknown[0]!r}: unknown (keys: {', '.join(TOP_KEYS)})")
    grid = data.get("grid", {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise BadInput(f"{path}: key 'grid.{key}': a non-empty list")
    base = dict(data.get("fixed", {}))
    for key in ("workload", "ios", "duration"):
        if key in data and key not in grid:
            base[key] = data[key]
    if "constants" in data:
        base["constants_file"] = str(path.parent / data["constants"])
    keys = sorted(grid)
    points = [{**base, **dict(zip(keys, combo, strict=True))}
              for combo in itertools.product(*(grid[k] for k in keys))]
    for point in points:
        _check_point(point, path)
    return points, path.stem


def _check_point(point: dict, path: Path) -> None:
    workload = point.get("workload")
    if workload not in WORKLOADS:
        raise BadInput(f"{path}: key 'workload': {workload!r}, expected one of "
                       f"{', '.join(WORKLOADS)}")
    allowed = {"workload", "ios", "duration", "constants_file", *MODE_KEYS,
               *_param_keys(workload)}
    for key in point:
        if key not in allowed and not key.startswith("constants."):
            raise BadInput(f"{path}: key {key!r}: not a mode field, a {workload} parameter or "
                           "constants.NAME")


def run_point(point: dict) -> dict:
    """One grid point, run where it lands (a Dask worker or here); the result without its
    wall-clock timing, with the point's constant overrides as columns."""
    table = constants_mod.load(point.get("constants_file"))
    overrides = {k.split(".", 1)[1]: v for k, v in point.items() if k.startswith("constants.")}
    if overrides:
        table = table.with_values(overrides, "sweep point")
    workload = point["workload"]
    duration = parse_duration(point["duration"]) if "duration" in point else None
    ios = point.get("ios", None if duration is not None else 2000)
    mode = Mode(duration_ns=duration, ios=ios,
                **{k: point[k] for k in MODE_KEYS if k in point})
    params = make_params(workload, **{k: point[k] for k in _param_keys(workload)
                                       if k in point})
    result = simulate(workload, mode, params, table)
    result.pop("timing")
    result.update({f"constants.{k}": v for k, v in sorted(overrides.items())})
    return result


def run_serial(points: list[dict]) -> list[dict]:
    return [run_point(p) for p in points]


def run_dask(points: list[dict], scheduler: str | None = None, workers: int = 2) -> list[dict]:
    """Each point a task; results in grid order (``cluster.dask_map``)."""
    from vtdsim.simulation.cluster import dask_map

    return dask_map(run_point, points, scheduler, workers)


def plot(results: list[dict], path: str) -> None:
    """One bar per grid point: Gbit/s (or IOPS for nvme)."""
    from vtdsim.simulation.report import pyplot, save

    plt = pyplot(path)
    key = "iops" if all("iops" in r for r in results) else "gbps"
    labels = [f"{i}" for i in range(len(results))]
    fig, ax = plt.subplots(figsize=(max(4, len(results) * 0.6), 3.5))
    ax.bar(labels, [r[key] for r in results], color="tab:blue")
    ax.set_xlabel("grid point (CSV row)")
    ax.set_ylabel(key)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
