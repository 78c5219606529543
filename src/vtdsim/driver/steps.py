"""Atomic steps a driver operation yields (the vocabulary shared by the direct executor and the
interleaving checker).

A driver operation is a generator: it yields one step per atomic action the real driver performs
(a store to a table entry, a clflush, an MMIO write, a wait, a lock) and receives the step's
result via ``send`` (the value read, for reads; ``None`` otherwise).  Only the steppers
(``driver.executor`` and ``checker``) run generators, and they check every yielded value is a
``Step``.

``why`` carries the Linux function (or spec rule) the step comes from; it is what a
counterexample prints.

Not modelled: CPU memory ordering beyond program order (x86-TSO store buffering is hidden by the
barriers Linux uses around every table update and IQT write).
"""

from __future__ import annotations

from functools import lru_cache

from vtdsim.records import record


@record  # built once per PTE store, descriptor or trace event
class Step:
    """Base class of every atomic step."""

    why: str = ""


CPU_WRITE_SIZES = (1, 2, 4, 8, 16, 32)


@record
class CpuWrite(Step):
    """A CPU store of ``size`` bytes (1, 2, 4 or 8) to physical memory - a table entry, a PTE -
    or the ``memcpy`` of a whole 16- or 32-byte invalidation descriptor into its queue slot
    (``value`` then holds qword i in bits 64i+63:64i).  Lands in the CPU cache (see
    ``Clflush``)."""

    addr: int = 0
    value: int = 0
    size: int = 8


@record
class CpuCmpxchg(Step):
    """``cmpxchg64``: atomically replace the qword at ``addr`` with ``new`` if it equals
    ``expected``; the stepper sends back the old value (Linux installs new page-table pages this
    way in ``pfn_to_dma_pte``, so two mappers racing for one slot both stay correct)."""

    addr: int = 0
    expected: int = 0
    new: int = 0


@record
class CpuZero(Step):
    """Zero ``size`` bytes from ``addr`` with CPU stores (a freshly allocated table page:
    ``alloc_pgtable_page`` with __GFP_ZERO).  The zeroes sit in the CPU cache until flushed."""

    addr: int = 0
    size: int = 4096


@record
class CpuRead(Step):
    """A CPU load; the stepper sends back the value (little-endian int of ``size`` bytes)."""

    addr: int = 0
    size: int = 8


@record
class Clflush(Step):
    """clflush of the cache line holding ``addr`` (Linux ``clflush_cache_range``)."""

    addr: int = 0


@record
class ClflushRange(Step):
    """``clflush_cache_range(addr, size)``: every line of the range (``__iommu_flush_cache``)."""

    addr: int = 0
    size: int = 0


@record
class Wbinvd(Step):
    """WBINVD: write back and invalidate the CPU caches.  Under KVM without non-coherent DMA
    registered it is a no-op (seed 004); the stepper decides through the platform model."""


@record
class MmioWrite(Step):
    """A register write to remapping unit ``unit`` (index in the platform's unit list)."""

    unit: int = 0
    offset: int = 0
    value: int = 0
    size: int = 4


@record
class MmioRead(Step):
    """A register read; the stepper sends back the value."""

    unit: int = 0
    offset: int = 0
    size: int = 4


@record
class WaitQword(Step):
    """Poll until the qword at ``addr`` (CPU view) equals ``value`` under ``mask``; the step
    blocks the thread until then (``qi_submit_sync`` polling its wait-descriptor status, or
    ``GSTS`` polling expressed through ``WaitRegister``)."""

    addr: int = 0
    value: int = 0
    mask: int = 0xFFFF_FFFF_FFFF_FFFF


@record
class WaitRegister(Step):
    """Poll register ``offset`` of ``unit`` until ``(reg & mask) == value`` (GSTS after a GCMD
    write, CCMD.ICC / IOTLB.IVT after a register-based invalidation)."""

    unit: int = 0
    offset: int = 0
    mask: int = 0
    value: int = 0
    size: int = 4


@record
class Lock(Step):
    """Take a spinlock (``iommu->lock``, ``qi->q_lock``, ``domain->cache_lock``, the per-CPU
    flush-queue lock ...).  Blocks while another thread holds it."""

    name: str = ""


@record
class Unlock(Step):
    name: str = ""


class QwordReads(dict):
    """The ``CpuRead`` of each qword one caller (``why``) reads, built once per address:
    page walks read the same table entries again and again, and a step is an immutable
    value.  ``reads[addr]`` is one dict lookup (a walk's commonest work after the yield);
    past ``QWORD_READS_KEPT`` addresses the table starts afresh (a bounded cache, as an LRU
    would be, without an LRU's bookkeeping on every hit)."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        super().__init__()
        self.why = why

    def __missing__(self, addr: int) -> CpuRead:
        if len(self) >= QWORD_READS_KEPT:
            self.clear()
        step = self[addr] = CpuRead(addr=addr, size=8, why=self.why)
        return step


QWORD_READS_KEPT = 4096
_QWORD_READS: dict[str, QwordReads] = {}


def qword_reads(why: str) -> QwordReads:
    """The table of ``why``'s qword reads (one per caller name, shared)."""
    reads = _QWORD_READS.get(why)
    if reads is None:
        reads = _QWORD_READS[why] = QwordReads(why)
    return reads


def qword_read(addr: int, why: str) -> CpuRead:
    """The ``CpuRead`` of the qword at ``addr`` for ``why`` (``qword_reads(why)[addr]``)."""
    return qword_reads(why)[addr]


@lru_cache(maxsize=256)
def lock_steps(name: str, why: str) -> tuple[Lock, Unlock]:
    """The take and release steps of lock ``name`` for caller ``why``: immutable values, so
    a hot caller builds them once."""
    return Lock(name=name, why=why), Unlock(name=name, why=why)


@record
class FreePage(Step):
    """Give a physical page back to the allocator: after this, any DMA reaching it is a
    use-after-free (checker property ``dma_after_free``).  ``what`` says what it was
    ("iova data page", "page-table page")."""

    addr: int = 0
    what: str = ""


@record
class AllocPage(Step):
    """Take a physical page from the allocator; the stepper sends back its address."""

    what: str = ""


@record
class ReuseIova(Step):
    """The IOVA range goes back to the IOVA allocator and may be handed out again."""

    iova: int = 0
    size: int = 0


@record
class Annotate(Step):
    """No effect on the model: marks a point of interest (e.g. 'unmap complete') that
    properties and counterexamples refer to.  ``event`` is a short keyword, ``data`` a tuple."""

    event: str = ""
    data: tuple = ()


def check_step(obj: object, where: str) -> Step:
    """Steppers call this on every yielded value: a non-Step is a model bug, reported with the
    generator that produced it."""
    from vtdsim.errors import ModelError

    if not isinstance(obj, Step):
        raise ModelError(f"{where} yielded {obj!r}, which is not a driver Step")
    return obj
