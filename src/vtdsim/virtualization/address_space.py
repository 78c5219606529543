"""QEMU's per-device address space (``VTDAddressSpace``) with its IOMMU notifiers, the
``iova_tree`` of what was MAPped, and the shadow page walk (QEMU hw/i386/intel_iommu.c
``vtd_page_walk``, ``vtd_page_walk_level``, ``vtd_page_walk_one``, ``vtd_address_space_sync``,
``vtd_address_space_unmap``, ``vtd_iommu_replay``; reference section 5).

The walk reads the guest's second-stage table from guest memory the way QEMU does - fresh,
never through the emulated unit's caches - and turns each present leaf into a MAP event and
each non-present entry into an UNMAP event covering the entry's whole range; the iova_tree
filters them: an identical MAP is skipped, a changed translation becomes UNMAP then MAP, an
UNMAP of a range never mapped is skipped.  Every PTE read is counted (``walk_reads``).

Not modelled: reserved-bit checks during the walk (QEMU skips such entries silently; the
model reads them as the layout decodes them), first-stage walks (QEMU 10.0 does not shadow
first-stage tables: x-flts devices are emulated or nested), the dirty-tracking variant of
the whole-space unmap (December 2025).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from vtdsim.hardware import second_stage as ss

MAP, UNMAP, DEVIOTLB_UNMAP = "map", "unmap", "deviotlb_unmap"


@dataclass(frozen=True)
class IommuEvent:
    """``IOMMUTLBEvent``: what a notifier receives.  ``perm`` is (read, write)."""

    kind: str
    iova: int
    size: int
    gpa: int = 0
    perm: tuple[bool, bool] = (False, False)


class IovaTree:
    """QEMU's ``iova_tree`` of one address space: non-overlapping MAPped ranges."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._maps: dict[int, IommuEvent] = {}

    def find(self, iova: int, size: int) -> IommuEvent | None:
        """The first mapping overlapping [iova, iova + size), or None."""
        i = bisect.bisect_right(self._bases, iova) - 1
        for base in self._bases[max(i, 0):]:
            if base >= iova + size:
                return None
            m = self._maps[base]
            if base + m.size > iova:
                return m
        return None

    def insert(self, event: IommuEvent) -> None:
        bisect.insort(self._bases, event.iova)
        self._maps[event.iova] = event

    def remove(self, iova: int, size: int) -> int:
        """Remove every mapping overlapping the range (``iova_tree_remove``); how many."""
        n = 0
        while (m := self.find(iova, size)) is not None:
            self._bases.remove(m.iova)
            del self._maps[m.iova]
            n += 1
        return n

    def __len__(self) -> int:
        return len(self._maps)


@dataclass
class Notifier:
    """One ``IOMMUNotifier``: the event kinds it takes and where they go; ``switched`` is
    told when the device's region changes (a memory listener's region add / del)."""

    kinds: frozenset[str]
    deliver: Callable[[IommuEvent], None]
    switched: Callable[[bool], None] | None = None


@dataclass
class VtdAddressSpace:
    """One device's address space (no PASID: QEMU 7.2/10.0 shadow only the RID's)."""

    sid: int
    notifiers: list[Notifier] = field(default_factory=list)
    iova_tree: IovaTree = field(default_factory=IovaTree)
    use_iommu: bool = False  # which memory region is enabled (vtd_switch_address_space)

    def has(self, kind: str) -> bool:
        return any(kind in n.kinds for n in self.notifiers)

    def notify(self, event: IommuEvent, stats: Counter) -> None:
        """``memory_region_notify_iommu``: every notifier that takes this kind."""
        for n in self.notifiers:
            if event.kind in n.kinds:
                stats["vmm_notify_" + event.kind] += 1
                n.deliver(event)


