"""Bit-field layouts: every register, table entry, page-table entry and descriptor is declared
once as a ``Layout``; encode, decode, printing and reserved-bit checks all derive from it.

Bits are numbered from 0 (LSB).  A layout wider than 64 bits is one Python int; bit N is bit
N mod 64 of qword N div 64, exactly as the VT-d spec numbers 128/256/512-bit structures.

Not modelled: fields that are split over non-adjacent bit ranges are declared as two fields
(e.g. ``pfsid_lo``/``pfsid_hi`` of the device-TLB descriptor); callers combine them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vtdsim.errors import ModelError, hexval

QWORD_MASK = (1 << 64) - 1


def join_qwords(qws: Sequence[int]) -> int:
    """One value from qwords, qword i in bits 64i+63:64i (as the spec numbers 128/256/512-bit
    structures); each qword is taken modulo 2^64."""
    value = 0
    for qw in reversed(qws):
        value = value << 64 | (qw & QWORD_MASK)
    return value


def split_qwords(value: int, count: int) -> tuple[int, ...]:
    """The ``count`` qwords of ``value``, qword 0 first (``join_qwords`` undone)."""
    return tuple((value >> (64 * i)) & QWORD_MASK for i in range(count))


class Access(enum.Enum):
    """Register access kinds (VT-d spec 10.2); for table entries and descriptors, RW."""

    RO = "RO"  # read-only: writes ignored
    RW = "RW"
    RW1C = "RW1C"  # write 1 to clear
    RW1S = "RW1S"  # write 1 to set
    WO = "WO"  # write-only: reads return 0
    RSVD = "RsvdZ"  # reserved, must be written as zero, reads as zero


@dataclass(frozen=True, slots=True)
class Field:
    """Bits ``hi:lo`` (inclusive) of a layout."""

    name: str
    hi: int
    lo: int
    access: Access = Access.RW
    doc: str = ""

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def mask(self) -> int:
        """Mask of the field's value, unshifted (e.g. 0xffff for a 16-bit field)."""
        return (1 << self.width) - 1

    @property
    def in_place(self) -> int:
        """Mask of the field's bits in the containing value."""
        return self.mask << self.lo

    def get(self, value: int) -> int:
        return (value >> self.lo) & ((1 << (self.hi - self.lo + 1)) - 1)

    def put(self, value: int, field_value: int) -> int:
        """Return ``value`` with this field replaced by ``field_value`` (which must fit)."""
        if field_value < 0 or field_value > self.mask:
            where = f"bits {self.hi}:{self.lo}"
            raise ModelError(f"{hexval(self.name, field_value)} does not fit {where}")
        return (value & ~self.in_place) | (field_value << self.lo)


def F(
    name: str, hi: int, lo: int | None = None, access: Access = Access.RW, doc: str = ""
) -> Field:
    """Declare a field the way the spec's tables write it: ``F("did", 31, 16)``, ``F("p", 0)``."""
    return Field(name, hi, hi if lo is None else lo, access, doc)


class Layout:
    """A named, fixed-width bit layout.

    ``reserved`` says what bits not covered by a field are: ``"zero"`` (reserved, must be zero:
    ``reserved_bits`` reports them) or ``"ignored"`` (software may use them; hardware ignores).
    Fields declared with ``Access.RSVD`` are always reserved-zero.
    """

    def __init__(
        self,
        name: str,
        width: int,
        fields: Iterable[Field],
        *,
        spec: str = "",
        reserved: str = "zero",
    ):
        self.name = name
        self.width = width
        self.spec = spec
        self.fields: dict[str, Field] = {}
        covered = 0
        reserved_mask = 0
        for f in fields:
            if f.lo < 0 or f.hi < f.lo or f.hi >= width:
                raise ModelError(f"{name}.{f.name}: bits {f.hi}:{f.lo} outside {width}-bit layout")
            if f.name in self.fields:
                raise ModelError(f"{name}: field {f.name} declared twice")
            if covered & f.in_place:
                raise ModelError(f"{name}.{f.name}: bits {f.hi}:{f.lo} overlap another field")
            covered |= f.in_place
            if f.access is Access.RSVD:
                reserved_mask |= f.in_place
            else:
                self.fields[f.name] = f
        if reserved not in ("zero", "ignored"):
            raise ModelError(f"{name}: reserved must be 'zero' or 'ignored'")
        full = (1 << width) - 1
        if reserved == "zero":
            reserved_mask |= full & ~covered
        self.reserved_mask = reserved_mask
        self.full_mask = full
        # (shift, mask) per field: ``get`` is on hot paths (queue state, walks, registers).
        self._extract = {n: (f.lo, f.mask) for n, f in self.fields.items()}

    # -- field access -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise ModelError(f"{self.name} has no field {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def get(self, value: int, name: str) -> int:
        try:
            shift, mask = self._extract[name]
        except KeyError:
            raise ModelError(f"{self.name} has no field {name!r}") from None
        return (value >> shift) & mask

    def decode(self, value: int) -> dict[str, int]:
        """Every field's value, in declaration order."""
        return {n: (value >> shift) & mask for n, (shift, mask) in self._extract.items()}

    def encode(self, **values: int) -> int:
        """Build a value from field values; unnamed fields are zero."""
        return self.replace(0, **values)

    def replace(self, value: int, **values: int) -> int:
        extract = self._extract
        for n, v in values.items():
            try:
                shift, mask = extract[n]
            except KeyError:
                raise ModelError(f"{self.name} has no field {n!r}") from None
            v = int(v)
            if v < 0 or v > mask:
                raise ModelError(f"{hexval(n, v)} does not fit {self.name}.{n}")
            value = (value & ~(mask << shift)) | (v << shift)
        return value

    # -- validity -------------------------------------------------------------------------------
    def reserved_bits(self, value: int) -> int:
        """The reserved bits that are set in ``value`` (0 when the value is well formed)."""
        return value & self.reserved_mask

    def fits(self, value: int) -> bool:
        return 0 <= value <= self.full_mask

    # -- printing -------------------------------------------------------------------------------
    def describe(self, value: int, *, all_fields: bool = False) -> str:
        """``name: f1=0x.. f2=0x..`` with the non-zero fields (or all of them)."""
        parts = [
            hexval(n, v) for n, v in self.decode(value).items() if all_fields or v
        ]
        rsv = self.reserved_bits(value)
        if rsv:
            parts.append(hexval("RESERVED", rsv))
        return f"{self.name}: " + (" ".join(parts) if parts else "0")

    # -- multi-qword structures -------------------------------------------------------------------
    @property
    def qwords(self) -> int:
        return (self.width + 63) // 64

    def from_qwords(self, qws: Sequence[int]) -> int:
        return join_qwords(qws) & self.full_mask

    def to_qwords(self, value: int) -> tuple[int, ...]:
        return split_qwords(value, self.qwords)

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, {self.width} bits, {len(self.fields)} fields)"
