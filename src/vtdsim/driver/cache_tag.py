"""Cache tags, Linux drivers/iommu/intel/cache.c (v6.10+: ``cache_tag_assign_domain``,
``cache_tag_unassign_domain``, ``cache_tag_flush_range``, ``cache_tag_flush_range_np``,
``cache_tag_flush_all``, ``qi_batch_*``), as 6.12 and mainline have them (profile switches
``cache_tag_insert``, ``cache_tag_flush_all_walk``); Linux 6.1 has no tags (flush_linux61.py).

A tag says which cache may hold translations of the domain: an IOTLB per (unit, DID, PASID) or
a device-TLB per (device, DID, PASID); NESTING_* tags sit on a nest parent and carry the
nested domain's DID.  The flush loop walks the tags under ``domain->cache_lock`` and queues
descriptors in the domain's qi_batch, submitting when 16 are queued and whenever the walk moves
to another unit (tags of one unit are kept adjacent by the insertion rule).

Not modelled: SVA domains (DID 1 tags), register-based invalidation on units without QI (every
unit modelled has QI), the tracepoints' text (``Annotate`` steps carry the same fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from vtdsim.driver import qi
from vtdsim.driver.device import IOMMU_NO_PASID, DeviceInfo
from vtdsim.driver.domain import DmarDomain
from vtdsim.driver.psi import calculate_psi_aligned_address, psi_needs_dsi
from vtdsim.driver.steps import Annotate, Lock, Unlock, lock_steps
from vtdsim.errors import ModelError

CACHE_TAG_IOTLB = "iotlb"
CACHE_TAG_DEVTLB = "devtlb"
CACHE_TAG_NESTING_IOTLB = "nesting_iotlb"
CACHE_TAG_NESTING_DEVTLB = "nesting_devtlb"
IOTLB_TYPES = (CACHE_TAG_IOTLB, CACHE_TAG_NESTING_IOTLB)
DEVTLB_TYPES = (CACHE_TAG_DEVTLB, CACHE_TAG_NESTING_DEVTLB)

MAX_AGAW_PFN_WIDTH = 52  # "everything" mask: 64 - VTD_PAGE_SHIFT
ULONG_MAX = (1 << 64) - 1


@dataclass(eq=False)
class CacheTag:
    """``struct cache_tag``; ``dev`` is the device for device-TLB tags, None for IOTLB tags
    (Linux points those at the unit's own device, which the trace prints)."""

    type: str
    iommu: Any
    dev: DeviceInfo | None
    did: int
    pasid: int
    users: int = 1

    def describe(self) -> str:
        who = self.dev.name if self.dev is not None else self.iommu.name
        return f"{self.iommu.name}/{who} type {self.type} did {self.did} pasid {self.pasid}"


def cache_tag_match(tag: CacheTag, did: int, iommu, dev: DeviceInfo, pasid: int, kind: str):
    """``cache_tage_match``: same type, DID and PASID, and the same unit (IOTLB kinds) or the
    same device (device-TLB kinds)."""
    if tag.type != kind or tag.did != did or tag.pasid != pasid:
        return False
    if kind in IOTLB_TYPES:
        return tag.iommu is iommu
    return tag.dev is dev


def cache_tag_assign(domain: DmarDomain, did: int, dev: DeviceInfo, pasid: int, kind: str):
    """``cache_tag_assign``: bump a matching tag, else add the new one - 6.12 at the tail
    (``list_add_tail``), mainline right after the last tag of the same unit (at the head when
    the unit has none), so each unit's tags stay adjacent and one batch serves them."""
    yield Lock(name=domain.cache_lock, why="cache_tag_assign")
    at_tail = dev.iommu.profile.cache_tag_insert == "tail"
    insert_at = len(domain.cache_tags) if at_tail else 0
    for i, tag in enumerate(domain.cache_tags):
        if cache_tag_match(tag, did, dev.iommu, dev, pasid, kind):
            tag.users += 1
            yield Unlock(name=domain.cache_lock, why="cache_tag_assign")
            yield _trace("cache_tag_assign", tag)
            return tag
        if tag.iommu is dev.iommu and not at_tail:
            insert_at = i + 1
    tag = CacheTag(kind, dev.iommu, dev if kind in DEVTLB_TYPES else None, did, pasid)
    domain.cache_tags.insert(insert_at, tag)
    yield Unlock(name=domain.cache_lock, why="cache_tag_assign")
    yield _trace("cache_tag_assign", tag)
    return tag


def cache_tag_unassign(domain: DmarDomain, did: int, dev: DeviceInfo, pasid: int, kind: str):
    """``cache_tag_unassign``: drop one user; the tag goes away with its last user.  The trace
    prints ``ref`` before the decrement."""
    yield Lock(name=domain.cache_lock, why="cache_tag_unassign")
    for tag in domain.cache_tags:
        if cache_tag_match(tag, did, dev.iommu, dev, pasid, kind):
            yield _trace("cache_tag_unassign", tag)
            tag.users -= 1
            if tag.users == 0:
                domain.cache_tags.remove(tag)
            break
    yield Unlock(name=domain.cache_lock, why="cache_tag_unassign")


def _trace(event: str, tag: CacheTag) -> Annotate:
    return Annotate(event=event, data=(tag.describe(), tag.users))


def domain_get_id_for_dev(domain: DmarDomain, dev: DeviceInfo) -> int:
    return domain.domain_id_iommu(dev.iommu)


def _assign_pair(domain, did, dev, pasid, iotlb_kind, devtlb_kind):
    yield from cache_tag_assign(domain, did, dev, pasid, iotlb_kind)
    # A device-TLB tag only while ATS is enabled (hence mainline enables ATS before this).
    if dev.ats_enabled:
        yield from cache_tag_assign(domain, did, dev, pasid, devtlb_kind)


def _unassign_pair(domain, did, dev, pasid, iotlb_kind, devtlb_kind):
    yield from cache_tag_unassign(domain, did, dev, pasid, iotlb_kind)
    # Asymmetry kept from Linux: the DEVTLB tag is dropped only if ATS is enabled *now*.
    if dev.ats_enabled:
        yield from cache_tag_unassign(domain, did, dev, pasid, devtlb_kind)


def cache_tag_assign_domain(domain: DmarDomain, dev: DeviceInfo, pasid: int = IOMMU_NO_PASID):
    """``cache_tag_assign_domain``: IOTLB (+ DEVTLB) tags; a nested domain also puts
    NESTING_* tags, with its own DID, on its parent so S2 changes reach the nested caches."""
    did = domain_get_id_for_dev(domain, dev)
    yield from _assign_pair(domain, did, dev, pasid, CACHE_TAG_IOTLB, CACHE_TAG_DEVTLB)
    if domain.type == "nested":
        yield from _assign_pair(domain.s2_domain, did, dev, pasid,
                                CACHE_TAG_NESTING_IOTLB, CACHE_TAG_NESTING_DEVTLB)


def cache_tag_unassign_domain(domain: DmarDomain, dev: DeviceInfo, pasid: int = IOMMU_NO_PASID):
    did = domain_get_id_for_dev(domain, dev)
    yield from _unassign_pair(domain, did, dev, pasid, CACHE_TAG_IOTLB, CACHE_TAG_DEVTLB)
    if domain.type == "nested":
        yield from _unassign_pair(domain.s2_domain, did, dev, pasid,
                                  CACHE_TAG_NESTING_IOTLB, CACHE_TAG_NESTING_DEVTLB)


# -- flushing ---------------------------------------------------------------------------------
def _flush_iotlb(domain: DmarDomain, profile, tag: CacheTag, addr: int, pages: int, mask: int,
                 ih: int) -> qi.Desc:
    """``cache_tag_flush_iotlb``'s descriptor (the caller queues it in the batch): type 6 for
    FS/nested domains (PASID-selective for "everything"), else a PSI - or a DSI without PSI
    support, above MAMV, or for everything."""
    if domain.use_first_level:
        # 6.12 hands the page count on (mask 52 stays a type-6 PSI); mainline makes it
        # PASID-selective (``cache_tag_flush_all_walk``).
        everything = pages == -1 or (mask >= MAX_AGAW_PFN_WIDTH
                                     and not profile.cache_tag_flush_all_walk)
        return qi.desc_flush_piotlb(tag.did, tag.pasid, addr, -1 if everything else pages, ih)
    if pages == -1 or psi_needs_dsi(tag.iommu.caps, mask):
        return qi.desc_flush_iotlb(tag.iommu, tag.did, 0, 0, qi.DMA_TLB_DSI_FLUSH)
    # Before 6b38a108eeb3 (Oct 2025) the queued builder dropped IH: ``ih_on_wire``.
    ih = ih if profile.ih_on_wire else 0
    return qi.desc_flush_iotlb(tag.iommu, tag.did, addr, mask, qi.DMA_TLB_PSI_FLUSH, ih=ih)


def _flush_devtlb(batch: qi.QiBatch, tag: CacheTag, addr: int, mask: int):
    """``cache_tag_flush_devtlb_psi``: type 3 for the RID, type 8 for a PASID; twice with the
    QAT quirk; nothing while translation is disabled (GCMD.TE clear: spec recommendation)."""
    info = tag.dev
    if not tag.iommu.translation_enabled:
        return
    if tag.pasid == IOMMU_NO_PASID:
        desc = qi.desc_flush_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, addr, mask)
    else:
        desc = qi.desc_flush_dev_iotlb_pasid(
            info.sid, info.pfsid, tag.pasid, info.ats_qdep, addr, mask)
    for _ in range(2 if info.dtlb_extra_inval else 1):
        yield from batch.add(tag.iommu, desc)


