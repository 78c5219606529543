"""The litmus scenario file's one schema (pydantic v2): every table's keys, types, ranges and
defaults, then the file-wide rules - names unique, references declared, and what the unit
(the preset's CAP/ECAP) and the driver profile support.  Every check and message of a
scenario comes from here, for TOML files and for the Python API (``Scenario.validate``).

Not provided: several units per scenario; checks needing a run (an IOVA an op returns, a
lock name the driver never takes).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from vtdsim.checker.lifecycle import MOVING_OPS
from vtdsim.checker.properties import OBSERVATIONS
from vtdsim.checker.scenario_ops import AnyOp
from vtdsim.checker.schema_types import (
    DeviceRef,
    Iova,
    Name,
    OptionalThreadRef,
    Pasid,
    Strict,
    ThreadRef,
    Times,
    ref_kind,
)
from vtdsim.driver.profiles import PROFILES, Profile
from vtdsim.errors import BadInput
from vtdsim.hardware.presets import PRESETS

PROPERTIES = (
    "dma_after_free",
    "stale_after_strict_unmap",
    "spurious_fault",
    "torn_entry",
    "no_snoop_coherent",
    "stale_after_pasid_teardown",
    "stale_after_context_change",
    "deadlock_free",
)
VERDICTS = ("holds", "violated")
OBSERVATION_VERDICTS = ("observed", "never")
CACHES = ("context_cache", "pasid_cache", "iotlb", "pscache")
SID_TEXT = re.compile(r"([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])")
Cache = Literal[CACHES]  # type: ignore[valid-type]
Caches = Annotated[list[Cache], Field(min_length=1)]


class Problem(ValueError):
    """A file-wide rule broken at key path ``loc`` (pydantic carries it to the error)."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc


class DeviceTable(Strict):
    name: Name
    sid: int | str  # 0..0xffff, or "BB:DD.F" as lspci prints it
    ats: bool = False
    pasid: bool = False

    @field_validator("sid")
    @classmethod
    def _sid(cls, value: int | str) -> int:
        if isinstance(value, str):
            m = SID_TEXT.fullmatch(value)
            if not m:
                raise ValueError(f"sid={value!r}: expected 0..0xffff or 'BB:DD.F'")
            bus, dev, fn = (int(g, 16) for g in m.groups())
            if dev > 0x1F:
                raise ValueError(f"sid={value!r}: a PCI device number is at most 0x1f")
            return bus << 8 | dev << 3 | fn
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"sid={value:#x}: a source-id is 16 bits (bus:dev.fn)")
        return value


class DomainTable(Strict):
    name: Name
    type: Literal["dma", "dma_fq", "unmanaged"] = "dma"
    stage: Literal["ss", "fs"] | None = None
    devices: list[DeviceRef] = []
    pages: list[Name] = []  # data pages, one 4 KiB page each, allocated at set-up


class Gate(Strict):
    lock: Annotated[str, Field(min_length=1, max_length=64)]
    nth: Annotated[int, Field(ge=0, le=64)] = 0  # 0: the thread's start
    thread: ThreadRef
    released: Annotated[int, Field(ge=1, le=64)] = 1


class ThreadTable(Strict):
    name: Name
    ops: Annotated[list[AnyOp], Field(min_length=1)]
    after: list[Gate] = []


class Warm(Strict):
    device: DeviceRef
    iova: Iova
    pasid: Pasid | None = None


class Prefetch(Warm):
    times: Times = 1


class Eviction(Prefetch):
    caches: Caches = ["iotlb"]


class Fill(Eviction):
    negative: bool = False  # only not-present entries (caching mode, spec 6.1)


class TornFill(Eviction):
    """A fill whose multi-qword context/PASID entry is read in 64-bit pieces at different
    moments (spec 9.4/9.6 entries are 128-512 bits; the unit may fetch them in pieces)."""
    first: Literal["p", "rest"] = "p"  # the early pieces: qword 0 (Present) or the rest


class Dma(Prefetch):
    access: Literal["read", "write"] = "read"
    no_snoop: bool = False
    after_thread: OptionalThreadRef = ""
    expect_fault: bool = False  # declared to fault: never a spurious_fault


class Hardware(Strict):
    qi: Literal["async", "sync"] = "async"
    fills: list[Fill] = []
    evictions: list[Eviction] = []
    ats_prefetch: list[Prefetch] = []
    warm: list[Warm] = []
    torn_fills: list[TornFill] = []


Verdict = Literal[VERDICTS]  # type: ignore[valid-type]
Seen = Literal[OBSERVATION_VERDICTS]  # type: ignore[valid-type]
Expect = create_model(
    "Expect", __base__=Strict,
    **{p: (Verdict | None, None) for p in PROPERTIES},
    **{o: (Seen | None, None) for o in OBSERVATIONS},
)


