"""What a request flow produces besides an entry: the fills it may cache, the fault that ends
it, and the fixed results (pass-through, a translation completion granting nothing) - the
vocabulary the flow modules share (VT-d spec 3, 4.2.3, 6.1).

Not modelled: nothing of its own (see ``translation/__init__.py``).
"""

from __future__ import annotations

from typing import Any

from vtdsim.hardware.caches.iotlb import STAGE_SS, IotlbEntry
from vtdsim.records import record

INTERRUPT_BASE, INTERRUPT_SIZE = 0xFEE0_0000, 0x10_0000

# Page-table faults a translation request answers with R=W=0 instead of recording (4.2.3).
WALK_REASONS = frozenset(
    {0x4, 0x5, 0x6, 0x7, 0xC, 0x71, 0x72, 0x79, 0x7A, 0x80, 0x81, 0x82, 0x83, 0x85, 0x86}
)



@record
class Fill:
    """A cache entry hardware could insert now; ``writes`` are the A/D stores it makes with it."""

    cache: str  # "context_cache", "pasid_cache", "pscache", "iotlb"
    key: Any
    entry: Any
    writes: tuple[tuple[int, int], ...] = ()


class Abort(Exception):
    """Internal: a fault ends the flow.  Never escapes the translation package."""

    def __init__(self, reason: int):
        super().__init__(reason)
        self.reason = reason


def pass_through(addr: int, did: int, pasid: int, stage: str) -> IotlbEntry:
    page = addr & ~0xFFF
    return IotlbEntry(did, pasid, page, 1, page, True, True, True, False, stage)


def no_access(addr: int) -> IotlbEntry:
    """A translation completion granting nothing (R=W=0) for the page of ``addr``."""
    page = addr & ~0xFFF
    return IotlbEntry(0, 0, page, 1, 0, False, False, False, False, STAGE_SS, present=False)


def overlaps_interrupt_range(base: int, size: int) -> bool:
    return base < INTERRUPT_BASE + INTERRUPT_SIZE and base + size > INTERRUPT_BASE



def replay_reason(reason: int, write: bool) -> int:
    """A negative entry stores the reason of a read; legacy permission faults split by type."""
    if reason in (0x5, 0x6):
        return 0x5 if write else 0x6
    if reason in (0x85, 0x86):
        return 0x85 if write else 0x86
    return reason
