"""Twin-unit runs for fast paths: the same steps on two worlds, one taking the fast path and
one the full flow, compared after every step (results and the whole observable state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from vtdsim.hardware.translation.miss import FS_MISS_READS


def run_twins(make: Callable[[], object], apply: Callable[..., object],
              ops: Iterable[tuple]) -> None:
    """``make()`` builds a world with a ``state()``; ``apply(world, *step, fast=...)`` runs
    one step and returns its results."""
    fast, full = make(), make()
    for step in ops:
        assert apply(fast, *step, fast=True) == apply(full, *step, fast=False), step
        assert fast.state() == full.state(), step


def evict_nth(unit, n: int) -> None:
    """Evict the ``n``-th (modulo) of the unit's cached entries (hardware may, spec 6.1)."""
    cached = unit.cached()
    if cached:
        unit.evict(*cached[n % len(cached)])


def page_request(unit, sid: int, iova: int, write: bool):
    """A request to page ``iova`` as ``DmaWorld.page_dma`` makes it: ``unit.translate_page``
    at a frame's offset in the page (it reads the page number alone), which answers an IOTLB
    hit or the page's remembered miss, else ``unit.translate_missed`` of the page (nothing
    changed before it).  An answer is priced by whether it hit (``DmaWorld.page_dma``):
    a hit reads nothing, its other answer FS_MISS_READS structures - checked here."""
    hits, reads = unit.iotlb.stats.hit, unit.stats["walk_reads"]
    entry = unit.translate_page(sid, iova + 0x7C0, write)
    if entry is None:
        return unit.translate_missed(sid, iova, write)
    hit = unit.iotlb.stats.hit != hits
    assert unit.stats["walk_reads"] - reads == (0 if hit else FS_MISS_READS)
    return entry