class ScenarioFile(Strict):
    """A whole litmus file (checker/scenario.py documents the format)."""

    name: Name | None = None
    doc: str = ""
    preset: Literal[tuple(PRESETS)] = "qemu72-legacy"  # type: ignore[valid-type]
    profile: Literal[tuple(PROFILES)] = "linux-6.1"  # type: ignore[valid-type]
    policy: Literal["strict", "lazy", "auto"] = "strict"
    switches: dict[str, object] = {}  # Profile fields: types checked by _switches
    device: list[DeviceTable] = []
    domain: list[DomainTable] = []
    setup: list[AnyOp] = []
    thread: Annotated[list[ThreadTable], Field(min_length=1)]
    hardware: Hardware = Hardware()
    dma: list[Dma] = []
    expect: Expect = Expect()  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _file_rules(self) -> ScenarioFile:
        _unique(self)
        _references(self)
        _op_rules(self)
        _switches(self)
        _unit_supports(self)
        return self


# -- file-wide rules ---------------------------------------------------------------------------
def _unique(sc: ScenarioFile) -> None:
    seen: dict[tuple, tuple] = {}
    declared = [("device", i, "name", ("device", d.name)) for i, d in enumerate(sc.device)]
    declared += [("device", i, "sid", ("sid", d.sid)) for i, d in enumerate(sc.device)]
    declared += [("domain", i, "name", ("domain", d.name)) for i, d in enumerate(sc.domain)]
    declared += [("domain", i, "pages", j, ("page", p)) for i, d in enumerate(sc.domain)
                 for j, p in enumerate(d.pages)]
    declared += [("thread", i, "name", ("thread", t.name)) for i, t in enumerate(sc.thread)]
    declared += [("domain", i, "devices", j, ("device in a domain", name))
                 for i, d in enumerate(sc.domain) for j, name in enumerate(d.devices)]
    for *loc, key in declared:
        if key in seen:
            kind, value = key
            shown = f"{value:#x}" if isinstance(value, int) else repr(value)
            raise Problem(tuple(loc), f"duplicate {kind} {shown} (first at "
                                      f"{_path(seen[key])}): each is declared once")
        seen[key] = tuple(loc)


def _references(sc: ScenarioFile) -> None:
    universe = {
        "device": {d.name for d in sc.device},
        "domain": {d.name for d in sc.domain},
        "page": {p for d in sc.domain for p in d.pages},
        "thread": {t.name for t in sc.thread},
    }
    for loc, kind, value in _refs(sc, ()):
        if value and value not in universe[kind]:
            known = ", ".join(sorted(universe[kind])) or "none declared"
            raise Problem(loc, f"names unknown {kind} {value!r} (known: {known})")
    for i, t in enumerate(sc.thread):
        for j, gate in enumerate(t.after):
            if gate.thread == t.name:
                raise Problem(("thread", i, "after", j, "thread"),
                              "a thread cannot wait for its own release")


def _op_rules(sc: ScenarioFile) -> None:
    """What one op needs from the rest of the file: a DMA-API op a default DMA domain, a
    ``remove_dev_pasid`` a ``set_dev_pasid`` of that PASID somewhere (the iommu core detaches
    only an attached PASID, iommu_detach_device_pasid), a page freed once."""
    types = {d.name: d.type for d in sc.domain}
    ops = [(loc, o) for loc, o in _tables(sc) if loc[0] in ("setup", "thread")]
    attached = {(o.device, o.pasid) for _, o in ops if o.op == "set_dev_pasid"}
    freed: dict[str, tuple] = {}
    for loc, o in ops:
        if o.op == "free":
            if o.page in freed:
                raise Problem(loc, f"page {o.page!r} is freed twice (first at "
                              f"{_path(freed[o.page])}): a double free")
            freed[o.page] = loc
        if o.dma_api and types.get(o.domain) == "unmanaged":
            raise Problem((*loc, "domain"), f"{o.op} goes through the DMA API, which an "
                          f"unmanaged domain ({o.domain!r}) does not have")
        if o.op == "remove_dev_pasid" and (o.device, o.pasid) not in attached:
            raise Problem(loc, f"no set_dev_pasid attaches pasid={o.pasid:#x} of device "
                          f"{o.device!r}: nothing to remove")
    _one_mover(ops)


def _one_mover(ops: list) -> None:
    """A device is moved (attached, detached, released, a PASID set or removed) by one thread
    at most: the iommu core does all of these under the group's mutex (iommu.c:
    __iommu_attach_group, iommu_detach_device, iommu_attach_device_pasid), so two threads
    never race them."""
    mover: dict[str, tuple] = {}
    for loc, o in ops:
        if loc[0] != "thread" or o.op not in MOVING_OPS:
            continue
        first = mover.setdefault(o.device, loc)
        if first[:2] != loc[:2]:
            raise Problem(loc, f"{o.op} of device {o.device!r} races {_path(first)} in another "
                          "thread: Linux moves a device under its group's mutex, one at a time")


