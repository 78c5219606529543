"""Invalidation descriptors of the queued-invalidation interface (VT-d spec 6.5.2; reference §11).

One ``Layout`` per descriptor type, declared with the spec's bit positions (checked against
Linux's ``QI_*`` macros in drivers/iommu/intel/iommu.h and QEMU's ``VTD_INV_DESC_*`` masks in
hw/i386/intel_iommu_internal.h).  The type is 7 bits: type[3:0] in qw0 3:0 and type[6:4] in
qw0 11:9 (every defined type has type[6:4] = 0; Linux's trace label looks at bits 3:0 only).

``Descriptor.fields`` holds field values except that address fields (``addr``,
``status_addr``) hold the *byte* address, so ``encode(d.label, **d.fields) == d.qws`` for every
well-formed descriptor.  ``validate`` returns the IQERCD.IQEI code hardware reports for a
descriptor it cannot accept.

Not modelled: the deprecated page-stream response (type 0xA) and the spec 2.x extended
descriptors; ``validate`` does not check that a PSI address is aligned to its mask (how hardware
treats a misaligned ADDR is unconfirmed; QEMU masks the low bits).
"""

from __future__ import annotations

from functools import lru_cache

from vtdsim.errors import ModelError, hexval
from vtdsim.hardware.bitfield import QWORD_MASK, F, Layout
from vtdsim.hardware.request import format_sid
from vtdsim.records import record

PAGE_SHIFT = 12

# IQERCD.IQEI codes (spec 10.4.30 IQERCD; reference §7).
IQEI_TAIL_INVALID = 1
IQEI_FETCH_ERROR = 2
IQEI_INVALID_TYPE = 3
IQEI_RESERVED = 4
IQEI_INVALID_WIDTH = 5
IQEI_TAIL_MISALIGNED = 6


def _type_fields() -> list:
    """type[3:0] in qw0 3:0 and type[6:4] in qw0 11:9 (spec 6.5.2, figure of every type)."""
    return [F("type", 3, 0), F("type_hi", 11, 9)]


def _page_range_fields() -> list:
    """AM, IH and ADDR in qw1 of the (PASID-based) IOTLB descriptors (spec 6.5.2.3/6.5.2.4)."""
    return [F("am", 69, 64), F("ih", 70), F("addr", 127, 76)]


CC_INV = Layout(
    "cc_inv",
    128,
    [*_type_fields(), F("g", 5, 4), F("did", 31, 16), F("sid", 47, 32), F("fm", 49, 48)],
    spec="6.5.2.1",
)
IOTLB_INV = Layout(
    "iotlb_inv",
    128,
    [
        *_type_fields(), F("g", 5, 4), F("dw", 6), F("dr", 7), F("did", 31, 16),
        *_page_range_fields(),
    ],
    spec="6.5.2.3",
)
DEV_TLB_INV = Layout(
    "dev_tlb_inv",
    128,
    [
        *_type_fields(), F("pfsid_lo", 15, 12), F("mip", 20, 16), F("sid", 47, 32),
        F("pfsid_hi", 63, 52), F("s", 64), F("addr", 127, 76),
    ],
    spec="6.5.2.5",
)
IEC_INV = Layout(
    "iec_inv",
    128,
    [*_type_fields(), F("g", 4), F("im", 31, 27), F("iidx", 47, 32)],
    spec="6.5.2.7",
)
INV_WAIT = Layout(
    "inv_wait",
    128,
    [
        *_type_fields(), F("if_", 4), F("sw", 5), F("fn", 6), F("pd", 7),
        F("status_data", 63, 32), F("status_addr", 127, 66),
    ],
    spec="6.5.2.8",
)
P_IOTLB_INV = Layout(
    "p_iotlb_inv",
    128,
    [
        *_type_fields(), F("g", 5, 4), F("did", 31, 16), F("pasid", 51, 32),
        *_page_range_fields(),
    ],
    spec="6.5.2.4",
)
PC_INV = Layout(
    "pc_inv",
    128,
    [*_type_fields(), F("g", 5, 4), F("did", 31, 16), F("pasid", 51, 32)],
    spec="6.5.2.2",
)
P_DEV_TLB_INV = Layout(
    "p_dev_tlb_inv",
    128,
    [
        *_type_fields(), F("mip", 8, 4), F("pfsid_lo", 15, 12), F("sid", 31, 16),
        F("pasid", 51, 32), F("pfsid_hi", 63, 52), F("g", 64), F("s", 75), F("addr", 127, 76),
    ],
    spec="6.5.2.6",
)
# Page-group response: PDP (qw0 5) and LPIG (qw1 2) are set by older Linux (spec 2.x); spec 3+
# lists those bits as reserved (unconfirmed), so they are declared as fields to accept both.
PAGE_GRP_RESP = Layout(
    "page_grp_resp",
    256,
    [
        *_type_fields(), F("pasid_present", 4), F("pdp", 5), F("resp_code", 15, 12),
        F("rid", 31, 16), F("pasid", 51, 32), F("lpig", 66), F("prgi", 75, 67),
        F("priv_data", 255, 128),
    ],
    spec="7 (page-group response; section number unconfirmed)",
)

