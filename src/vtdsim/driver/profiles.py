"""Driver profiles: the switches that differ between Linux 6.1, 6.12 and mainline intel-iommu
(drivers/iommu/intel/{iommu,cache,dmar,pasid}.c, drivers/iommu/dma-iommu.c), one frozen value
per kernel; every behaviour a seed thread argues about has both settings implemented.

Each field's docstring says what it means and where it comes from (reference linux-driver.md
sections, seed threads 000-004).  ``linux-6.12`` is read from Debian's linux-source-6.12
(6.12.118; the recordings ran 6.12.95, whose differences from it the recordings cannot show:
they hold no detach); ``mainline`` is 6.12 plus the later changes, each switch naming its
commit (README: the switch x profile table).

Not modelled: kernel versions between these (a profile is a whole kernel; use ``with_`` to
build an intermediate one switch by switch).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from vtdsim.errors import BadInput

_CHOICES = {
    "iotlb_sync_map": ("notify", "dynamic", "static"),
    "sm_context_setup": ("attach", "probe"),
    "did_allocator": ("bitmap", "ida"),
    "cache_tag_insert": ("tail", "by_unit"),
}


@dataclass(frozen=True)
class Profile:
    """One kernel's behaviour.  Build variants with ``with_(**switches)``."""

    name: str
    cache_tags: bool
    """Invalidation bookkeeping through cache tags (cache.c, v6.10+) instead of 6.1's (IOMMU ->
    DID) array plus device list (reference §5)."""
    devtlb_flush_checks_caching_mode: bool
    """6.1 skips device-TLB flushes under CAP.CM on map and in ``intel_flush_iotlb_all``; Lu
    Baolu's April 2024 patch removed both checks (seed 000)."""
    context_flush_under_iommu_lock: bool
    """Issue the present-context-change flushes while holding ``iommu->lock`` (seed 001).
    True is v2 of "Add helper to flush caches for context change" (June 2024): every path
    flushes inside the lock.  False is Kevin Tian's proposal: the clear paths flush after the
    unlock and ``context_flip_pri`` takes the lock only around its PASID walk.  The merged
    v6.11 code is a mix - the clear paths after the unlock, ``context_flip_pri`` inside
    (``intel_context_flush_present`` asserts iommu->lock when it walks PASIDs); the mainline
    profile says False, right for the clear paths current mainline still has (a later PRI
    rework removed ``context_flip_pri``).  The litmus seed001_* files set it explicitly."""
    iotlb_sync_map: str
    """"notify": 6.1 ``__mapping_notify_one`` on every map; "dynamic": a per-domain flag set at
    attach (12724ce3fe1a, July 2025, in 6.12 stable: ``dmar_domain_attach_device``); "static":
    the flag fixed at allocation (cee686775f9c; seed 002)."""
    cache_tag_assign_before_context: bool
    """RID attach assigns the new domain's cache tags before programming the entry (True) or
    after (False, mainline ``intel_iommu_attach_device``); PASID attach always assigns first
    (``intel_iommu_set_dev_pasid``; seed 002)."""
    rwbf_flush_before_context: bool
    """Flush the write buffer before making a context entry present so that PTEs of a
    concurrent map are visible first (argued in seed 002; neither kernel does it)."""
    fq_allowed_under_caching_mode_first_stage: bool
    """Under CAP.CM keep the flush queue when first stage is the default (257ec2907419, v6.3,
    backported to 5.15-stable; unconfirmed for the Debian 6.1 build; seed 003)."""
    enforce_cache_coherency: bool
    """Implement the ``enforce_cache_coherency`` domain op (SNP / PGSNP; v5.19, seed 004)."""
    enforce_coherency_empty_only: bool
    """Refuse ``enforce_cache_coherency`` on a second-stage domain that has mappings (their
    PTEs keep SNP=0): e645c20e8e9c "Support enforce_cache_coherency only for empty domains"
    (v6.7, in 6.6-stable), kept by 0fa6f0893466 (v6.17, ``..._ss``: ``has_mappings`` refuses).
    Off for 6.1: not in v6.1; a 6.1-stable backport is unconfirmed."""
    qi_batch_size: int
    """Descriptors per ``qi_submit_sync``: 6.1 submits one at a time, mainline batches up to 16
    per IOMMU (``qi_batch``, reference §4.2)."""
    ih_on_wire: bool
    """The IOTLB PSI carries IH: 6.1's queued ``qi_flush_iotlb`` drops it (a local ih = 0);
    fixed by 6b38a108eeb3, October 2025, also in 6.12 stable (``qi_desc_iotlb``; reference
    §3.3, §4.4)."""
    psi_unaligned_max_mask: int
    """Mask when an unaligned range's ends share no bit: BITS_PER_LONG (64) in 6.1
    ``iommu_flush_iotlb_psi``, MAX_AGAW_PFN_WIDTH (52) in ``calculate_psi_aligned_address``."""
    psi_align_address: bool
    """Align the PSI address down to the mask (mainline); 6.1 writes the start frame."""
    sm_context_setup: str
    """Scalable-mode context entry programmed at "attach" (6.1 ``domain_context_mapping_one``)
    or at "probe" (mainline ``device_pasid_table_setup``; reference §4.6)."""
    context_clear_present_first: bool
    """Tear down an entry by clearing P, flushing, then zeroing (c1e4f1dccbe9, v7.0-rc1) rather
    than zeroing first (reference §4.6; in 6.12 stable: ``domain_context_clear_one``)."""
    did_allocator: str
    """Domain IDs from a "bitmap" (6.1) or an "ida" (mainline "Use ida to manage domain id");
    both hand out the lowest free ID from 2 (reference §2.2)."""
    cache_tag_flush_all_walk: bool
    """6.12 ``cache_tag_flush_all``: a walk of its own - per IOTLB tag a DSI (SS) or a
    PASID-selective type 6 (FS), per device-TLB tag a full flush (``cache_tag_flush_devtlb_all``),
    traced as ``cache_tag_flush_all`` - and ``cache_tag_flush_range`` gives FS domains a type-6
    PSI even for the "everything" mask 52.  False: mainline since July 2025 (the
    ``cache_tag_flush_all`` event was removed then, reference §1.3/§4.4; commit not named
    there): flush_all is ``flush_range(0, ULONG_MAX, 0)`` and FS masks >= 52 become
    PASID-selective.  The same descriptors for flush_all either way."""
    cache_tag_insert: str
    """Where ``cache_tag_assign`` puts a new tag: "tail" (6.12 ``list_add_tail``) or "by_unit"
    (mainline: after the last tag of the same unit, so each unit's tags stay adjacent and its
    batch is submitted once per walk; reference §4.2).  Only several units tell them apart."""
    fq_size: int = 256
    """Per-CPU flush-queue slots, ``IOVA_DEFAULT_FQ_SIZE`` (dma-iommu.c; 255 usable)."""
    fq_timeout_ns: int = 10_000_000
    """Flush-queue timer, ``IOVA_DEFAULT_FQ_TIMEOUT`` = 10 ms (dma-iommu.c)."""

    def __post_init__(self) -> None:
        for switch, allowed in _CHOICES.items():
            if getattr(self, switch) not in allowed:
                raise BadInput(f"{switch}={getattr(self, switch)!r}: expected one of "
                               f"{', '.join(allowed)}", self.name)
        if self.qi_batch_size < 1:
            raise BadInput(f"qi_batch_size={self.qi_batch_size}: must be at least 1", self.name)

    def with_(self, **switches) -> Profile:
        """A copy with some switches changed; BadInput names an unknown switch."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(switches) - known)
        if unknown:
            raise BadInput(f"unknown profile switch {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(known - {'name'}))}", self.name)
        return replace(self, **switches)

    def describe(self) -> str:
        """``switch  value`` lines, one per field."""
        width = max(len(f.name) for f in fields(self))
        return "\n".join(f"{f.name:<{width}}  {getattr(self, f.name)!r}" for f in fields(self))


LINUX_6_1 = Profile(
    name="linux-6.1",
    cache_tags=False,
    devtlb_flush_checks_caching_mode=True,
    context_flush_under_iommu_lock=False,
    iotlb_sync_map="notify",
    cache_tag_assign_before_context=False,
    rwbf_flush_before_context=False,
    fq_allowed_under_caching_mode_first_stage=False,
    enforce_cache_coherency=True,
    enforce_coherency_empty_only=False,
    qi_batch_size=1,
    ih_on_wire=False,
    psi_unaligned_max_mask=64,
    psi_align_address=False,
    sm_context_setup="attach",
    context_clear_present_first=False,
    did_allocator="bitmap",
    cache_tag_flush_all_walk=False,  # moot: no cache tags
    cache_tag_insert="by_unit",  # moot: no cache tags
)

LINUX_6_12 = Profile(
    name="linux-6.12",
    cache_tags=True,  # cache.c (v6.10)
    devtlb_flush_checks_caching_mode=False,  # cache_tag_flush_devtlb_psi: no CM check
    context_flush_under_iommu_lock=False,  # domain_context_clear_one flushes after unlock
    iotlb_sync_map="dynamic",  # dmar_domain_attach_device: iotlb_sync_map |= ... after tags
    cache_tag_assign_before_context=False,  # dmar_domain_attach_device: context, then tags
    rwbf_flush_before_context=False,
    fq_allowed_under_caching_mode_first_stage=True,  # intel_iommu_init: first_level_by_default
    enforce_cache_coherency=True,
    # intel_iommu_enforce_cache_coherency: refused on a second-stage domain with mappings
    # (e645c20e8e9c, v6.7; kept by 0fa6f0893466's split, v6.17)
    enforce_coherency_empty_only=True,
    qi_batch_size=16,  # QI_MAX_BATCHED_DESC_COUNT, qi_batch_increment_index
    ih_on_wire=True,  # qi_desc_iotlb takes IH from the address's bit 0
    psi_unaligned_max_mask=52,  # calculate_psi_aligned_address: MAX_AGAW_PFN_WIDTH
    psi_align_address=True,  # calculate_psi_aligned_address: ALIGN_DOWN
    sm_context_setup="probe",  # intel_iommu_probe_device -> device_pasid_table_setup
    context_clear_present_first=True,  # domain_context_clear_one / intel_pasid_tear_down_entry
    did_allocator="bitmap",  # domain_attach_iommu: find_first_zero_bit(iommu->domain_ids)
    cache_tag_flush_all_walk=True,  # cache_tag_flush_all
    cache_tag_insert="tail",  # cache_tag_assign: list_add_tail
)

# Mainline: 6.12 plus each later change that alters the protocols (README: switch x profile).
MAINLINE = LINUX_6_12.with_(
    name="mainline",
    iotlb_sync_map="static",  # cee686775f9c "Make iotlb_sync_map a static property" (seed 002)
    did_allocator="ida",  # "iommu/vt-d: Use ida to manage domain id" (after 6.12)
    cache_tag_flush_all_walk=False,  # cache_tag_flush_all folded into flush_range (July 2025)
    cache_tag_insert="by_unit",  # cache_tag_assign keeps a unit's tags adjacent
)

PROFILES: dict[str, Profile] = {p.name: p for p in (LINUX_6_1, LINUX_6_12, MAINLINE)}


# The profile of each recorded kernel (major.minor); mainline is never a recorded kernel.
KERNEL_PROFILES = {"6.1": LINUX_6_1.name, "6.12": LINUX_6_12.name}


def profile_for_kernel(kernel: str, where: str | None = None) -> str:
    """The profile of Linux ``kernel`` (major.minor); BadInput naming the profiles otherwise."""
    try:
        return KERNEL_PROFILES[kernel]
    except KeyError:
        raise BadInput(f"no driver profile for Linux {kernel}; profiles: "
                       f"{', '.join(PROFILES)} (pass --profile)", where) from None


def get_profile(name: str) -> Profile:
    """The profile called ``name``; BadInput listing the names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise BadInput(f"no driver profile {name!r}; profiles: {', '.join(PROFILES)}") from None