@lru_cache(maxsize=4096)
def _flush_trace(event: str, *data) -> Annotate:
    """A flush's trace event per tag, built once per (tag, range) (a step is an immutable
    value): the same ranges are flushed again and again once IOVAs are recycled."""
    return Annotate(event=event, data=data)


def _flush_walk(domain: DmarDomain, profile, why: str, per_tag):
    """Walk the tags under ``cache_lock``; ``per_tag(batch, tag)`` queues that tag's work in
    the domain's batch, which is submitted when full, when the walk reaches another unit's
    tags, and at the end (``qi_batch_flush_descs``)."""
    batch = qi.QiBatch(profile.qi_batch_size)
    lock, unlock = lock_steps(domain.cache_lock, why)  # built once: every unmap flushes
    yield lock
    for tag in list(domain.cache_tags):
        yield from per_tag(batch, tag)
    yield from batch.flush()
    yield unlock


def cache_tag_flush_range(domain: DmarDomain, profile, start: int, end: int, ih: int):
    """``cache_tag_flush_range``: invalidate [start, end] (inclusive) after mappings changed.
    Its own walk (``_flush_walk``'s, written out): every strict unmap runs it, and each step
    of its submissions would pass through the walk's frame and each tag's.  It stays a
    generator of its own: checker mutation rules find the submissions made *within*
    ``cache_tag_flush_range`` on the call stack."""
    if start == 0 and end == ULONG_MAX:
        addr, pages, mask = 0, -1, MAX_AGAW_PFN_WIDTH
    else:
        addr, mask = calculate_psi_aligned_address(start, end)
        pages = 1 << mask
    devtlb_addr, devtlb_mask = addr, mask
    batch = qi.QiBatch(profile.qi_batch_size)
    lock, unlock = lock_steps(domain.cache_lock, "cache_tag_flush_range")
    yield lock
    for tag in list(domain.cache_tags):
        if tag.type in IOTLB_TYPES:
            yield from batch.add(tag.iommu, _flush_iotlb(domain, profile, tag, addr, pages, mask,
                                                         ih))
        else:
            if tag.type == CACHE_TAG_NESTING_DEVTLB:
                # Which nested translations an S2 change affects is unknown: flush the whole
                # device-TLB - and, as in Linux, every later device-TLB tag of this walk too.
                devtlb_addr, devtlb_mask = 0, MAX_AGAW_PFN_WIDTH
            yield from _flush_devtlb(batch, tag, devtlb_addr, devtlb_mask)
        yield _flush_trace("cache_tag_flush_range", tag.describe(), start, end, addr, mask)
    yield from batch.flush()
    yield unlock


