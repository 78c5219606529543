"""QEMU's intel-iommu device as two versions, 7.2 and 10.0: its properties, the CAP/ECAP it
builds from them (QEMU hw/i386/intel_iommu.c ``vtd_cap_init``), the caches it keeps and how it
treats each descriptor type (``vtd_process_inv_desc``) - the policies, not the VT-d semantics,
which stay in ``vtdsim.hardware``.

Sources: QEMU 7.2 and 10.0 hw/i386/intel_iommu.c as read through the project's code search;
``viommu-and-costs.md`` sections 3, 4 and 8.  7.2 takes PASID-cache and PASID-IOTLB
descriptors as no-ops in any mode; "intel_iommu: Make PASID-cache and PIOTLB type invalid in
legacy mode" (Zhenzhong Duan, pulled September 2024, QEMU 9.2) makes both IQE in legacy mode,
and the first-stage series of the same release processes PASID-IOTLB descriptors
(``vtd_process_piotlb_desc``) - so 10.0 drops first-stage IOTLB entries, while its
PASID-cache descriptor is still a no-op in scalable mode (``vtd_process_pasid_desc`` came with
the iommufd nesting series, 2026).  Types 8 and 9 reach the ``default:`` case in both (IQE;
unconfirmed for 10.0's type 8, which later QEMU handles for emulated ATS devices).

Not modelled: properties that change nothing the guest driver model reads (``intremap``'s
interrupt remapping, ``svm``, ``stale-tm``), the x2APIC EIM bit, ``aw-bits=57``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtdsim.errors import BadInput
from vtdsim.hardware.capabilities import Capabilities
from vtdsim.hardware.remapping_unit import CacheConfig

VTD_IOTLB_MAX_SIZE = 1024  # QEMU intel_iommu_internal.h: vtd_update_iotlb resets at this size
VTD_MAMV = 18  # CAP.MAMV QEMU advertises; vtd_process_iotlb_desc rejects a larger AM (IQE)
_AS_PER_DEVICE = 1 << 16  # one cached context entry per address space: one per possible SID

# How a version treats a descriptor type: "process" (its handler), "noop" (accepted, nothing
# done, no trace event), "reject" (the ``default:`` case: IQE).
PROCESS, NOOP, REJECT = "process", "noop", "reject"


@dataclass(frozen=True)
class QemuVersion:
    """One QEMU release's intel-iommu: defaults and per-type descriptor policy."""

    name: str
    default_aw_bits: int  # "aw-bits" default: 39 until 9.1, 48 from 9.2
    has_flts: bool  # the "x-flts" property exists (first-stage translation, FSTS)
    pasid_iotlb: str  # type 6 in scalable mode
    pasid_cache: str  # type 7 in scalable mode
    pasid_types_in_legacy: str  # types 6 and 7 with scalable mode off

    def policy(self, dtype: int, scalable: bool) -> str:
        """How this version treats descriptor type ``dtype`` (``vtd_process_inv_desc``)."""
        if dtype in (6, 7):
            if not scalable:
                return self.pasid_types_in_legacy
            return self.pasid_iotlb if dtype == 6 else self.pasid_cache
        return PROCESS if dtype in (1, 2, 3, 4, 5) else REJECT


QEMU_72 = QemuVersion("qemu-7.2", default_aw_bits=39, has_flts=False,
                      pasid_iotlb=NOOP, pasid_cache=NOOP, pasid_types_in_legacy=NOOP)
QEMU_100 = QemuVersion("qemu-10.0", default_aw_bits=48, has_flts=True,
                       pasid_iotlb=PROCESS, pasid_cache=NOOP, pasid_types_in_legacy=REJECT)
# The iommufd nesting series (merged January 2026, after 10.2; reference section 6): PASID-cache
# descriptors re-read PASID entries and bind host HWPTs.  Used only by the nested platform.
QEMU_NESTING = QemuVersion("qemu-nesting-2026", default_aw_bits=48,
                           has_flts=True, pasid_iotlb=PROCESS, pasid_cache=PROCESS,
                           pasid_types_in_legacy=REJECT)
VERSIONS = {v.name: v for v in (QEMU_72, QEMU_100, QEMU_NESTING)}


def get_version(name: str) -> QemuVersion:
    try:
        return VERSIONS[name]
    except KeyError:
        raise BadInput(f"unknown VMM {name!r}; known: {', '.join(sorted(VERSIONS))}") from None


@dataclass(frozen=True)
class QemuProperties:
    """The ``-device intel-iommu,...`` properties the model honours (section 8 of the
    reference).  ``aw_bits`` None: the version's default."""

    caching_mode: bool = False
    scalable_mode: bool = False  # x-scalable-mode
    flts: bool = False  # x-flts: FSTS instead of SSTS (needs scalable mode)
    device_iotlb: bool = False
    pasid: bool = False  # x-pasid-mode
    snoop_control: bool = False
    dma_drain: bool = True
    pt: bool = True
    fs1gp: bool = True
    aw_bits: int | None = None


def qemu_caps(version: QemuVersion, props: QemuProperties) -> Capabilities:
    """CAP/ECAP as ``vtd_cap_init`` builds them; the words equal the recorded ones (7.2:
    the four legacy-cm-* / sm-* words; 10.0.2: ``cap d2008c222f0686 ecap f00f4a``, scalable
    ``ecap 480080f00f4a`` and, with x-flts, ``cap 1d2008c222f0686 ecap 880000f00f4a``).
    Neither sets CAP.ESRTPS although both act on every SRTP write."""
    if props.flts and not (version.has_flts and props.scalable_mode):
        raise BadInput(f"{version.name}: x-flts needs a QEMU that has it and x-scalable-mode=on")
    aw = props.aw_bits or version.default_aw_bits
    if aw not in (39, 48):
        raise BadInput(f"aw-bits={aw}: the model supports 39 and 48")
    cap = dict(nd=6, fro=0x22, mamv=VTD_MAMV, psi=1, sllps=0b11, mgaw=aw - 1,
               sagaw=0b010 if aw == 39 else 0b110, cm=int(props.caching_mode),
               drd=int(props.dma_drain), dwd=int(props.dma_drain))
    ecap = dict(qi=1, ir=1, iro=0xF, mhmv=15, pt=int(props.pt), dt=int(props.device_iotlb),
                sc=int(props.snoop_control))
    if props.scalable_mode:
        # SRS comes with the second stage: an x-flts unit advertises neither (recorded 10.0.2
        # words with and without x-flts)
        ecap.update(smts=1, srs=int(not props.flts), ssts=int(not props.flts),
                    fsts=int(props.flts))
        cap["fs1gp"] = int(props.flts and props.fs1gp)
    if props.pasid:
        ecap.update(pasid=1, pss=7)
    return Capabilities.build(**cap, **ecap)


def qemu_cache_config() -> CacheConfig:
    """QEMU's caches as the unit's cache switches (reference section 3): an IOTLB of 1,024
    entries emptied whole when full, each entry the requester's (``vtd_lookup_iotlb`` keys by
    source-id, PASID, page and level; invalidations match the entry's domain-id), no
    paging-structure cache, a context entry per address
    space kept by generation (global invalidation drops all: the same effect), PASID entries
    re-read on every translation, faults never cached although CM=1, every cache reset on
    SRTP and TE changes, fault compression by SID."""
    return CacheConfig(context=_AS_PER_DEVICE, pasid=0, iotlb=VTD_IOTLB_MAX_SIZE, pscache=0,
                       cache_negative=False, qemu_resets=True, compress_faults=True,
                       iotlb_flush_when_full=True, iotlb_tag_sid=True)
