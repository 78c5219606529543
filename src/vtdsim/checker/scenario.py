"""Litmus scenarios for the VT-d checker: the TOML format and the Python API building the same
``Scenario`` (herd7-style: an initial state, one column of operations per thread, bounds on the
hardware's freedoms, and the expected verdict per property).

A scenario file::

    name = "unmap_free_race_flush_wait"
    doc = "strict unmap then free, racing a DMA: the flush + wait closes the race"
    preset = "qemu72-legacy"            # hardware.presets name (bare metal only)
    profile = "linux-6.1"               # driver.profiles name
    policy = "strict"                   # default DMA domain: strict | lazy | auto (Linux's)
    [platform]                          # optional: a guest on QEMU (simulation.machine)
    kind = "shadow"                     # bare (default) | emulated | shadow | nested
    vmm = "qemu-7.2"                    # qemu-7.2 | qemu-10.0 | qemu-nesting-2026
    device_iotlb = true                 # QEMU's device-iotlb=on (ECAP.DT)
    host_unit = "server-sm"             # the host's unit and driver profile (assigned devices)
    host_profile = "mainline"
    [switches]                          # Profile fields overridden (seed switches)
    devtlb_flush_checks_caching_mode = true
    [[device]]                          # endpoints behind unit 0
    name = "dev1"
    sid = 0x10                          # or "00:02.0"
    ats = false
    backend = "vfio"                    # on a VM: emulated | vfio | iommufd (by platform)
    [[domain]]
    name = "dom"
    type = "dma"                        # dma | dma_fq | unmanaged; stage = "ss" | "fs"
    devices = ["dev1"]
    pages = ["buf"]                     # named data pages, allocated at set-up
    [[setup]]                           # run directly before exploration
    op = "map"
    domain = "dom"
    iova = 0x1000
    page = "buf"
    [[thread]]
    name = "T0"
    ops = [{op = "unmap", domain = "dom", iova = 0x1000}, {op = "free", page = "buf"}]
    [hardware]                          # bounds of the hardware's freedoms
    qi = "async"                        # default: async on bare metal, sync on a VM
    fills = [{device = "dev1", iova = 0x1000, caches = ["iotlb"], times = 1}]
    evictions = []                      # same shape as fills
    ats_prefetch = []                   # {device, iova, times}
    warm = []                           # {device, iova, pasid}: DMA reads made at set-up
    [[dma]]                             # a device's DMA actor
    device = "dev1"
    iova = 0x1000
    access = "read"                     # read | write
    times = 1
    [expect]
    dma_after_free = "holds"

A ``[[thread]]`` may carry ``after = [{lock = "iommu0.lock", nth = 2, thread = "T0", released
= 1}]``: its 2nd acquisition of the lock waits until T0 has released it once (``LockGate``;
``nth`` 0, the default, holds the thread's start), which pins the order of two critical
sections; freedoms take ``pasid`` (a request with a PASID TLP prefix: DMA, ATS, fills and
evictions of that PASID's entries).  A fill with ``negative = true`` inserts only not-present
entries (caching mode, spec 6.1); a ``[[dma]]`` with ``after_thread = "T1"`` starts once T1
has finished (a driver hands the IOVA to its device after the map returned).  ``attach`` takes
``part = "prepare"`` (the old domain blocked, DID, device list: nothing the hardware sees) or
``"program"`` (the rest), so a set-up can run the part that cannot race.

Operations (``op``) and their fields are declared in ``scenario_ops`` (one model per op); an op
may carry ``skip = ["WaitQword"]`` (mutation: those steps are dropped, e.g. a flush submitted
without waiting).  Every key, type, range and cross-reference is checked by the one schema in
``scenario_schema``, for files and for the Python API alike.

Not provided: several remapping units per scenario, include files, parameterised scenarios
(write one file per setting; the mutant helper generates variants through the Python API).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtdsim import validation
from vtdsim.checker import scenario_schema as schema
from vtdsim.checker.scenario_ops import OP_MODELS
from vtdsim.checker.scenario_schema import (  # noqa: F401 (the names callers use)
    CACHES,
    OBSERVATION_VERDICTS,
    PROPERTIES,
    VERDICTS,
)
from vtdsim.errors import BadInput

OPS = tuple(OP_MODELS)


@dataclass(frozen=True)
class Op:
    """One operation of a thread or of the set-up; ``args`` holds every field with defaults."""

    kind: str
    args: dict
    skip: tuple[str, ...] = ()
    line: int = 0

    def __getitem__(self, name: str) -> Any:
        return self.args[name]

    def describe(self) -> str:
        """``unmap(domain=dom, iova=0x1000, sync=false)``: the fields as a scenario writes
        them, those left at their default omitted."""
        fields = OP_MODELS[self.kind].model_fields if self.kind in OP_MODELS else {}
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.args.items()
                          if k not in fields or fields[k].is_required() or fields[k].default != v)
        extra = f" skip=[{', '.join(self.skip)}]" if self.skip else ""
        return f"{self.kind}({shown}){extra}"


def _show(value: Any) -> str:
    """A value in the scenario's notation: hex integers, TOML booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:#x}" if isinstance(value, int) else str(value)


