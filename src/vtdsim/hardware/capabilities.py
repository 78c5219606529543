"""Capability and extended-capability registers, CAP and ECAP (VT-d spec 10.4.2, 10.4.3).

``CAP`` and ``ECAP`` declare every field once; ``Capabilities`` is the frozen value a unit is
built from, with read-only properties named for what each field means.  Field values are the
raw register encodings (``mgaw=38`` for 39-bit IOVAs, ``nfr=0`` for one fault-recording
register); the properties decode them (``caps.mgaw == 39``, ``caps.nfr == 1``).

Not modelled: CAP.ZLR/PLMR/PHMR/AFL/PI/ECMDS and ECAP.EIM/MTS/VCS/PMS/NWFS/EAFS are declared
and decoded but no behaviour depends on them.  ECAP.ADMS (52) and RPRIVS (53) come from
VirtualBox's rev-3.x transcription only (unconfirmed elsewhere); SLLPS bits 36/37 (512G/1T)
are never seen set and are unconfirmed.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtdsim.errors import BadInput
from vtdsim.hardware.bitfield import F, Layout

CAP = Layout(
    "CAP",
    64,
    [
        F("nd", 2, 0, doc="number of domain IDs: 2^(4+2*ND)"),
        F("afl", 3, doc="advanced fault logging"),
        F("rwbf", 4, doc="required write-buffer flushing (6.8)"),
        F("plmr", 5, doc="protected low-memory region"),
        F("phmr", 6, doc="protected high-memory region"),
        F("cm", 7, doc="caching mode (6.1)"),
        F("sagaw", 12, 8, doc="supported AGAWs: bit a <=> a+2 levels"),
        F("mgaw", 21, 16, doc="maximum guest address width - 1"),
        F("zlr", 22, doc="zero-length reads"),
        # bit 23 is deprecated (ISOCH in old Linux) and must read 0: left reserved.
        F("fro", 33, 24, doc="fault-recording register offset / 16"),
        F("sllps", 37, 34, doc="SS large pages: bit 0 = 2M, bit 1 = 1G"),
        F("psi", 39, doc="page-selective IOTLB invalidation"),
        F("nfr", 47, 40, doc="number of fault-recording registers - 1"),
        F("mamv", 53, 48, doc="maximum address-mask value for PSI"),
        F("dwd", 54, doc="write draining"),
        F("drd", 55, doc="read draining"),
        F("fs1gp", 56, doc="first-stage 1G pages"),
        F("pi", 59, doc="posted interrupts"),
        F("fs5lp", 60, doc="first-stage 5-level paging"),
        F("ecmds", 61, doc="enhanced command support"),
        F("esirtps", 62, doc="SIRTP also invalidates the interrupt-entry cache"),
        F("esrtps", 63, doc="SRTP also invalidates every DMA-remapping cache"),
    ],
    spec="10.4.2",
)

ECAP = Layout(
    "ECAP",
    64,
    [
        F("c", 0, doc="page-walk coherency"),
        F("qi", 1, doc="queued invalidation"),
        F("dt", 2, doc="device-TLB (ATS)"),
        F("ir", 3, doc="interrupt remapping"),
        F("eim", 4, doc="extended interrupt mode"),
        F("pt", 6, doc="pass-through"),
        F("sc", 7, doc="snoop control"),
        F("iro", 17, 8, doc="IOTLB register offset / 16"),
        F("mhmv", 23, 20, doc="maximum interrupt handle mask value"),
        F("mts", 25, doc="memory-type support"),
        F("nest", 26, doc="nested translation"),
        F("prs", 29, doc="page requests"),
        F("ers", 30, doc="execute requests"),
        F("srs", 31, doc="supervisor requests"),
        F("nwfs", 33, doc="no-write flag"),
        F("eafs", 34, doc="extended accessed flag"),
        F("pss", 39, 35, doc="PASID width - 1"),
        F("pasid", 40, doc="PASID support"),
        F("dit", 41, doc="device-TLB invalidation throttling"),
        F("pds", 42, doc="page-request drain"),
        F("smts", 43, doc="scalable-mode translation"),
        F("vcs", 44, doc="virtual command support"),
        F("ssads", 45, doc="second-stage accessed/dirty"),
        F("ssts", 46, doc="second-stage translation in scalable mode"),
        F("fsts", 47, doc="first-stage translation"),
        F("smpwc", 48, doc="scalable-mode page-walk coherency"),
        F("rps", 49, doc="RID_PASID support"),
        F("pms", 51, doc="performance monitoring"),
        F("adms", 52, doc="abort-DMA mode (unconfirmed: VirtualBox only)"),
        F("rprivs", 53, doc="RID_PRIV support (unconfirmed: VirtualBox only)"),
    ],
    spec="10.4.3",
)

#: SAGAW bit (relative to the field) for a table of ``levels`` levels: AGAW index a = levels-2.
SAGAW_BIT_FOR_LEVELS = {2: 0, 3: 1, 4: 2, 5: 3}


def _split(fields: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Sort keyword field values into CAP and ECAP ones (the two layouts share no name)."""
    cap, ecap = {}, {}
    for name, value in fields.items():
        if name in CAP:
            cap[name] = value
        elif name in ECAP:
            ecap[name] = value
        else:
            raise BadInput(f"no CAP or ECAP field named {name!r}")
    return cap, ecap


