"""The NIC wire's fast paths change no figure.  It handles arrivals ahead of the clock where no
other actor can tell (``NicRx.wire``'s lookahead): every figure must equal that of one SimPy
event per packet, on runs that drop (ring empty, DMA engine lagging), share the wire between
flows, stop by time or by I/O count, and translate slowly (walks, a vIOMMU).  Its one-page DMA
(``DmaWorld.page_dma``: the unit's ``translate_page`` - or ``translate_page_again`` for the page
of the packet before in one run - else the engine's ``translate_miss``) must equal
``DmaWorld.dma`` for every packet, on runs that hit and miss the IOTLB, span pages, use ATS, a
vIOMMU, pass-through or no IOMMU."""

import pytest

from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate
from vtdsim.simulation.workloads.common import DmaWorld
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
DMA_RUNS = {
    "page pool, strict": ({"ios": 3000}, {}),
    "page pool, IOTLB misses": ({"ios": 2000}, {"ring": 4096, "flows": 2}),
    "map per packet, 3000-byte frames across pages": ({"ios": 1500},
                                                      {"rx_buffers": "map", "mtu": 3000}),
    "ATS, mlx5 striding": ({"ios": 600, "ats": True}, {"pages_per_desc": 4, "ring": 64}),
    "emulated vIOMMU": ({"ios": 300, "platform": "emulated"}, {"ring": 64}),
    "IOMMU off": ({"ios": 500, "policy": "off"}, {}),
    "pass-through (no IOTLB entry: every packet the miss half)": (
        {"ios": 500, "policy": "passthrough"}, {}),
}


def _run(mode: dict, params: dict) -> dict:
    result = simulate("nic-rx", Mode(**{"policy": "strict"} | mode),
                      make_params("nic-rx", **params), TABLE)
    result.pop("timing")
    return result


def _general(self, size, write):
    """``DmaWorld.page_dma`` as the general path: every packet through ``dma`` (nothing
    remembered, so nothing to forget)."""
    return (lambda addr: self.dma(addr, size, write)), (lambda: None)


# each fast path, switched off: the lookahead (one event per packet) and page_dma (``dma``)
SLOW = {"lookahead": (RUNS, NicRx, False), "page_dma": (DMA_RUNS, DmaWorld, _general)}


@pytest.mark.parametrize(("path", "name"), [(path, name) for path, (runs, *_) in SLOW.items()
                                            for name in runs])
def test_fast_path_changes_no_figure(path, name, monkeypatch):
    runs, owner, slow = SLOW[path]
    fast = _run(*runs[name])
    monkeypatch.setattr(owner, path, slow)
    assert fast == _run(*runs[name])


def test_runs_above_do_drop():
    """The comparison covers the drop paths (else it could not fail there)."""
    assert _run(*RUNS["three flows, small ring, by count"])["dropped"] > 0
    assert _run(*RUNS["400 Gbit/s, jumbo frames"])["dropped"] > 0


def test_runs_above_miss_the_iotlb():
    """The page_dma comparison covers the miss half (else it could not fail there)."""
    assert _run(*DMA_RUNS["page pool, IOTLB misses"])["iotlb_misses_per_4k"] > 0.05