def op(kind: str, *, skip: tuple[str, ...] | list[str] = (), line: int = 0, **fields) -> Op:
    """Build an ``Op`` through its declared model (the Python API's counterpart of a TOML
    table): unknown or missing fields, types and ranges as for a file."""
    data = {"op": kind, **fields, "skip": list(skip)}
    model = OP_MODELS.get(kind)
    if model is None:
        raise BadInput(f"unknown op {kind!r}; ops: {', '.join(OP_MODELS)}")
    checked = validation.validate(model, data, f"op {kind!r}")
    return _op_of(checked, line)


def _op_of(model, line: int = 0) -> Op:
    args = model.model_dump(exclude={"op", "skip"})
    return Op(model.op, args, tuple(model.skip), line)


@dataclass(frozen=True)
class Device:
    name: str
    sid: int
    ats: bool = False
    pasid: bool = False
    backend: str | None = None  # on a VM: "emulated" | "vfio" | "iommufd" (platform's default)


@dataclass(frozen=True)
class Domain:
    name: str
    type: str = "dma"
    stage: str | None = None
    devices: tuple[str, ...] = ()
    pages: tuple[str, ...] = ()


@dataclass(frozen=True)
class Freedom:
    """A bounded hardware freedom at one (device, IOVA): cache fills, evictions, ATS
    prefetches, or DMA (``access`` read/write, ``no_snoop``)."""

    device: str
    iova: int
    times: int = 1
    caches: tuple[str, ...] = ("iotlb",)
    access: str = "read"
    no_snoop: bool = False
    pasid: int | None = None
    after_thread: str = ""  # DMA only: the device starts once this thread has finished
    negative: bool = False  # fills only: only not-present (caching-mode) entries
    expect_fault: bool = False  # DMA only: declared to fault (never a spurious_fault)
    first: str = "p"  # torn fills only: the early 64-bit pieces, qword 0 ("p") or "rest"


@dataclass(frozen=True)
class LockGate:
    """Holds a thread's ``nth`` acquisition of ``lock`` (``nth`` 0: the thread's start) until
    ``thread`` has released that lock ``released`` times (``after`` in a ``[[thread]]``).
    Critical sections on one lock are totally ordered, so a gate selects the executions where
    one section precedes another (seed 001: Kevin Tian's "before/after the locked walk")."""

    lock: str
    nth: int
    thread: str
    released: int = 1