def _cap_flag(name: str) -> property:
    """A read-only bool property for the one-bit CAP field ``name`` (drivers test these on
    every flush: the field's mask is taken from the layout once)."""
    mask = CAP[name].in_place
    return property(lambda self: bool(self.cap & mask), doc=CAP[name].doc)


def _ecap_flag(name: str) -> property:
    """A read-only bool property for the one-bit ECAP field ``name``."""
    mask = ECAP[name].in_place
    return property(lambda self: bool(self.ecap & mask), doc=ECAP[name].doc)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The raw CAP/ECAP/VER values of one unit, with decoded read-only views."""

    cap: int
    ecap: int
    ver: int = 0x10

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def build(cls, *, ver: int = 0x10, **fields: int) -> Capabilities:
        """Build from raw field values, e.g. ``build(nd=6, sagaw=0b10, mgaw=38, qi=1)``."""
        cap, ecap = _split(fields)
        return cls(CAP.encode(**cap), ECAP.encode(**ecap), ver)

    def with_(self, **fields: int) -> Capabilities:
        """A copy with some raw fields changed (``ver=`` changes the version)."""
        ver = fields.pop("ver", self.ver)
        cap, ecap = _split(fields)
        return Capabilities(CAP.replace(self.cap, **cap), ECAP.replace(self.ecap, **ecap), ver)

    def field(self, name: str) -> int:
        """The raw value of a CAP or ECAP field by its mnemonic."""
        return CAP.get(self.cap, name) if name in CAP else ECAP.get(self.ecap, name)

    # -- CAP -----------------------------------------------------------------------------------
    rwbf = _cap_flag("rwbf")
    psi = _cap_flag("psi")
    dwd = _cap_flag("dwd")
    drd = _cap_flag("drd")
    fs1gp = _cap_flag("fs1gp")
    fs5lp = _cap_flag("fs5lp")
    esrtps = _cap_flag("esrtps")
    esirtps = _cap_flag("esirtps")
    afl = _cap_flag("afl")
    caching_mode = _cap_flag("cm")

    @property
    def nd_domains(self) -> int:
        return 1 << (4 + 2 * CAP.get(self.cap, "nd"))

    @property
    def sagaw(self) -> int:
        """The SAGAW bitmap as a 5-bit field value (bit 1 = 39-bit 3-level)."""
        return CAP.get(self.cap, "sagaw")

    @property
    def supported_levels(self) -> frozenset[int]:
        """Second-stage table depths the unit walks (SAGAW bit a <=> a+2 levels)."""
        return frozenset(a + 2 for a in range(4) if self.sagaw >> a & 1)

    @property
    def mgaw(self) -> int:
        """Maximum guest address *width* in bits (the field plus one)."""
        return CAP.get(self.cap, "mgaw") + 1

    @property
    def fro_offset(self) -> int:
        """Byte offset of FRCD[0] in the register page."""
        return CAP.get(self.cap, "fro") * 16

    @property
    def sllps_2m(self) -> bool:
        return bool(CAP.get(self.cap, "sllps") & 1)

    @property
    def sllps_1g(self) -> bool:
        return bool(CAP.get(self.cap, "sllps") & 2)

    @property
    def nfr(self) -> int:
        """Number of fault-recording registers (the field plus one)."""
        return CAP.get(self.cap, "nfr") + 1

    @property
    def mamv(self) -> int:
        return CAP.get(self.cap, "mamv")

    # -- ECAP ----------------------------------------------------------------------------------
    qi = _ecap_flag("qi")
    dt = _ecap_flag("dt")
    ir = _ecap_flag("ir")
    pt = _ecap_flag("pt")
    sc = _ecap_flag("sc")
    nest = _ecap_flag("nest")
    prs = _ecap_flag("prs")
    ers = _ecap_flag("ers")
    srs = _ecap_flag("srs")
    pasid = _ecap_flag("pasid")
    dit = _ecap_flag("dit")
    pds = _ecap_flag("pds")
    smts = _ecap_flag("smts")
    ssts = _ecap_flag("ssts")
    fsts = _ecap_flag("fsts")
    smpwc = _ecap_flag("smpwc")
    ssads = _ecap_flag("ssads")
    adms = _ecap_flag("adms")

    coherent = _ecap_flag("c")  # legacy-mode walks snoop the CPU caches

    @property
    def pss(self) -> int:
        """Supported PASID width in bits (the field plus one); meaningful only with PASID."""
        return ECAP.get(self.ecap, "pss") + 1

    @property
    def iro_offset(self) -> int:
        """Byte offset of the IVA register (IOTLB is 8 bytes above it)."""
        return ECAP.get(self.ecap, "iro") * 16

    # -- VER -----------------------------------------------------------------------------------
    @property
    def ver_major(self) -> int:
        return (self.ver >> 4) & 0xF

    @property
    def ver_minor(self) -> int:
        return self.ver & 0xF

    # -- printing ------------------------------------------------------------------------------
    def dmesg(self) -> str:
        """The values the way Linux prints them: ``ver 1:0 cap d2008c22260286 ecap f00f4a``."""
        return f"ver {self.ver_major}:{self.ver_minor} cap {self.cap:x} ecap {self.ecap:x}"

    def summary(self) -> str:
        """The unit's kind in a few words: mode, the features a driver's protocol depends on
        (CM, RWBF, device-TLB, PASID, first/second stage, snoop control) and the width."""
        mode = "scalable mode" if self.smts else "legacy mode"
        flags = [name for name, on in (
            ("CM", self.caching_mode), ("RWBF", self.rwbf), ("QI", self.qi),
            ("DT", self.dt), ("PASID", self.pasid), ("FS", self.smts and self.fsts),
            ("SS", not self.smts or self.ssts), ("SC", self.sc), ("C", self.coherent)) if on]
        return f"{mode}, {' '.join(flags)}, {self.mgaw}-bit"

    def describe(self) -> str:
        """Every non-zero field decoded, one register per line, plus the derived sizes."""
        derived = (
            f"domains={self.nd_domains} levels={sorted(self.supported_levels)} "
            f"mgaw={self.mgaw} nfr={self.nfr} fro_offset={self.fro_offset:#x} "
            f"iro_offset={self.iro_offset:#x}"
        )
        return "\n".join(
            [self.dmesg(), CAP.describe(self.cap), ECAP.describe(self.ecap), derived]
        )