def _refs(node, loc: tuple) -> Iterator[tuple[tuple, str, str]]:
    """(key path, kind, name) of every field marked ``Ref`` below ``node``."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _refs(item, (*loc, i))
        return
    if not isinstance(node, BaseModel):
        return
    for name, info in type(node).model_fields.items():
        value = getattr(node, name)
        kind = ref_kind(info.annotation, info.metadata)
        if kind is None:
            yield from _refs(value, (*loc, name))
        elif isinstance(value, list):
            yield from (((*loc, name, i), kind, v) for i, v in enumerate(value))
        else:
            yield (*loc, name), kind, value


def _switches(sc: ScenarioFile) -> None:
    types = {f.name: f.type for f in dataclasses.fields(Profile) if f.name != "name"}
    types["wbinvd_works"] = "bool"  # Platform: KVM turning guest WBINVD into a no-op
    for key, value in sc.switches.items():
        if key not in types:
            raise Problem(("switches", key), "no such switch; switches: "
                          + ", ".join(sorted(types)))
        wanted = bool if types[key] in (bool, "bool") else str
        if type(value) is not wanted:
            raise Problem(("switches", key), f"expected a {_toml_type(wanted)}, "
                          f"got {_toml_type(type(value))} {value!r}")
    profile = {k: v for k, v in sc.switches.items() if k != "wbinvd_works"}
    try:
        PROFILES[sc.profile].with_(**profile)
    except BadInput as err:
        raise Problem(("switches",), str(err)) from None


def _unit_supports(sc: ScenarioFile) -> None:
    caps = PRESETS[sc.preset]
    width = caps.mgaw
    devices = {d.name: d for d in sc.device}
    for loc, table in _tables(sc):
        iova = getattr(table, "iova", None)
        end = (iova or 0) + getattr(table, "size", 1) - 1
        if iova is not None and end >> width:
            raise Problem((*loc, "iova"), f"iova={iova:#x} (to {end:#x}) is beyond the "
                          f"unit's {width}-bit address width (CAP.MGAW, preset {sc.preset})")
        pasid = getattr(table, "pasid", None)
        if pasid is not None:
            _pasid_supported(caps, devices.get(getattr(table, "device", "")), pasid, loc, sc)
    for i, pre in enumerate(sc.hardware.ats_prefetch):
        if not devices[pre.device].ats:
            raise Problem(("hardware", "ats_prefetch", i, "device"),
                          f"device {pre.device!r} has no ATS (ats = false): it cannot "
                          "send translation requests (PCIe ATS)")
        if not caps.dt:
            raise Problem(("hardware", "ats_prefetch", i), f"preset {sc.preset} lacks "
                          "ECAP.DT: Linux never enables ATS behind it")
    for i, fill in enumerate(sc.hardware.fills):
        if fill.negative and not caps.caching_mode:
            raise Problem(("hardware", "fills", i, "negative"), f"preset {sc.preset} has "
                          "CAP.CM=0: the unit never caches not-present entries (spec 6.1)")
    for i, dom in enumerate(sc.domain):
        _stage_supported(caps, dom, ("domain", i, "stage"), sc.preset)


def _tables(sc: ScenarioFile) -> Iterator[tuple[tuple, BaseModel]]:
    for i, o in enumerate(sc.setup):
        yield ("setup", i), o
    for i, t in enumerate(sc.thread):
        for j, o in enumerate(t.ops):
            yield ("thread", i, "ops", j), o
    for key in ("fills", "evictions", "ats_prefetch", "warm", "torn_fills"):
        for i, f in enumerate(getattr(sc.hardware, key)):
            yield ("hardware", key, i), f
    for i, d in enumerate(sc.dma):
        yield ("dma", i), d


def _pasid_supported(caps, device, pasid: int, loc: tuple, sc: ScenarioFile) -> None:
    if not caps.pasid:
        raise Problem((*loc, "pasid"), f"preset {sc.preset} lacks ECAP.PASID: no request "
                      "carries a PASID")
    if pasid >> caps.pss:
        raise Problem((*loc, "pasid"), f"pasid={pasid:#x} needs more than the unit's "
                      f"{caps.pss} PASID bits (ECAP.PSS)")
    if device is not None and not device.pasid:
        raise Problem((*loc, "pasid"), f"device {device.name!r} is not PASID-capable "
                      "(pasid = false)")


def _stage_supported(caps, dom: DomainTable, loc: tuple, preset: str) -> None:
    if dom.stage == "fs" and not (caps.smts and caps.fsts):
        raise Problem(loc, f"preset {preset} has no first-stage translation (ECAP.SMTS and "
                      "ECAP.FSTS)")
    if dom.stage == "ss" and caps.smts and not caps.ssts:
        raise Problem(loc, f"preset {preset} has no second-stage translation in scalable "
                      "mode (ECAP.SSTS)")


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _toml_type(kind: type) -> str:
    return {bool: "boolean", int: "integer", str: "string", float: "float", list: "array",
            dict: "table"}.get(kind, kind.__name__)
