"""The remapping unit's register page: every register as declared data, and the register file
that applies access kinds to 32/64-bit MMIO (VT-d spec chapter 10, 10.2 access kinds).

Each register is a ``Register(name, offset, layout, trigger_bit)``; its ``Layout`` gives every
field's ``Access`` kind.  ``RegisterFile`` stores the raw value (hardware's view) and applies
the kinds on MMIO: RO bits keep their value, RW take the written value, RW1C clear where 1 is
written, WO store but read back as 0, reserved bits stay 0.  Accesses are 4 or 8 bytes,
naturally aligned, inside one register (QEMU's ``vtd_mem_ops`` accepts exactly 4 and 8); any
other access is ignored (reads return 0) and reported through ``on_event``.

A 64-bit register may be written as two dwords (spec 10.2).  A register with side effects names
its ``trigger_bit``: the write acts (``on_write`` is called) only when the written bytes cover
that bit, so CCMD/IOTLB (bit 63, the ICC/IVT go bits) act on the high dword and IQT (QT, bit 4)
on the low one, exactly as QEMU's ``vtd_mem_write`` dispatches them.

Not modelled: the protected-memory, page-request, MTRR, performance-monitoring, enhanced-command
and virtual-command registers beyond storing what is written (PLM/PHM, PQH/PQT/PQA/PRS/PE*) or
at all (MTRR 0x100-0x218, PERF* 0x300-0x380, ECMD 0x400-0x430, VCCAP 0xE00-0xE20 read as 0 and
ignore writes); the host address width from the ACPI DMAR table (table addresses keep bits
51:12, the x86 maximum).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from vtdsim.errors import BadInput
from vtdsim.hardware.bitfield import Access, F, Layout
from vtdsim.hardware.capabilities import CAP, ECAP, Capabilities

RO, RW, RW1C, WO = Access.RO, Access.RW, Access.RW1C, Access.WO


def _read_only(layout: Layout) -> Layout:
    """The same fields, all RO: CAP/ECAP as registers."""
    return Layout(
        layout.name,
        layout.width,
        [replace(f, access=RO) for f in layout.fields.values()],
        spec=layout.spec,
    )


def _msi_regs(prefix: str, base: int, spec: str) -> list[Register]:
    """The data / address / upper-address triple of an MSI-style event (FE*, IE*, PE*)."""
    layouts = [
        Layout(f"{prefix}DATA", 32, [F("imd", 15, 0), F("eimd", 31, 16)], spec=spec),
        Layout(f"{prefix}ADDR", 32, [F("ma", 31, 2)], spec=spec),
        Layout(f"{prefix}UADDR", 32, [F("mua", 31, 0)], spec=spec),
    ]
    return [Register(lay.name, base + 4 * i, lay) for i, lay in enumerate(layouts)]


def _event_control(name: str, offset: int, spec: str) -> Register:
    """IM (reset 1: events masked until software unmasks) and IP (RO, set by hardware)."""
    layout = Layout(name, 32, [F("im", 31), F("ip", 30, access=RO)], spec=spec)
    return Register(name, offset, layout, trigger_bit=31, reset=1 << 31)


VER = Layout("VER", 32, [F("minor", 3, 0, RO), F("major", 7, 4, RO)], spec="10.4.1")

GCMD = Layout(
    "GCMD",
    32,
    [
        F("te", 31, access=WO),
        F("srtp", 30, access=WO),
        F("sfl", 29, access=WO),
        F("eafl", 28, access=WO),
        F("wbf", 27, access=WO),
        F("qie", 26, access=WO),
        F("ire", 25, access=WO),
        F("sirtp", 24, access=WO),
        F("cfi", 23, access=WO),
    ],
    spec="10.4.4",
)

#: GCMD command bit -> the GSTS status bit that reports it (same bit positions, spec 10.4.5).
GCMD_STATUS = {
    "te": "tes",
    "srtp": "rtps",
    "sfl": "fls",
    "eafl": "afls",
    "wbf": "wbfs",
    "qie": "qies",
    "ire": "ires",
    "sirtp": "irtps",
    "cfi": "cfis",
}

# GSTS reports each command at the same bit position (spec 10.4.5), all RO.
GSTS = Layout(
    "GSTS",
    32,
    [F(GCMD_STATUS[f.name], f.hi, access=RO) for f in GCMD.fields.values()],
    spec="10.4.5",
)

# Table addresses (RTADDR.RTA, IQA, IRTA, PQA, AFLOG) are declared up to bit 51: x86 physical
# addresses have at most 52 bits (memory.MAX_PHYS_ADDR), and a unit implements no address bits
# above its host address width, so bits 63:52 behave as reserved (ignored on write).  How real
# hardware treats such writes is unconfirmed.
ADDR_HI = 51

RTADDR = Layout("RTADDR", 64, [F("ttm", 11, 10), F("rta", ADDR_HI, 12)], spec="10.4.6")

CCMD = Layout(
    "CCMD",
    64,
    [
        F("did", 15, 0),
        F("sid", 31, 16),
        F("fm", 33, 32),
        F("caig", 60, 59, RO),
        F("cirg", 62, 61),
        F("icc", 63),
    ],
    spec="10.4.7",
)

FSTS = Layout(
    "FSTS",
    32,
    [
        F("pfo", 0, access=RW1C),
        F("ppf", 1, access=RO),
        F("afo", 2, access=RW1C),
        F("apf", 3, access=RW1C),
        F("iqe", 4, access=RW1C),
        F("ice", 5, access=RW1C),
        F("ite", 6, access=RW1C),
        # bit 7 (formerly PRO) is deprecated: reserved here, so Linux's write of it is ignored.
        F("fri", 15, 8, RO),
    ],
    spec="10.4.9",
)

AFLOG = Layout("AFLOG", 64, [F("fls", 11, 9), F("fla", ADDR_HI, 12)], spec="10.4.14")
PMEN = Layout("PMEN", 32, [F("prs", 0, access=RO), F("epm", 31)], spec="10.4.16")

IQH = Layout("IQH", 64, [F("qh", 18, 4, RO)], spec="10.4.22")
IQT = Layout("IQT", 64, [F("qt", 18, 4)], spec="10.4.23")
ICS = Layout("ICS", 32, [F("iwc", 0, access=RW1C)], spec="10.4.25")
IQERCD = Layout(
    "IQERCD",
    64,
    [F("iqei", 3, 0, RO), F("itesid", 47, 32, RO), F("icesid", 63, 48, RO)],
    spec="10.4.30",
)
IRTA = Layout("IRTA", 64, [F("s", 3, 0), F("eime", 11), F("irta", ADDR_HI, 12)], spec="10.4.31")

IVA = Layout(
    "IVA",
    64,
    [F("am", 5, 0, WO), F("ih", 6, access=WO), F("addr", 63, 12, WO)],
    spec="10.4.8.2",
)
IOTLB = Layout(
    "IOTLB",
    64,
    [
        F("did", 47, 32),
        F("dw", 48),
        F("dr", 49),
        F("iaig", 58, 57, RO),
        F("iirg", 61, 60),
        F("ivt", 63),
    ],
    spec="10.4.8.1",
)

# FRCD: everything is written by hardware; software can only clear F (spec 10.4.13).
FRCD = Layout(
    "FRCD",
    128,
    [
        F("fi", 63, 12, RO),
        F("sid", 79, 64, RO),
        F("t2", 92, access=RO),
        F("priv", 93, access=RO),
        F("exe", 94, access=RO),
        F("pp", 95, access=RO),
        F("fr", 103, 96, RO),
        F("pv", 123, 104, RO),
        F("at", 125, 124, RO),
        F("t1", 126, access=RO),
        F("f", 127, access=RW1C),
    ],
    spec="10.4.13",
)

# Page-request queue registers (ECAP.PRS).  Bit positions per spec 10.4.32-10.4.39 as Linux's
# PRQ code uses them (32-byte descriptors: head/tail in 18:5); stored only (see module doc).
PQH = Layout("PQH", 64, [F("pqh", 18, 5)], spec="10.4.32")
PQT = Layout("PQT", 64, [F("pqt", 18, 5)], spec="10.4.33")
PQA = Layout("PQA", 64, [F("pqs", 2, 0), F("pqa", ADDR_HI, 12)], spec="10.4.34")
PRS = Layout("PRS", 32, [F("ppr", 0, access=RW1C), F("pro", 1, access=RW1C)], spec="10.4.35")


@dataclass(frozen=True)
class Register:
    """One register: where it is, its layout (access kind per field), reset value, and the bit
    whose dword must be written for the write to act (``None``: no side effects)."""

    name: str
    offset: int
    layout: Layout
    trigger_bit: int | None = None
    reset: int = 0
    masks: dict[Access, int] = field(init=False, repr=False, compare=False)
    # Derived from ``masks`` once: every MMIO access uses them.
    _replace: int = field(init=False, repr=False, compare=False)
    _writable: int = field(init=False, repr=False, compare=False)
    _visible: int = field(init=False, repr=False, compare=False)
    _rw1c: int = field(init=False, repr=False, compare=False)
    _rw1s: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        masks = dict.fromkeys(Access, 0)
        for f in self.layout.fields.values():
            masks[f.access] |= f.in_place
        derived = {
            "masks": masks,
            "_replace": masks[Access.RW] | masks[Access.WO],
            "_writable": (masks[Access.RW] | masks[Access.WO] | masks[Access.RW1C]
                          | masks[Access.RW1S]),
            "_visible": ~masks[Access.WO] & ~self.layout.reserved_mask,
            "_rw1c": masks[Access.RW1C],
            "_rw1s": masks[Access.RW1S],
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def size(self) -> int:
        return self.layout.width // 8

    def apply_write(self, old: int, wval: int, wmask: int) -> int:
        """The stored value after software writes ``wval`` on the bytes ``wmask`` covers."""
        take = self._replace & wmask
        new = (old & ~take) | (wval & take)
        new &= ~(wval & self._rw1c & wmask)
        new |= wval & self._rw1s & wmask
        return new

    def software_view(self, value: int) -> int:
        """What a read returns: WO bits read as 0, reserved bits as 0."""
        return value & self._visible

    def writable_mask(self) -> int:
        return self._writable


def register_map(caps: Capabilities) -> list[Register]:
    """Every register of this unit, sorted by offset (FRCD/IVA/IOTLB placed by CAP/ECAP)."""
    iqa_dw = RW if caps.smts else RO  # IQA.DW is honoured only with ECAP.SMTS (10.4.24)
    iqa = Layout("IQA", 64, [F("qs", 2, 0), F("dw", 11, access=iqa_dw), F("iqa", ADDR_HI, 12)],
                 spec="10.4.24")
    regs = [
        Register("VER", 0x000, VER),
        Register("CAP", 0x008, _read_only(CAP)),
        Register("ECAP", 0x010, _read_only(ECAP)),
        Register("GCMD", 0x018, GCMD, trigger_bit=0),
        Register("GSTS", 0x01C, GSTS),
        Register("RTADDR", 0x020, RTADDR),
        Register("CCMD", 0x028, CCMD, trigger_bit=63),
        Register("FSTS", 0x034, FSTS, trigger_bit=0),
        _event_control("FECTL", 0x038, "10.4.10"),
        *_msi_regs("FE", 0x03C, "10.4.11"),
        Register("AFLOG", 0x058, AFLOG),
        Register("PMEN", 0x064, PMEN),
        Register("PLMBASE", 0x068, Layout("PLMBASE", 32, [F("plmb", 31, 0)], spec="10.4.17")),
        Register("PLMLIMIT", 0x06C, Layout("PLMLIMIT", 32, [F("plml", 31, 0)], spec="10.4.18")),
        Register("PHMBASE", 0x070, Layout("PHMBASE", 64, [F("phmb", 63, 0)], spec="10.4.19")),
        Register("PHMLIMIT", 0x078, Layout("PHMLIMIT", 64, [F("phml", 63, 0)], spec="10.4.20")),
        Register("IQH", 0x080, IQH),
        Register("IQT", 0x088, IQT, trigger_bit=4),
        Register("IQA", 0x090, iqa),
        Register("ICS", 0x09C, ICS, trigger_bit=0),
        _event_control("IECTL", 0x0A0, "10.4.26"),
        *_msi_regs("IE", 0x0A4, "10.4.27"),
        Register("IQERCD", 0x0B0, IQERCD),
        Register("IRTA", 0x0B8, IRTA),
        Register("IVA", caps.iro_offset, IVA),
        Register("IOTLB", caps.iro_offset + 8, IOTLB, trigger_bit=63),
    ]
    if caps.prs:
        regs += [
            Register("PQH", 0x0C0, PQH),
            Register("PQT", 0x0C8, PQT),
            Register("PQA", 0x0D0, PQA),
            Register("PRS", 0x0DC, PRS),
            _event_control("PECTL", 0x0E0, "10.4.36"),
            *_msi_regs("PE", 0x0E4, "10.4.37"),
        ]
    regs += [
        Register(f"FRCD{i}", caps.fro_offset + 16 * i, FRCD, trigger_bit=127)
        for i in range(caps.nfr)
    ]
    regs.sort(key=lambda r: r.offset)
    for a, b in zip(regs, regs[1:], strict=False):
        if a.offset + a.size > b.offset:
            raise BadInput(
                f"register {a.name} at {a.offset:#x} overlaps {b.name} at {b.offset:#x}: "
                f"CAP.FRO/NFR or ECAP.IRO place registers on top of each other"
            )
    return regs


Callback = Callable[[Register, int, int], None]
EventSink = Callable[..., None]


Slot = tuple[Register, int, int]  # a well-formed access: register, bit shift, byte mask


@functools.lru_cache(maxsize=64)
def _indexed_map(caps: Capabilities) -> tuple[list[Register], dict[str, Register],
                                              dict[tuple[int, int], Slot]]:
    """``register_map(caps)`` with its by-name index and its access slots, built once per
    capability set (units with the same CAP/ECAP share the immutable map).  A slot is what
    an MMIO access may hit (``locate``) - a naturally aligned dword or qword inside one
    register - keyed ``(offset, size)``, with the shift and mask of the bytes it covers."""
    registers = register_map(caps)
    slots: dict[tuple[int, int], Slot] = {}
    for r in registers:
        for off in range(r.offset, r.offset + r.size, 4):
            for size in (4, 8):
                if not off % size and off + size <= r.offset + r.size:
                    shift = 8 * (off - r.offset)
                    slots[off, size] = (r, shift, ((1 << (8 * size)) - 1) << shift)
    return registers, {r.name: r for r in registers}, slots


class RegisterFile:
    """The register page of one unit.

    ``on_write(reg, old, new)`` runs after a software write that covers ``reg.trigger_bit``;
    ``on_event(event, **fields)`` hears ignored or malformed accesses (the unit's trace).
    Hardware updates registers with ``set``/``update``, which bypass access kinds.  ``raw``
    maps each register's name to its stored value: hardware on a hot path (the invalidation
    queue polling IQH/IQT/GSTS/FSTS) reads it directly, saving a call per register read.
    """

    def __init__(
        self,
        caps: Capabilities,
        *,
        on_write: Callback | None = None,
        on_event: EventSink | None = None,
    ):
        self.caps = caps
        self.on_write = on_write
        self.on_event = on_event
        self._bind_map()
        self.raw: dict[str, int] = {r.name: r.reset for r in self.registers}
        self.raw["VER"] = caps.ver
        self.raw["CAP"] = caps.cap
        self.raw["ECAP"] = caps.ecap

    def _bind_map(self) -> None:
        self.registers, self.by_name, self._slots = _indexed_map(self.caps)

    def __getstate__(self) -> dict:
        # The register map is immutable and derived from CAP/ECAP: copies (the checker's
        # worlds) share it instead of pickling ~140 Field objects each time.
        state = self.__dict__.copy()
        for derived in ("registers", "by_name", "_slots"):
            del state[derived]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bind_map()

    # -- hardware side ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> int:
        """The raw stored value (WO fields included)."""
        return self.raw[name]

    def get(self, name: str, field_name: str) -> int:
        return self.by_name[name].layout.get(self.raw[name], field_name)

    def set(self, name: str, value: int) -> None:
        """Hardware writes the whole register (access kinds do not apply)."""
        self.raw[name] = value & self.by_name[name].layout.full_mask

    def update(self, name: str, **fields: int) -> None:
        """Hardware writes some fields."""
        self.raw[name] = self.by_name[name].layout.replace(self.raw[name], **fields)

    def describe(self, name: str) -> str:
        return self.by_name[name].layout.describe(self.raw[name])

    # -- software side (MMIO) ----------------------------------------------------------------------
    def locate(self, offset: int, size: int) -> Register | None:
        """The register a well-formed access hits, or None (size, alignment, straddling)."""
        slot = self._slots.get((offset, size))
        return None if slot is None else slot[0]

    def mmio_read(self, offset: int, size: int) -> int:
        slot = self._slots.get((offset, size))  # ``locate``, with the shift and byte mask
        if slot is None:
            self._event("mmio_read_ignored", offset=offset, size=size)
            return 0
        reg, shift, mask = slot
        return (reg.software_view(self.raw[reg.name]) & mask) >> shift

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        slot = self._slots.get((offset, size))  # ``locate``, with the shift and byte mask
        if slot is None:
            self._event("mmio_write_ignored", offset=offset, size=size, value=value)
            return
        reg, shift, wmask = slot
        wval = (value << shift) & wmask
        rsvd = wval & reg.layout.reserved_mask
        if rsvd:
            # RsvdZ bits: software must write 0, hardware ignores them (spec 10.2).
            self._event("reserved_bits_written", reg=reg.name, bits=rsvd)
        if not wmask & reg._writable:
            self._event("read_only_write", reg=reg.name, value=value)
        old = self.raw[reg.name]
        new = reg.apply_write(old, wval, wmask)
        self.raw[reg.name] = new
        trigger = reg.trigger_bit
        if trigger is not None and wmask >> trigger & 1 and self.on_write is not None:
            self.on_write(reg, old, new)

    def _event(self, event: str, **fields: int | str) -> None:
        if self.on_event is not None:
            self.on_event(event, **fields)