LAYOUTS: dict[int, Layout] = {
    1: CC_INV, 2: IOTLB_INV, 3: DEV_TLB_INV, 4: IEC_INV, 5: INV_WAIT,
    6: P_IOTLB_INV, 7: PC_INV, 8: P_DEV_TLB_INV, 9: PAGE_GRP_RESP,
}
# Linux's qi_submit trace labels (drivers/iommu/intel/trace.h, from qw0 & 0xf).
TYPE_LABELS: dict[int, str] = {t: layout.name for t, layout in LAYOUTS.items()}
LABEL_TYPES: dict[str, int] = {label: t for t, label in TYPE_LABELS.items()}
# QEMU's vtd_inv_desc trace names.  7.2 knows the first five; "p-iotlb", "pasid-cache" and
# "device-piotlb" appear in later QEMU (7.2 handles types 6/7 as silent no-ops).
QEMU_TRACE_NAMES: dict[str, str] = {
    "context-cache": "cc_inv", "iotlb": "iotlb_inv", "device": "dev_tlb_inv", "iec": "iec_inv",
    "wait": "inv_wait", "p-iotlb": "p_iotlb_inv", "pasid-cache": "pc_inv",
    "device-piotlb": "p_dev_tlb_inv",
}

# Fields that hold an address: decoded to (and encoded from) the byte address.
_ADDRESS_SHIFT = {"addr": PAGE_SHIFT, "status_addr": 2}
_TYPE_FIELDS = ("type", "type_hi")
# Types only defined in 256-bit descriptors (spec 6.5.2: "only supported in 256-bit mode").
_WIDE_ONLY = (6, 7, 8)
# Reserved granularity encodings (spec 6.5.2.1/.3/.4/.2): they make the descriptor invalid.
_VALID_G = {1: (1, 2, 3), 2: (1, 2, 3), 6: (2, 3), 7: (0, 1, 3)}
# Types that need a capability (``_capability_missing``): type -> the capability's name.
_NEEDS = {3: "dt", 4: "ir", 8: "dt", 9: "prs"}