def cache_tag_flush_all(domain: DmarDomain, profile):
    """``cache_tag_flush_all``: 6.12 walks the tags itself - a DSI or PASID-selective type 6
    per IOTLB tag, a full flush per device-TLB tag (``cache_tag_flush_devtlb_all``); since July
    2025 simply the whole range with IH=0 (``cache_tag_flush_all_walk``)."""
    if not profile.cache_tag_flush_all_walk:
        yield from cache_tag_flush_range(domain, profile, 0, ULONG_MAX, 0)
        return

    def per_tag(batch, tag):
        if tag.type in IOTLB_TYPES:
            yield from batch.add(tag.iommu, _flush_iotlb(domain, profile, tag, 0, -1, 0, 0))
        else:
            yield from _flush_devtlb(batch, tag, 0, MAX_AGAW_PFN_WIDTH)
        yield Annotate(event="cache_tag_flush_all", data=(tag.describe(),))

    yield from _flush_walk(domain, profile, "cache_tag_flush_all", per_tag)


def cache_tag_flush_range_np(domain: DmarDomain, profile, start: int, end: int):
    """``cache_tag_flush_range_np``: after new mappings.  Without CM, or for FS tables (CM does
    not cover them, spec 6.1), only the write buffer (spec 6.8); under CM an IOTLB flush
    with IH=0 per IOTLB tag and never a device-TLB flush (ATS caches no non-present entries)."""
    addr, mask = calculate_psi_aligned_address(start, end)

    def per_tag(batch, tag):
        if not tag.iommu.caps.caching_mode or domain.use_first_level:
            yield from tag.iommu.iommu_flush_write_buffer()
            return
        if tag.type in IOTLB_TYPES:
            desc = _flush_iotlb(domain, profile, tag, addr, 1 << mask, mask, 0)
            yield from batch.add(tag.iommu, desc)
        yield _flush_trace("cache_tag_flush_range_np", tag.describe(), start, end, addr, mask)

    yield from _flush_walk(domain, profile, "cache_tag_flush_range_np", per_tag)


def check_tags_sorted(domain: DmarDomain) -> None:
    """Every unit's tags are adjacent (the invariant one batch per unit relies on)."""
    order = [tag.iommu for tag in domain.cache_tags]
    runs = [u for i, u in enumerate(order) if i == 0 or order[i - 1] is not u]
    if len(runs) != len({id(u) for u in runs}):
        raise ModelError(f"{domain!r}: some unit's cache tags are not adjacent")