@dataclass
class Scenario:
    """Everything one litmus test says; built by ``load`` or by the methods below."""

    name: str
    preset: str | None = None  # bare metal's unit (DEFAULT_PRESET when not given)
    profile: str = "linux-6.1"
    policy: str = "strict"
    doc: str = ""
    switches: dict = field(default_factory=dict)
    devices: list[Device] = field(default_factory=list)
    domains: list[Domain] = field(default_factory=list)
    setup_ops: list[Op] = field(default_factory=list)
    threads: dict[str, list[Op]] = field(default_factory=dict)
    gates: dict[str, tuple[LockGate, ...]] = field(default_factory=dict)  # thread -> gates
    qi: str | None = None  # "async" | "sync"; not given: async on bare metal, sync on a VM
    platform: dict = field(default_factory=dict)  # the [platform] table's keys as given
    fills: list[Freedom] = field(default_factory=list)
    torn_fills: list[Freedom] = field(default_factory=list)  # fills read in 64-bit pieces
    evictions: list[Freedom] = field(default_factory=list)
    ats_prefetch: list[Freedom] = field(default_factory=list)
    warm: list[Freedom] = field(default_factory=list)  # the initial state's cached translations
    dma: list[Freedom] = field(default_factory=list)
    expect: dict[str, str] = field(default_factory=dict)
    path: str = ""

    # -- the Python API (each returns self, to chain) --------------------------------------
    def device(self, name: str, sid: int, *, ats: bool = False, pasid: bool = False,
               backend: str | None = None):
        self.devices.append(Device(name, sid, ats, pasid, backend))
        return self

    def on(self, kind: str, **table):
        """The platform (``[platform]``: kind, vmm, device_iotlb, host_unit, host_profile)."""
        self.platform = {"kind": kind, **table}
        return self

    def domain(self, name: str, *, type: str = "dma", stage: str | None = None,
               devices: tuple[str, ...] = (), pages: tuple[str, ...] = ()):
        self.domains.append(Domain(name, type, stage, tuple(devices), tuple(pages)))
        return self

    def setup(self, *ops: Op):
        self.setup_ops.extend(ops)
        return self

    def thread(self, name: str, *ops: Op, after: tuple[LockGate, ...] = ()):
        self.threads[name] = list(ops)
        if after:
            self.gates[name] = tuple(after)
        return self

    def fill(self, device: str, iova: int, *, caches=("iotlb",), times: int = 1,
             pasid: int | None = None, negative: bool = False):
        self.fills.append(Freedom(device, iova, times, tuple(caches), pasid=pasid,
                                  negative=negative))
        return self

    def evict(self, device: str, iova: int, *, caches=("iotlb",), times: int = 1,
              pasid: int | None = None):
        self.evictions.append(Freedom(device, iova, times, tuple(caches), pasid=pasid))
        return self

    def prefetch(self, device: str, iova: int, *, times: int = 1, pasid: int | None = None):
        self.ats_prefetch.append(Freedom(device, iova, times, pasid=pasid))
        return self

    def dma_actor(self, device: str, iova: int, *, access: str = "read", times: int = 1,
                  no_snoop: bool = False, pasid: int | None = None, after_thread: str = "",
                  expect_fault: bool = False):
        self.dma.append(Freedom(device, iova, times, access=access, no_snoop=no_snoop,
                                pasid=pasid, after_thread=after_thread,
                                expect_fault=expect_fault))
        return self

    def expecting(self, **verdicts: str):
        self.expect.update(verdicts)
        return self

    # -- derived ---------------------------------------------------------------------------
    def where(self) -> str:
        return self.path or self.name

    def platform_table(self) -> schema.PlatformTable:
        """The ``[platform]`` table with its defaults (bare metal when absent)."""
        return schema.PlatformTable(**self.platform)

    @property
    def unit_preset(self) -> str:
        """Bare metal's unit: the preset named, else the default one."""
        return self.preset or schema.DEFAULT_PRESET

    @property
    def queue_mode(self) -> str:
        """The guest's queue: as given, else async on bare metal (the queue engine is an
        actor) and sync on a VM (QEMU processes the queue inside the IQT write's exit)."""
        return self.qi or ("async" if self.platform_table().kind == "bare" else "sync")

    def iovas(self) -> list[int]:
        """Every IOVA page the scenario names (the universe of abstract cache locations)."""
        found = {f.iova & ~0xFFF for f in (*self.fills, *self.evictions, *self.ats_prefetch,
                                            *self.dma, *self.warm, *self.torn_fills)}
        for ops in (self.setup_ops, *self.threads.values()):
            found |= {o.args["iova"] & ~0xFFF for o in ops if "iova" in o.args}
        return sorted(found)

    def validate(self) -> Scenario:
        """The schema's checks (scenario_schema) on what the Python API built."""
        validation.validate(schema.ScenarioFile, _as_data(self), self.where())
        return self