def _qword_plan(layout: Layout) -> tuple[tuple[str, int, int, int, int], ...] | None:
    """How ``decode`` reads ``layout``'s fields from the qwords themselves, not from the
    joined 128/256-bit value: (name, qword, shift in it, mask, address shift) per field but
    the type bits, in declaration order; None when a field spans two qwords."""
    plan = []
    for name, f in layout.fields.items():
        if name in _TYPE_FIELDS:
            continue
        if f.lo // 64 != f.hi // 64:
            return None
        plan.append((name, f.lo // 64, f.lo % 64, f.mask, _ADDRESS_SHIFT.get(name, 0)))
    return tuple(plan)


# Per type: ``decode``'s plan, and the layout's reserved bits in each of its qwords.
_PLANS = {t: _qword_plan(layout) for t, layout in LAYOUTS.items()}
_RESERVED_QWORDS = {t: tuple((layout.reserved_mask >> 64 * i) & QWORD_MASK
                             for i in range(layout.width // 64))
                    for t, layout in LAYOUTS.items()}


@record
class Descriptor:
    """A decoded descriptor; ``fields`` excludes the type bits (do not mutate it).  A record
    (a frozen slotted dataclass built without ``object.__setattr__``): the unit decodes every
    descriptor it has not seen before, a strict unmap's flush nearly always one."""

    type: int
    label: str
    fields: dict
    qws: tuple[int, int, int, int]

    @property
    def layout(self) -> Layout | None:
        return LAYOUTS.get(self.type)

    def reserved_bits(self) -> int:
        """Reserved bits set within the type's layout (qw2/qw3 of types 1-8 are checked by
        ``validate``, which knows the queue width)."""
        layout = self.layout
        return layout.reserved_bits(layout.from_qwords(self.qws)) if layout else 0

    def describe(self) -> str:
        """One readable line, e.g. ``iotlb_inv PSI did=5 addr=0xfff80000 am=5 (128 KiB) ...``."""
        describer = _DESCRIBERS.get(self.type)
        if describer is None:
            raws = " ".join(f"{q:#x}" for q in self.qws)
            return f"unknown descriptor type {self.type:#x}: {raws}"
        text = f"{self.label} {describer(self.fields)}".rstrip()
        rsv = self.reserved_bits()
        return f"{text} {hexval('RESERVED', rsv)}" if rsv else text


def _type_of(qw0: int) -> int:
    return (qw0 & 0xF) | (((qw0 >> 9) & 0x7) << 4)


def decode(qws) -> Descriptor:
    """Decode 2 or 4 qwords; never raises on garbage (an unknown type decodes with no fields)."""
    padded = tuple(int(q) & QWORD_MASK for q in qws) + (0,) * (4 - len(qws))
    return decode_fetched(padded[:4])


def decode_fetched(qws: tuple[int, ...]) -> Descriptor:
    """``decode`` of what a queue fetch reads: a tuple of 2 or 4 qwords, each an int in
    [0, 2^64) - so nothing to convert or mask (the unit decodes every descriptor it has not
    seen before)."""
    qws4 = qws if len(qws) == 4 else qws + (0, 0)
    dtype = _type_of(qws4[0])
    layout = LAYOUTS.get(dtype)
    if layout is None:
        return Descriptor(dtype, f"type_{dtype:#x}", {}, qws4)
    plan = _PLANS[dtype]
    if plan is None:  # a field across qwords: from the joined value
        raw = layout.decode(layout.from_qwords(qws4))
        fields = {n: v << _ADDRESS_SHIFT.get(n, 0) for n, v in raw.items()
                  if n not in _TYPE_FIELDS}
    else:  # each field from its qword (no 256-bit value built and shifted per field)
        fields = {n: ((qws4[q] >> shift) & mask) << to_bytes
                  for n, q, shift, mask, to_bytes in plan}
    return Descriptor(dtype, layout.name, fields, qws4)


@lru_cache(maxsize=4096)
def encode(label: str, **fields: int) -> tuple[int, int, int, int]:
    """Build a descriptor's four qwords from field values (address fields as byte addresses).
    Memoised: a pure function, and drivers build the same few descriptors over and over."""
    dtype = LABEL_TYPES.get(label)
    if dtype is None:
        raise ModelError(f"unknown descriptor label {label!r}; known: {sorted(LABEL_TYPES)}")
    layout = LAYOUTS[dtype]
    raw = {"type": dtype}
    for name, value in fields.items():
        shift = _ADDRESS_SHIFT.get(name, 0)
        if value & ((1 << shift) - 1):
            raise ModelError(f"{label}: {hexval(name, value)} is not {1 << shift}-byte aligned")
        raw[name] = value >> shift
    qws = layout.to_qwords(layout.encode(**raw))
    return (*qws, 0, 0, 0)[:4]


def _g_invalid(desc: Descriptor) -> bool:
    valid = _VALID_G.get(desc.type)
    return valid is not None and desc.fields["g"] not in valid


def _capability_missing(desc: Descriptor, caps) -> bool:
    """Types the unit does not implement (reference §11.1 "Requires" column).  Hardware without
    the capability has no such descriptor, hence "invalid type".  QEMU 7.2 does not check DT/IR
    for types 3/4 (it accepts them); which IQEI real hardware reports is unconfirmed."""
    need = _NEEDS.get(desc.type)
    return need is not None and not getattr(caps, need)


def _content_invalid(desc: Descriptor, caps) -> bool:
    """Field values that are reserved encodings or exceed a capability (IQEI 4)."""
    f = desc.fields
    if _g_invalid(desc):
        return True
    if "pfsid_lo" in f and (f["pfsid_lo"] or f["pfsid_hi"]) and not caps.dit:
        # PFSID is reserved unless ECAP.DIT (spec 6.5.2.5); QEMU's RSVD_LO mask covers it.
        return True
    if desc.type == 2 and f["g"] == 3 and caps.psi and f["am"] > caps.mamv:
        # AM must not exceed CAP.MAMV (spec 6.5.2.3); QEMU vtd_process_iotlb_desc raises IQE.
        # Type 6 is not bounded: SMTS units support any AM for PASID-based PSI (spec 6.5.2.4).
        return True
    if desc.type == 5:
        # PD needs ECAP.PDS (spec 6.5.2.8).  A wait with SW=IF=FN=0 does nothing: QEMU's
        # vtd_process_wait_desc rejects it; the spec text we have does not call it invalid
        # (unconfirmed) - we follow QEMU.
        if f["pd"] and not caps.pds:
            return True
        return not (f["sw"] or f["if_"] or f["fn"])
    return False


def validate(desc: Descriptor, caps, wide: bool) -> int:
    """0 if hardware accepts ``desc`` in a queue of this width, else the IQEI code: 3 invalid
    type, 5 invalid width, 4 reserved field set or reserved field encoding.  Which IQEI a
    reserved *encoding* (e.g. G=00, AM > MAMV) gets is not stated by our sources; we use 4."""
    reserved = _RESERVED_QWORDS.get(desc.type)  # None: no layout
    if reserved is None or _capability_missing(desc, caps):
        return IQEI_INVALID_TYPE
    if desc.type in _WIDE_ONLY and not wide:
        # Types 6-8 exist only as 256-bit descriptors; QEMU rejects them in a 128-bit queue.
        return IQEI_INVALID_WIDTH
    for qword, rsvd in zip(desc.qws, reserved, strict=False):  # ``desc.reserved_bits()``
        if qword & rsvd:
            return IQEI_RESERVED
    if wide and desc.type != 9 and (desc.qws[2] or desc.qws[3]):
        # In 256-bit mode qw2/qw3 are reserved for types 1-8 (reference §7 rule 7).
        return IQEI_RESERVED
    if _content_invalid(desc, caps):
        return IQEI_RESERVED
    return 0


# -- device-TLB range encoding (PCIe ATS; reference §11.3) ------------------------------------
WHOLE_SPACE = 1 << 64


def devtlb_addr(addr: int, pages: int) -> tuple[int, int]:
    """ATS invalidation address and S bit for ``pages`` (a power of two) 4 KiB pages around
    ``addr``: S=0 for one page; else the block-aligned base with bits 12..12+m-2 set (m =
    log2(pages)), so the first 0 bit above bit 11 marks the size (as Linux qi_flush_dev_iotlb)."""
    if pages < 1 or pages & (pages - 1):
        raise ModelError(f"{hexval('pages', pages)} is not a power of two")
    if pages == 1:
        return addr & ~((1 << PAGE_SHIFT) - 1), 0
    m = pages.bit_length() - 1
    size = pages << PAGE_SHIFT
    base = addr & ~(size - 1) & QWORD_MASK
    ones = ((1 << (m - 1)) - 1) << PAGE_SHIFT
    return base | ones, 1


def devtlb_range(addr_field: int, s: int) -> tuple[int, int]:
    """(base, size) an ATS invalidation covers: S=0 one 4 KiB page; S=1 8 KiB << (number of
    consecutive 1 bits from bit 12), aligned to its size; 2^64 means the whole space."""
    page = addr_field & ~((1 << PAGE_SHIFT) - 1) & QWORD_MASK
    if not s:
        return page, 1 << PAGE_SHIFT
    pfn = page >> PAGE_SHIFT
    ones = (~pfn & (pfn + 1)).bit_length() - 1  # trailing one bits of the page number
    size = min((2 << PAGE_SHIFT) << ones, WHOLE_SPACE)
    return page & ~(size - 1), size


# -- describe() -------------------------------------------------------------------------------
def format_size(size: int) -> str:
    """``4 KiB`` / ``2 MiB`` / ``whole space``."""
    if size >= WHOLE_SPACE:
        return "whole space"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def _flags(f: dict, *names: str) -> str:
    return "".join(f" {n.rstrip('_')}" for n in names if f[n])


def _range(f: dict) -> str:
    return f"addr={f['addr']:#x} am={f['am']} ({format_size(4096 << f['am'])}) ih={f['ih']}"


def _devtlb_text(f: dict) -> str:
    base, size = devtlb_range(f["addr"], f["s"])
    pfsid = (f["pfsid_hi"] << 4) | f["pfsid_lo"]
    extra = f" pfsid={format_sid(pfsid)}" if pfsid else ""
    where = "all" if size >= WHOLE_SPACE else f"{base:#x}+{format_size(size)}"
    return f"sid={format_sid(f['sid'])} mip={f['mip']}{extra} range={where}"


def _describe_cc(f: dict) -> str:
    scope = {1: "global", 2: f"domain did={f['did']}"}.get(f["g"])
    if f["g"] == 3:
        scope = f"device did={f['did']} sid={format_sid(f['sid'])} fm={f['fm']}"
    return scope or f"g={f['g']} (reserved)"


def _describe_iotlb(f: dict) -> str:
    scope = {1: "global", 2: f"DSI did={f['did']}", 3: f"PSI did={f['did']} {_range(f)}"}
    return scope.get(f["g"], f"g={f['g']} (reserved)") + _flags(f, "dr", "dw")


def _describe_iec(f: dict) -> str:
    return f"index iidx={f['iidx']} im={f['im']}" if f["g"] else "global"


def _describe_wait(f: dict) -> str:
    status = f" status_data={f['status_data']:#x} status_addr={f['status_addr']:#x}"
    return (_flags(f, "sw", "if_", "fn", "pd").lstrip() + (status if f["sw"] else "")).strip()


def _describe_piotlb(f: dict) -> str:
    who = f"did={f['did']} pasid={f['pasid']:#x}"
    scope = {2: f"PASID {who}", 3: f"PSI {who} {_range(f)}"}
    return scope.get(f["g"], f"g={f['g']} (reserved) {who}")


def _describe_pc(f: dict) -> str:
    scope = {0: f"domain did={f['did']}", 1: f"PASID did={f['did']} pasid={f['pasid']:#x}"}
    return {**scope, 3: "global"}.get(f["g"], f"g={f['g']} (reserved)")


def _describe_pdevtlb(f: dict) -> str:
    pasid = "all-pasids" if f["g"] else f"pasid={f['pasid']:#x}"
    return f"{pasid} {_devtlb_text(f)}"


def _describe_pgrp(f: dict) -> str:
    pasid = f" pasid={f['pasid']:#x}" if f["pasid_present"] else ""
    return f"rid={format_sid(f['rid'])}{pasid} prgi={f['prgi']:#x} resp_code={f['resp_code']:#x}"


_DESCRIBERS = {
    1: _describe_cc, 2: _describe_iotlb, 3: _devtlb_text, 4: _describe_iec, 5: _describe_wait,
    6: _describe_piotlb, 7: _describe_pc, 8: _describe_pdevtlb, 9: _describe_pgrp,
}
