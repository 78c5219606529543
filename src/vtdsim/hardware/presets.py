"""Named remapping units: the QEMU 7.2 units as recorded, and modelled modern units (VT-d spec
10.4.2-10.4.3 values).

The ``qemu72-*`` presets are the exact CAP/ECAP words Linux 6.1 printed in the recordings, the
``qemu100-*`` ones those Linux 6.12 printed under QEMU 10.0
(``DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap ... ecap ...``), except
``qemu72-legacy-rwbf`` (QEMU's word with CAP.RWBF set).  ``server-sm``, ``vm-flts`` and
``vm-flts-cm`` are *synthetic*: built field by field to exercise scalable-mode features, not
copied from a part or a VMM.

Not modelled: multiple units per platform (a preset describes one DRHD), DMAR ACPI flags
(INCLUDE_PCI_ALL), ATSR/SATC scopes.
"""

from __future__ import annotations

import re

from vtdsim.errors import BadInput
from vtdsim.hardware.capabilities import Capabilities

_DMESG = re.compile(
    r"(?:ver\s+(?P<major>[0-9a-f]+):(?P<minor>[0-9a-f]+)\s+)?"
    r"cap\s+(?P<cap>[0-9a-f]+)\s+ecap\s+(?P<ecap>[0-9a-f]+)",
    re.IGNORECASE,
)


def from_dmesg(line: str) -> Capabilities:
    """Parse Linux's ``... ver 1:0 cap d2008c22260286 ecap f00f4a`` (``ver`` optional)."""
    m = _DMESG.search(line)
    if m is None:
        raise BadInput(f"no 'cap <hex> ecap <hex>' in {line.strip()!r}")
    ver = 0x10
    if m["major"] is not None:
        ver = (int(m["major"], 16) << 4) | int(m["minor"], 16)
    return Capabilities(int(m["cap"], 16), int(m["ecap"], 16), ver)


# QEMU 7.2's intel-iommu as the recorded Linux 6.1 guests saw it (traces/*/guest.log.xz).
_QEMU72_CAP = 0xD2008C22260206  # caching-mode=off
_QEMU72_CAP_CM = 0xD2008C22260286  # caching-mode=on
_QEMU72_ECAP = 0xF00F4A  # QI, IR, PT, IRO=0xF, MHMV=15
_QEMU72_ECAP_ATS = 0xF00F4E  # + DT (device-iotlb=on)
_QEMU72_ECAP_SM = 0x480080F00F4A  # + SRS, SMTS, SSTS (x-scalable-mode=on; no FSTS, no PASID)

# A modern scalable-mode server unit.  Synthetic: the feature set DEVELOPERS.md lists, with the
# register offsets of a recent Intel server part (FRCD at 0x400, IVA at 0x500).  MAMV=9 (a
# 2 MiB PSI) is a guess at a typical value, not a recorded one.  VER 6.0: spec 3.3 section 6.5
# drops register-based invalidation from major version 6 on (cited by Xen's "VT-d: Don't assume
# register-based invalidation is always supported"); that recent parts report 6:0 is unconfirmed.
_SERVER_SM = Capabilities.build(
    ver=0x60,
    nd=6, sagaw=0b01100, mgaw=56, fro=0x40, sllps=0b11, psi=1, nfr=7, mamv=9, dwd=1, drd=1,
    fs1gp=1, fs5lp=1, esrtps=1,
    c=1, qi=1, dt=1, ir=1, eim=1, pt=1, sc=1, iro=0x50, mhmv=15, nest=1, prs=1, ers=0, srs=1,
    pss=19, pasid=1, dit=1, pds=1, smts=1, ssads=1, ssts=1, fsts=1, smpwc=1, rps=1,
)

# A vIOMMU offering first-stage translation only (the shape of QEMU's x-flts units and of the
# "CM is not needed for first stage" argument, 2024).  Synthetic; CM=0, 48-bit, ESRTPS.
_VM_FLTS = Capabilities.build(
    nd=6, sagaw=0b00110, mgaw=47, fro=0x22, sllps=0b11, psi=1, nfr=0, mamv=18, dwd=1, drd=1,
    fs1gp=1, esrtps=1,
    qi=1, dt=1, ir=1, pt=1, iro=0xF, mhmv=15, srs=1, pss=19, pasid=1, smts=1, fsts=1,
)

# QEMU 10.0's intel-iommu as the recorded Linux 6.12 guests saw it (traces/linux612-*): the
# default unit now has a 48-bit address width (aw-bits=48: CAP.MGAW 47 and SAGAW 3- and
# 4-level, against 7.2's 39 bits and 3-level: CAP differs in bits 10, 16 and 19 only); x-flts=on
# adds FS1GP (CAP bit 56) and, in ECAP, FSTS without SSTS (0x880000f00f4a).
_QEMU100_CAP = 0xD2008C222F0606  # caching-mode=off
_QEMU100_CAP_CM = 0xD2008C222F0686  # caching-mode=on
_QEMU100_CAP_FLTS_CM = 0x1D2008C222F0686  # x-flts=on, caching-mode=on
_QEMU100_ECAP_SM = 0x480080F00F4A  # x-scalable-mode=on (second stage)
_QEMU100_ECAP_FLTS = 0x880000F00F4A  # x-scalable-mode=on, x-flts=on

