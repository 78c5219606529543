"""The NIC wire handles arrivals ahead of the clock where no other actor can tell
(``NicRx.wire``'s lookahead): every figure must equal that of one SimPy event per packet, on
runs that drop (ring empty, DMA engine lagging), share the wire between flows, stop by time
or by I/O count, and translate slowly (walks, a vIOMMU)."""

import pytest

from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate
from vtdsim.simulation.workloads.nic import NicRx

TABLE = constants.load()
RUNS = {
    "default, by time": ({"duration_ns": 400_000}, {}),
    "three flows, small ring, by count": ({"ios": 3000}, {"flows": 3, "ring": 32}),
    "400 Gbit/s, jumbo frames": ({"duration_ns": 200_000},
                                 {"link_gbps": 400.0, "mtu": 9000, "ring": 64}),
    "map per packet, mlx5 striding": ({"ios": 1500},
                                      {"rx_buffers": "map", "pages_per_desc": 4, "ring": 64}),
    "nested vIOMMU, lazy": ({"ios": 600, "platform": "nested", "policy": "lazy",
                             "profile": "linux-6.12"}, {"ring": 64, "link_gbps": 200.0}),
}


def _run(mode: dict, params: dict) -> dict:
    result = simulate("nic-rx", Mode(**{"policy": "strict"} | mode),
                      make_params("nic-rx", **params), TABLE)
    result.pop("timing")
    return result


@pytest.mark.parametrize("name", list(RUNS))
def test_lookahead_changes_no_figure(name, monkeypatch):
    mode, params = RUNS[name]
    ahead = _run(mode, params)
    monkeypatch.setattr(NicRx, "lookahead", False)
    assert ahead == _run(mode, params)


def test_runs_above_do_drop():
    """The comparison covers the drop paths (else it could not fail there)."""
    assert _run(*RUNS["three flows, small ring, by count"])["dropped"] > 0
    assert _run(*RUNS["400 Gbit/s, jumbo frames"])["dropped"] > 0
