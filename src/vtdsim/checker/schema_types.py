"""The litmus schema's building blocks (pydantic v2): strict field types with their ranges, and
``Ref`` marking a field that names a device, domain, page or thread declared elsewhere.

Not provided: coercion - a TOML string is never read as a number, nor a number as a boolean.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

PAGE = 4096
MAX_MAP_SIZE = 1 << 30  # the largest page a VT-d table maps (spec 3.7, SLLPS 1 GiB)
MAX_TIMES = 16  # a freedom's bound: each unit multiplies the interleavings explored
PASID_BITS = 20  # PCIe PASID TLP prefix (spec 3.4.1)


@dataclass(frozen=True)
class Ref:
    """Metadata: the field names a ``kind`` ("device", "domain", "page", "thread") that the
    scenario must declare; the file-level validator checks every such field."""

    kind: str


class Strict(BaseModel):
    """Every table of a scenario: unknown keys rejected, no coercion, values frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# Names become actor names ("T0:map", "dev1:dma") and file names (saved schedules): a plain
# identifier-like word, no separators.
Name = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")]
DeviceRef = Annotated[Name, Ref("device")]
DomainRef = Annotated[Name, Ref("domain")]
PageRef = Annotated[Name, Ref("page")]
ThreadRef = Annotated[Name, Ref("thread")]
OptionalThreadRef = Annotated[str, Ref("thread")]  # "" for none
OptionalDomainRef = Annotated[str, Ref("domain")]

U64 = Annotated[int, Field(ge=0, lt=1 << 64)]
Iova = Annotated[int, Field(ge=0, lt=1 << 64)]  # the unit's width is checked per scenario
PageIova = Annotated[int, Field(ge=0, lt=1 << 64, multiple_of=PAGE)]  # iommu_map: aligned
MapSize = Annotated[int, Field(ge=PAGE, le=MAX_MAP_SIZE, multiple_of=PAGE)]
DmaSize = Annotated[int, Field(ge=1, le=MAX_MAP_SIZE)]
Pasid = Annotated[int, Field(ge=1, lt=1 << PASID_BITS)]  # PASID 0 is RID2PASID's
Times = Annotated[int, Field(ge=1, le=MAX_TIMES)]
Cpu = Annotated[int, Field(ge=0, le=1)]  # Platform(ncpus=2)
Offset = Annotated[int, Field(ge=0, le=PAGE - 8, multiple_of=8)]  # a qword inside the page


def ref_kind(annotation, metadata: list) -> str | None:
    """The ``Ref`` kind of a field (its own metadata or, for a list, its items')."""
    for meta in metadata:
        if isinstance(meta, Ref):
            return meta.kind
    for arg in typing.get_args(annotation):
        for meta in getattr(arg, "__metadata__", ()):
            if isinstance(meta, Ref):
                return meta.kind
    return None