def _as_data(sc: Scenario) -> dict:
    """The TOML-shaped data of a scenario built through the Python API."""
    def ops(group: list[Op]) -> list[dict]:
        return [{"op": o.kind, **o.args, "skip": list(o.skip)} for o in group]

    def freedoms(items: list[Freedom], model) -> list[dict]:
        keep = model.model_fields
        out = []
        for f in items:
            data = {k: list(v) if isinstance(v, tuple) else v
                    for k, v in dataclasses.asdict(f).items() if k in keep}
            out.append({k: v for k, v in data.items() if v is not None})
        return out

    hardware = {**({"qi": sc.qi} if sc.qi else {}), "fills": freedoms(sc.fills, schema.Fill),
                "evictions": freedoms(sc.evictions, schema.Eviction),
                "ats_prefetch": freedoms(sc.ats_prefetch, schema.Prefetch),
                "warm": freedoms(sc.warm, schema.Warm),
                "torn_fills": freedoms(sc.torn_fills, schema.TornFill)}
    # A file without ``name`` is named after itself, whatever characters its file name has.
    named = {} if sc.path and Path(sc.path).stem == sc.name else {"name": sc.name}
    return {
        **named, "doc": sc.doc, **({"preset": sc.preset} if sc.preset else {}),
        "profile": sc.profile, "policy": sc.policy, "switches": dict(sc.switches),
        **({"platform": dict(sc.platform)} if sc.platform else {}),
        "device": [{"name": d.name, "sid": d.sid, "ats": d.ats, "pasid": d.pasid,
                    **({"backend": d.backend} if d.backend else {})} for d in sc.devices],
        "domain": [{"name": d.name, "type": d.type, "devices": list(d.devices),
                    "pages": list(d.pages), **({"stage": d.stage} if d.stage else {})}
                   for d in sc.domains],
        "setup": ops(sc.setup_ops),
        "thread": [{"name": name, "ops": ops(group),
                    "after": [dataclasses.asdict(g) for g in sc.gates.get(name, ())]}
                   for name, group in sc.threads.items()],
        "hardware": hardware, "dma": freedoms(sc.dma, schema.Dma), "expect": dict(sc.expect),
    }


# -- TOML ---------------------------------------------------------------------------------------
def load(path: str | Path) -> Scenario:
    """Read one scenario file; BadInput ``file:line: key.path: message`` when malformed."""
    return parse(validation.read_text(path, "scenario"), str(path))


def parse(text: str, where: str = "<scenario>") -> Scenario:
    data = validation.parse_toml(text, where)
    checked = validation.validate(schema.ScenarioFile, data, where, text)
    return _build(checked, text, where)


def _build(f: schema.ScenarioFile, text: str, where: str) -> Scenario:
    """The checked file as a ``Scenario`` (ops keep their line for messages at run time)."""
    def line(*loc) -> int:
        return validation.locate(text, loc)

    hw = f.hardware
    sc = Scenario(
        name=f.name or Path(where).stem, preset=f.preset, profile=f.profile, policy=f.policy,
        doc=f.doc, switches=dict(f.switches), qi=hw.qi, path=where,
        platform=f.platform.model_dump(exclude_unset=True),
        expect={k: v for k, v in f.expect.model_dump().items() if v is not None},
    )
    for d in f.device:
        sc.device(d.name, d.sid, ats=d.ats, pasid=d.pasid, backend=d.backend)
    for d in f.domain:
        sc.domain(d.name, type=d.type, stage=d.stage, devices=tuple(d.devices),
                  pages=tuple(d.pages))
    sc.setup(*(_op_of(o, line("setup", i)) for i, o in enumerate(f.setup)))
    for i, t in enumerate(f.thread):
        sc.thread(t.name, *(_op_of(o, line("thread", i, "ops", j)) for j, o in enumerate(t.ops)),
                  after=tuple(LockGate(g.lock, g.nth, g.thread, g.released) for g in t.after))
    sc.fills = [_freedom(x) for x in hw.fills]
    sc.evictions = [_freedom(x) for x in hw.evictions]
    sc.ats_prefetch = [_freedom(x) for x in hw.ats_prefetch]
    sc.warm = [_freedom(x) for x in hw.warm]
    sc.torn_fills = [_freedom(x) for x in hw.torn_fills]
    sc.dma = [_freedom(x) for x in f.dma]
    return sc


def _freedom(table) -> Freedom:
    fields = table.model_dump()
    if "caches" in fields:
        fields["caches"] = tuple(fields["caches"])
    return Freedom(**fields)
