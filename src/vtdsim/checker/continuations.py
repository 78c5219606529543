"""What the driver code a thread transition runs between two steps touches (its *continuation*):
the reviewed driver functions that touch no driver bookkeeping (``PURE``), only read it
(``READERS``) or write one named field, and a recorder of the functions a continuation called.

A thread transition applies its step and then runs the driver's generators up to their next
step.  ``actors`` charges that code with the driver-bookkeeping location ``("drv",)`` unless the
thread holds a confined lock; here each continuation is judged by the functions it actually
called (``sys.setprofile``): only ``PURE`` ones -> it touched no bookkeeping (its table's
``force_snoop`` apart: ``("pgtable",)``); ``PURE`` and ``READERS`` -> it read bookkeeping but wrote
none; any other Python function -> it may have written some.  Each listed function was read
for what it does outside a confined critical section (``actors.CONFINED_LOCKS``), together with
every function it can call without yielding a step: it reads only its arguments' constant
fields, objects the operation created (an ``IommuIotlbGather``, a ``QiBatch``, a freelist),
immutable profile/capability values - and, for ``READERS``, a domain's attachment lists.
Add a function only after reading it so; a function not listed costs reduction, never
soundness.  Code that builds a fresh object (a dataclass ``__init__``, file ``<string>``) is
pure.

Not covered: C functions called from a listed function (they act on what it passes them: the
review covers that), and code run while a confined lock is held (``actors`` never charges it).
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from types import CodeType

from vtdsim.checker.scenario import Op
from vtdsim.driver import (
    cache_tag,
    domain,
    flush_linux61,
    intel_iommu_ops,
    iommu_core,
    pgtable,
    psi,
    qi,
    steps,
)
from vtdsim.hardware import second_stage

PURE_LEVEL, READ_LEVEL, FIELD_LEVEL, WRITE_LEVEL = 0, 1, 2, 3
# FIELD_LEVEL: code that writes only a named bookkeeping field (``map_pages``: ``has_mappings``);
# any unreviewed code (WRITE_LEVEL) may read or write those fields too (``FIELDS``).
HAS_MAPPINGS = ("drv", "has_mappings")  # DmarDomain.has_mappings (enforce_cache_coherency)
FIELDS = frozenset({HAS_MAPPINGS})
# Code files whose functions build fresh objects (dataclass __init__/__eq__ ...) or resolve a
# function-level import of a module already loaded.
_FRESH = frozenset({"<string>", "<frozen importlib._bootstrap>"})
# Value code: immutable layouts and capability words, descriptor encoding (hardware/).
_VALUE_MODULES = ("bitfield.py", "capabilities.py", "descriptors.py")

# Touch no bookkeeping: the unmap/map call chain (iommu.c), the page-table code
# (DomainPageTable: its fields are fixed at creation but force_snoop), PSI arithmetic, the
# mainline flush walk outside cache_lock, queued-invalidation submission outside q_lock.
PURE: tuple[Callable, ...] = (
    iommu_core.iommu_unmap, iommu_core.__dict__["__iommu_unmap"], iommu_core.iommu_unmap_fast,
    iommu_core._check_aligned, iommu_core.iommu_pgsize, iommu_core.iommu_iotlb_sync,
    iommu_core.iommu_iotlb_gather_add_page, iommu_core._gather_add_syncing,
    iommu_core.__dict__["__iommu_map"],
    iommu_core.iommu_map, *vars(iommu_core.IommuIotlbGather).values(),
    *vars(pgtable.DomainPageTable).values(),
    *(f for f in vars(pgtable).values() if getattr(f, "__module__", "") == pgtable.__name__),
    second_stage.ss_index, second_stage.level_shift, Op.__getitem__,
    *(f for f in vars(psi).values() if getattr(f, "__module__", "") == psi.__name__),
    qi.qi_submit_sync, *vars(qi.QiBatch).values(),
    qi.desc_flush_iotlb, qi.desc_flush_piotlb, qi.desc_flush_dev_iotlb,
    qi.desc_flush_dev_iotlb_pasid, qi._pfsid_fields,
    cache_tag.cache_tag_flush_range, cache_tag._flush_walk,
    domain.DmarDomain.cache_lock, domain.DmarDomain.use_first_level,
    flush_linux61.aligned_nrpages, flush_linux61._iotlb_ih,
    steps.qword_read, steps.qword_reads, steps.QwordReads.__missing__, steps.lock_steps,
)
# Read a domain's attachment (iommu_array, devices), write none.
READERS: tuple[Callable, ...] = (
    domain.DmarDomain.iommus, domain.DmarDomain.domain_id_iommu,
    domain.DmarDomain.has_iotlb_device,
    flush_linux61.iommu_flush_iotlb_psi, flush_linux61.mapping_notify_one,
    flush_linux61.intel_iommu_iotlb_sync_map_linux61,
    flush_linux61.intel_iommu_tlb_sync_linux61, flush_linux61.iommu_flush_dev_iotlb,
)


def _boot_factories() -> list[Callable]:
    """Checker op factories (boot.py) that only read the scenario's name tables (domains,
    pages, devices: fixed once booted) and build the op's generator.  ``_map`` also notes the
    IOVA's page (``System.iova_pages``), which only a dma_unmap's end reads: both touch
    ``("mapped", domain, page)`` (``verdict_locations``).  Not ``_dma_map`` (its IOVA is known
    only at its end) nor the other factories (unreviewed)."""
    from vtdsim.checker import boot  # boot imports the actors, which import this module

    found = [boot._map, boot._unmap, boot._one, boot.factory_for, boot._page_addr,
             boot._context_flip_pri]
    return found + [f for f in boot.OP_FACTORIES.values()
                    if f.__name__ in ("<lambda>", "factory")]


def _codes(obj) -> list[CodeType]:
    """The code of a function, method, property or cached function, with every code object
    nested in it (comprehensions, closures: part of its body)."""
    for attr in ("fget", "__wrapped__", "__func__"):
        if getattr(obj, attr, None) is not None:
            obj = getattr(obj, attr)
    code = getattr(obj, "__code__", None)
    if code is None:
        return []
    found = [c for cell in obj.__closure__ or () for c in _codes(cell.cell_contents)
             if callable(cell.cell_contents)]
    todo = [code]
    while todo:
        c = todo.pop()
        found.append(c)
        todo += [k for k in c.co_consts if isinstance(k, CodeType)]
    return found


def _ops_methods() -> tuple[list, list, list]:
    """The Intel ops' unmap/map entry points and flush hooks (intel_iommu_ops.py): pure but
    ``iotlb_sync_map`` (reads the domain's flag) and ``map_pages`` (sets ``has_mappings``)."""
    methods = vars(intel_iommu_ops.IntelIommuDriver)
    pure = [methods[n] for n in ("unmap", "map", "unmap_pages", "iotlb_sync", "_free_after",
                                         "mainline")]
    return pure, [methods["iotlb_sync_map"]], [methods["map_pages"]]


def _memoised() -> list[Callable]:
    """The memoised functions (``functools.lru_cache``) of the loaded vtdsim modules.  A cache
    hit runs no Python code, so a miss is judged as a hit: pure - a memoised function's
    result is reused without running it, so one that wrote bookkeeping would be wrong
    already.  Judged by what a miss runs, a continuation's footprint would depend on what
    the process computed before (seen: ``qi._iotlb_desc``)."""
    found = []
    for name, module in list(sys.modules.items()):
        if name.startswith("vtdsim.") and module is not None:
            found += [f for f in vars(module).values()
                      if hasattr(f, "cache_info") and hasattr(f, "__wrapped__")
                      and getattr(f, "__module__", "") == name]
    return found


@functools.cache
def levels() -> dict[CodeType, int]:
    """Code object -> PURE_LEVEL or READ_LEVEL (any other: WRITE_LEVEL)."""
    pure, reading, fields = _ops_methods()
    found = {}
    for level, funcs in ((FIELD_LEVEL, fields), (READ_LEVEL, [*READERS, *reading]),
                         (PURE_LEVEL, [*PURE, *pure, *_boot_factories(), *_memoised(),
                                       Recorder.__exit__])):
        for f in funcs:
            for code in _codes(f):
                found[code] = level
    return found


class Recorder:
    """Records the highest level among the Python functions called while active."""

    __slots__ = ("level", "_previous", "_levels", "_collecting")

    def __init__(self) -> None:
        self.level = PURE_LEVEL
        self._previous = None
        self._levels = levels()
        self._collecting = False

    def __enter__(self) -> Recorder:
        # No cyclic garbage collection while recording: it may finalise a suspended driver
        # generator of an abandoned execution here, and its close() would count as called by
        # this continuation - when the collector runs depends on all this process allocated
        # before, so a scenario's DPOR execution count would depend on what ran before it
        # (seen: 691 executions instead of 690 in a Dask worker).
        self._collecting = gc.isenabled()
        gc.disable()
        self._previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc) -> None:
        sys.setprofile(self._previous)
        if self._collecting:
            gc.enable()

    def _profile(self, frame, event: str, arg) -> None:
        if event != "call":
            return
        code = frame.f_code
        level = self._levels.get(code)
        if level is None:
            name = code.co_filename
            pure = name in _FRESH or name.endswith(_VALUE_MODULES) and "/hardware/" in name
            level = PURE_LEVEL if pure else WRITE_LEVEL
        if level > self.level:
            self.level = level