def walk_one(vas: VtdAddressSpace, event: IommuEvent, notify_unmap: bool,
             stats: Counter) -> None:
    """``vtd_page_walk_one``: filter a walk's event through the iova_tree, then notify."""
    tree = vas.iova_tree
    mapped = tree.find(event.iova, event.size)
    if event.kind == MAP:
        if same_mapping(mapped, event):
            stats["vmm_walk_skipped_same"] += 1
            return
        if mapped is not None:
            # A changed translation: UNMAP the range first (not atomic: a short window
            # without mapping, as QEMU's comment notes), then MAP.
            tree.remove(event.iova, event.size)
            vas.notify(IommuEvent(UNMAP, event.iova, event.size), stats)
        tree.insert(event)
        vas.notify(event, stats)
        return
    if not notify_unmap or mapped is None:
        stats["vmm_walk_skipped_unmapped"] += 1
        return
    tree.remove(event.iova, event.size)
    vas.notify(event, stats)


def same_mapping(mapped: IommuEvent | None, event: IommuEvent) -> bool:
    """``vtd_page_walk_one``'s memcmp: the tree holds this very mapping - range, GPA and
    permissions - so the MAP is skipped; any difference is a changed translation."""
    return mapped == event


@dataclass(frozen=True)
class SsRoot:
    """Where a device's second-stage table is: root GPA and depth, the domain's DID."""

    did: int
    root: int
    levels: int


def page_walk(memory, root: SsRoot, start: int, end: int, emit: Callable[[IommuEvent], None],
              stats: Counter, quiet: Callable[[int, int], bool] | None = None) -> None:
    """``vtd_page_walk`` over [start, end): one event per entry the range touches.
    ``quiet(lo, hi)``: True when every UNMAP inside [lo, hi) would be skipped (``walk_one``:
    nothing MAPped there, or UNMAPs not sent) - a run of non-present entries there is then
    counted as skipped without an event each (the same outcome, without the calls)."""
    end = min(end, 1 << ss.address_width(root.levels))
    if start < end:
        walk = _Walk(memory, emit, stats, quiet or (lambda _lo, _hi: False))
        walk.level(root.root, root.levels, start, end, (True, True))


@dataclass
class _Walk:
    memory: object
    emit: Callable[[IommuEvent], None]
    stats: Counter
    quiet: Callable[[int, int], bool]

    def level(self, table: int, level: int, start: int, end: int,
              perm: tuple[bool, bool]) -> None:
        """``vtd_page_walk_level``: the table's entries covering [start, end), read in one
        pass (each entry one read, as QEMU's ``vtd_get_pte``)."""
        size = ss.page_size(level)
        first = start & ~(size - 1)
        count = (end - first + size - 1) // size
        ptes = self.memory.read_qwords(table + 8 * ss.ss_index(first, level), count)
        self.stats["vmm_walk_reads"] += count
        k = 0
        while k < count:
            iova, pte = first + k * size, ptes[k]
            if not pte & 3:
                k = self._not_present_run(ptes, k, first, size, level)
                continue
            read, write = perm[0] and bool(pte & 1), perm[1] and bool(pte & 2)
            if ss.is_leaf(pte, level):
                gpa = ss.SS_PTE.get(pte, "addr") << 12 & ~(size - 1)
                self.emit(IommuEvent(MAP, iova, size, gpa, (read, write)))
            else:
                nxt = ss.SS_PTE.get(pte, "addr") << 12
                self.level(nxt, level - 1, max(iova, start), min(iova + size, end),
                           (read, write))
            k += 1

    def _not_present_run(self, ptes, k: int, first: int, size: int, level: int) -> int:
        """The non-present entries from ``k`` on: UNMAP each (``not_present``), unless the
        whole run is quiet.  Returns the index after the run."""
        j = k
        while j < len(ptes) and not ptes[j] & 3:
            j += 1
        lo, hi = first + k * size, first + j * size
        if self.quiet(lo, hi):
            self.stats["vmm_walk_skipped_unmapped"] += j - k
            return j
        for i in range(k, j):
            not_present(self.emit, first + i * size, size, level)
        return j


def not_present(emit, iova: int, size: int, level: int) -> None:
    """``vtd_page_walk_level`` on a non-present entry: UNMAP its whole range, whatever its
    level - an entry above the leaf level stands for a whole page directory (QEMU's 2018
    "send PSI always even if across PDEs", a SECURITY IMPLICATION fix: skipping it left
    VFIO's stale mappings)."""
    emit(IommuEvent(UNMAP, iova, size))
