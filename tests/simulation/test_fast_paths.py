"""The timed simulator's per-packet fast paths leave every figure as the general path makes
it: the wire's one-page DMA (``DmaWorld.page_dma``: the unit's ``translate_cached`` hit,
else the engine's ``translate_miss``) against ``DmaWorld.dma`` for every packet, on runs
that hit and miss the IOTLB, span pages, use ATS, a vIOMMU, or no IOMMU."""

import pytest

from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate
from vtdsim.simulation.workloads.common import DmaWorld

TABLE = constants.load()
RUNS = {
    "page pool, strict": ({"ios": 3000}, {}),
    "page pool, IOTLB misses": ({"ios": 2000}, {"ring": 4096, "flows": 2}),
    "map per packet, 3000-byte frames across pages": ({"ios": 1500},
                                                      {"rx_buffers": "map", "mtu": 3000}),
    "ATS, mlx5 striding": ({"ios": 600, "ats": True}, {"pages_per_desc": 4, "ring": 64}),
    "emulated vIOMMU": ({"ios": 300, "platform": "emulated"}, {"ring": 64}),
    "IOMMU off": ({"ios": 500, "policy": "off"}, {}),
}


def _run(mode: dict, params: dict) -> dict:
    result = simulate("nic-rx", Mode(**{"policy": "strict"} | mode),
                      make_params("nic-rx", **params), TABLE)
    result.pop("timing")
    return result


def _general(self, size, write):
    return lambda addr: self.dma(addr, size, write)


@pytest.mark.parametrize("name", list(RUNS))
def test_page_dma_changes_no_figure(name, monkeypatch):
    mode, params = RUNS[name]
    fast = _run(mode, params)
    monkeypatch.setattr(DmaWorld, "page_dma", _general)
    assert fast == _run(mode, params)


def test_runs_above_miss_the_iotlb():
    """The comparison covers the miss half (else it could not fail there)."""
    assert _run(*RUNS["page pool, IOTLB misses"])["iotlb_misses_per_4k"] > 0.05