# A Xeon E5 v3/v4-class server unit (Haswell-EP/Broadwell-EP; pcie-bench's E5-2630v4 is one) as
# Linux prints it: "cap d2078c106f0466 ecap f020df" on an HP ProLiant DL380 Gen9 (J. Lelli, LKML,
# 1 July 2020, Message-ID 20200701163504.GD9670@localhost.localdomain).  Legacy mode only,
# 4-level 48-bit tables, 2 MiB/1 GiB second-stage pages.  Public logs of such servers also
# print ecap f020de - the same unit with page-walk coherency (ECAP.C, bit 0) clear, a platform
# (BIOS) choice - so both are kept: ``xeon-e5v4`` walks snoop the CPU caches, ``-nc`` does not.
_XEON_E5V4 = "ver 1:0 cap d2078c106f0466 ecap f020df"
_XEON_E5V4_NC = "ver 1:0 cap d2078c106f0466 ecap f020de"

PRESETS: dict[str, Capabilities] = {
    "qemu72-legacy": Capabilities(_QEMU72_CAP, _QEMU72_ECAP),
    "qemu72-legacy-cm": Capabilities(_QEMU72_CAP_CM, _QEMU72_ECAP),
    "qemu72-legacy-ats": Capabilities(_QEMU72_CAP, _QEMU72_ECAP_ATS),
    "qemu72-legacy-cm-ats": Capabilities(_QEMU72_CAP_CM, _QEMU72_ECAP_ATS),
    "qemu72-sm": Capabilities(_QEMU72_CAP, _QEMU72_ECAP_SM),
    "server-sm": _SERVER_SM,
    "vm-flts": _VM_FLTS,
    # Synthetic: QEMU never sets CAP.RWBF (and ignores GCMD.WBF).  A legacy unit of the early
    # kind that posts structure writes until a write-buffer flush (spec 6.8; seed 002).
    "qemu72-legacy-rwbf": Capabilities(_QEMU72_CAP, _QEMU72_ECAP).with_(rwbf=1),
    # Synthetic: the first-stage vIOMMU of seed 003 (257ec2907419, Feb 2023) with caching mode
    # on - the unit whose default domain that patch lets stay lazy.
    "vm-flts-cm": _VM_FLTS.with_(cm=1),
    "qemu100-legacy": Capabilities(_QEMU100_CAP, _QEMU72_ECAP),
    "qemu100-legacy-cm": Capabilities(_QEMU100_CAP_CM, _QEMU72_ECAP),
    "qemu100-legacy-cm-ats": Capabilities(_QEMU100_CAP_CM, _QEMU72_ECAP_ATS),
    "qemu100-sm": Capabilities(_QEMU100_CAP, _QEMU100_ECAP_SM),
    "qemu100-flts-cm": Capabilities(_QEMU100_CAP_FLTS_CM, _QEMU100_ECAP_FLTS),
    "xeon-e5v4": from_dmesg(_XEON_E5V4),
    "xeon-e5v4-nc": from_dmesg(_XEON_E5V4_NC),
}

# What each unit is, in one phrase (`vtdsim presets`); the decoded features follow it.
ABOUT: dict[str, str] = {
    "qemu72-legacy": "QEMU 7.2 intel-iommu as recorded, caching-mode=off",
    "qemu72-legacy-cm": "QEMU 7.2 intel-iommu as recorded, caching-mode=on",
    "qemu72-legacy-ats": "QEMU 7.2 intel-iommu with device-IOTLB (ATS), caching-mode=off",
    "qemu72-legacy-cm-ats": "QEMU 7.2 intel-iommu with device-IOTLB (ATS), caching-mode=on",
    "qemu72-sm": "QEMU 7.2 intel-iommu in scalable mode (x-scalable-mode=on)",
    "server-sm": "a modern server unit (synthetic)",
    "vm-flts": "a vIOMMU offering first-stage translation only (synthetic)",
    "qemu72-legacy-rwbf": "QEMU 7.2 legacy unit with CAP.RWBF (synthetic; seed 002)",
    "vm-flts-cm": "first-stage-only vIOMMU with caching mode (synthetic; seed 003)",
    "xeon-e5v4": "Xeon E5 v3/v4 server unit as printed by Linux (legacy, coherent walks)",
    "xeon-e5v4-nc": "the same with ECAP.C=0: page walks do not snoop the CPU caches",
}


def get_preset(name: str) -> Capabilities:
    """The named preset; ``BadInput`` listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise BadInput(f"unknown unit preset {name!r}; known: {known}") from None
