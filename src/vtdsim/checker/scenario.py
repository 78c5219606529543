"""Litmus scenarios for the VT-d checker: the TOML format and the Python API building the same
``Scenario`` (herd7-style: an initial state, one column of operations per thread, bounds on the
hardware's freedoms, and the expected verdict per property).

A scenario file::

    name = "unmap_free_race_flush_wait"
    doc = "strict unmap then free, racing a DMA: the flush + wait closes the race"
    preset = "qemu72-legacy"            # hardware.presets name
    profile = "linux-6.1"               # driver.profiles name
    policy = "strict"                   # default DMA domain: strict | lazy | auto (Linux's)
    [switches]                          # Profile fields overridden (seed switches)
    devtlb_flush_checks_caching_mode = true
    [[device]]                          # endpoints behind unit 0
    name = "dev1"
    sid = 0x10                          # or "00:02.0"
    ats = false
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
    qi = "async"
    fills = [{device = "dev1", iova = 0x1000, caches = ["iotlb"], times = 1}]
    evictions = []                      # same shape as fills
    ats_prefetch = []                   # {device, iova, times}
    warm = []                           # {device, iova, pasid}: DMA reads made at set-up
    torn_fills = []                     # fills whose entries are read in 64-bit pieces:
                                        # {device, iova, caches, times, first = "p" | "rest"}
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

Operations (``op``) and their fields are listed in ``OPS``; an op may carry ``skip =
["WaitQword"]`` (mutation: those steps are dropped, e.g. a flush submitted without waiting).

Not provided: several remapping units per scenario, include files, parameterised scenarios
(write one file per setting; the mutant helper generates variants through the Python API).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtdsim.checker.properties import OBSERVATIONS
from vtdsim.errors import BadInput

VERDICTS = ("holds", "violated")
OBSERVATION_VERDICTS = ("observed", "never")  # for OBSERVATIONS (lazy_exposure ...)
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
POLICIES = ("strict", "lazy", "auto")
CACHES = ("context_cache", "pasid_cache", "iotlb", "pscache")
ATTACH_PARTS = ("all", "prepare", "program")

# op -> (required fields, optional fields with defaults)
OPS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "map": (("domain", "iova", "page"), {"size": 4096, "prot": "rw", "sync": True}),
    "unmap": (("domain", "iova"), {"size": 4096, "sync": True}),
    "dma_map": (("domain", "page"), {"size": 4096, "prot": "rw", "cpu": 0}),
    "dma_unmap": (("domain", "iova"), {"size": 4096, "cpu": 0}),
    "flush_iotlb_all": (("domain",), {}),
    "fq_timer": (("domain",), {}),
    "free": (("page",), {}),
    "attach": (("domain", "device"), {"part": "all"}),  # all | prepare | program (boot.py)
    "set_dev_pasid": (("domain", "device", "pasid"), {"old": ""}),
    "remove_dev_pasid": (("device", "pasid"), {}),
    "enforce_cache_coherency": (("domain",), {}),
    "context_flip_pri": (("device",), {"enable": True}),
    "cpu_write": (("page",), {"offset": 0, "value": 0}),
    "cpu_read": (("page",), {"offset": 0}),
    "clflush": (("page",), {"offset": 0}),
    "cpu_zero": (("page",), {"offset": 0, "size": 4096}),  # memset(0) of the buffer
    "wbinvd": ((), {}),
    "alloc": (("page",), {}),  # the allocator's next page becomes this data page
    "detach": (("device",), {}),
    "attach_blocking": (("device",), {}),
    "release": (("device",), {}),  # intel_iommu_release_device
    "ats_disable": (("device",), {}),
}
COMMON_OP_FIELDS = {"op": None, "skip": [], "line": 0}


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
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.args.items())
        extra = f" skip={list(self.skip)}" if self.skip else ""
        return f"{self.kind}({shown}){extra}"


def _show(value: Any) -> str:
    return f"{value:#x}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def op(kind: str, *, skip: tuple[str, ...] | list[str] = (), line: int = 0, **fields) -> Op:
    """Build an ``Op`` checking its fields (the Python API's counterpart of a TOML table)."""
    if kind not in OPS:
        raise BadInput(f"unknown op={kind!r}; ops: {', '.join(OPS)}")
    required, optional = OPS[kind]
    missing = [f for f in required if f not in fields]
    if missing:
        raise BadInput(f"op {kind!r} lacks {', '.join(missing)}")
    unknown = sorted(set(fields) - set(required) - set(optional))
    if unknown:
        raise BadInput(f"op {kind!r} has no field {', '.join(unknown)}")
    args = {**optional, **fields}
    return Op(kind, args, tuple(skip), line)


@dataclass(frozen=True)
class Device:
    name: str
    sid: int
    ats: bool = False
    pasid: bool = False


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
    preset: str = "qemu72-legacy"
    profile: str = "linux-6.1"
    policy: str = "strict"
    doc: str = ""
    switches: dict = field(default_factory=dict)
    devices: list[Device] = field(default_factory=list)
    domains: list[Domain] = field(default_factory=list)
    setup_ops: list[Op] = field(default_factory=list)
    threads: dict[str, list[Op]] = field(default_factory=dict)
    gates: dict[str, tuple[LockGate, ...]] = field(default_factory=dict)  # thread -> gates
    qi: str = "async"
    fills: list[Freedom] = field(default_factory=list)
    evictions: list[Freedom] = field(default_factory=list)
    ats_prefetch: list[Freedom] = field(default_factory=list)
    warm: list[Freedom] = field(default_factory=list)  # the initial state's cached translations
    torn_fills: list[Freedom] = field(default_factory=list)  # fills read in 64-bit pieces
    dma: list[Freedom] = field(default_factory=list)
    expect: dict[str, str] = field(default_factory=dict)
    path: str = ""

    # -- the Python API (each returns self, to chain) --------------------------------------
    def device(self, name: str, sid: int, *, ats: bool = False, pasid: bool = False):
        self.devices.append(Device(name, sid, ats, pasid))
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

    def iovas(self) -> list[int]:
        """Every IOVA page the scenario names (the universe of abstract cache locations)."""
        found = {f.iova & ~0xFFF for f in (*self.fills, *self.evictions, *self.ats_prefetch,
                                            *self.dma, *self.warm, *self.torn_fills)}
        for ops in (self.setup_ops, *self.threads.values()):
            found |= {o.args["iova"] & ~0xFFF for o in ops if "iova" in o.args}
        return sorted(found)

    def validate(self) -> Scenario:
        """Cross-references and value checks; BadInput naming the file (and line)."""
        _Validator(self).run()
        return self


class _Validator:
    def __init__(self, sc: Scenario):
        self.sc = sc
        self.devices = {d.name for d in sc.devices}
        self.domains = {d.name for d in sc.domains}
        self.pages = {p for d in sc.domains for p in d.pages}

    def fail(self, message: str, line: int = 0) -> None:
        where = f"{self.sc.where()}:{line}" if line else self.sc.where()
        raise BadInput(message, where)

    def run(self) -> None:
        sc = self.sc
        if sc.policy not in POLICIES:
            self.fail(f"policy={sc.policy!r}: expected one of {', '.join(POLICIES)}")
        if sc.qi not in ("async", "sync"):
            self.fail(f"hardware.qi={sc.qi!r}: expected async or sync")
        if not sc.threads:
            self.fail("a scenario needs at least one [[thread]]")
        for dom in sc.domains:
            for dev in dom.devices:
                self.need(dev, self.devices, "device", f"domain {dom.name!r}")
        for ops in (sc.setup_ops, *sc.threads.values()):
            for o in ops:
                self.check_op(o)
        for f in (*sc.fills, *sc.evictions, *sc.ats_prefetch, *sc.dma, *sc.warm,
                  *sc.torn_fills):
            self.need(f.device, self.devices, "device", "a hardware freedom")
            if f.first not in ("p", "rest"):
                self.fail(f"first={f.first!r}: expected p or rest")
            bad = sorted(set(f.caches) - set(CACHES))
            if bad:
                self.fail(f"caches {bad}: expected some of {', '.join(CACHES)}")
            if f.access not in ("read", "write"):
                self.fail(f"access={f.access!r}: expected read or write")
            if f.after_thread:
                self.need(f.after_thread, set(sc.threads), "thread", "a DMA's after_thread")
        for name, gates in sc.gates.items():
            for g in gates:
                self.need(g.thread, set(sc.threads) - {name}, "thread", f"thread {name!r} after")
                if g.nth < 0 or g.released < 1:
                    self.fail(f"thread {name!r} after: nth counts from 0 (the start), "
                              "released from 1")
        for prop, verdict in sc.expect.items():
            allowed = OBSERVATION_VERDICTS if prop in OBSERVATIONS else VERDICTS
            if verdict not in allowed:
                self.fail(f"expect.{prop}={verdict!r}: expected {' or '.join(allowed)}")

    def check_op(self, o: Op) -> None:
        for key, universe, what in (("domain", self.domains, "domain"),
                                    ("device", self.devices, "device"),
                                    ("page", self.pages, "page")):
            value = o.args.get(key)
            if value:
                self.need(value, universe, what, f"op {o.kind!r}", o.line)
        if o.kind == "attach" and o["part"] not in ATTACH_PARTS:
            self.fail(f"attach part={o['part']!r}: expected one of {', '.join(ATTACH_PARTS)}",
                      o.line)

    def need(self, name: str, universe: set, what: str, user: str, line: int = 0) -> None:
        if name not in universe:
            known = ", ".join(sorted(universe)) or "none"
            self.fail(f"{user} names unknown {what} {name!r} (known: {known})", line)


# -- TOML ---------------------------------------------------------------------------------------
TOP_KEYS = {"name", "doc", "preset", "profile", "policy", "switches", "device", "domain",
            "setup", "thread", "hardware", "dma", "expect"}


def load(path: str | Path) -> Scenario:
    """Read one scenario file; BadInput ``file:line: message`` when it is malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise BadInput(f"cannot read scenario: {err.strerror}", str(path)) from err
    return parse(text, str(path))


def parse(text: str, where: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = re.search(r"line (\d+)", str(err))
        raise BadInput(f"TOML: {err}", f"{where}:{line.group(1)}" if line else where) from err
    lines = _Lines(text, where)
    try:
        return _build(data, lines, where).validate()
    except BadInput as err:
        if err.where and ":" in err.where.removeprefix(where):
            raise
        raise BadInput(str(err).removeprefix(f"{err.where}: ") if err.where else str(err),
                       lines.where(_key_hint(str(err)))) from None


class _Lines:
    """Finds the line of a key or value in the text (tomllib keeps no positions)."""

    def __init__(self, text: str, where: str):
        self.text_lines = text.splitlines()
        self.path = where

    def find(self, *needles: str) -> int:
        for number, line in enumerate(self.text_lines, 1):
            code = line.split("#", 1)[0]
            if all(n in code for n in needles):
                return number
        return 0

    def where(self, needle: str | None) -> str:
        line = self.find(needle) if needle else 0
        return f"{self.path}:{line}" if line else self.path


def _key_hint(message: str) -> str | None:
    quoted = re.findall(r"'([^']+)'", message)
    return quoted[-1] if quoted else None


def _build(data: dict, lines: _Lines, where: str) -> Scenario:
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise BadInput(f"unknown key {unknown[0]!r}; keys: {', '.join(sorted(TOP_KEYS))}",
                       lines.where(unknown[0]))
    hw = _table(data.get("hardware", {}), "hardware", lines)
    sc = Scenario(
        name=str(data.get("name") or Path(where).stem),
        preset=str(data.get("preset", "qemu72-legacy")),
        profile=str(data.get("profile", "linux-6.1")),
        policy=str(data.get("policy", "strict")),
        doc=str(data.get("doc", "")),
        switches=dict(_table(data.get("switches", {}), "switches", lines)),
        qi=str(hw.get("qi", "async")),
        expect={k: str(v) for k, v in _table(data.get("expect", {}), "expect", lines).items()},
        path=where,
    )
    for d in _list(data, "device", lines):
        sc.device(_need(d, "name", lines), _sid(_need(d, "sid", lines), lines),
                  ats=bool(d.get("ats", False)), pasid=bool(d.get("pasid", False)))
    for d in _list(data, "domain", lines):
        sc.domain(_need(d, "name", lines), type=str(d.get("type", "dma")),
                  stage=d.get("stage"), devices=tuple(d.get("devices", ())),
                  pages=tuple(d.get("pages", ())))
    sc.setup(*(_op(o, lines) for o in _list(data, "setup", lines)))
    for t in _list(data, "thread", lines):
        name = _need(t, "name", lines)
        sc.thread(name, *(_op(o, lines) for o in t.get("ops", [])),
                  after=tuple(_gate(g, lines) for g in t.get("after", [])))
    sc.fills = [_freedom(f, lines) for f in hw.get("fills", [])]
    sc.evictions = [_freedom(f, lines) for f in hw.get("evictions", [])]
    sc.ats_prefetch = [_freedom(f, lines) for f in hw.get("ats_prefetch", [])]
    sc.warm = [_freedom(f, lines) for f in hw.get("warm", [])]
    sc.torn_fills = [_freedom(f, lines) for f in hw.get("torn_fills", [])]
    sc.dma = [_freedom(f, lines) for f in _list(data, "dma", lines)]
    return sc


def _table(value: Any, name: str, lines: _Lines) -> dict:
    if not isinstance(value, dict):
        raise BadInput(f"{name} must be a table", lines.where(name))
    return value


def _list(data: dict, key: str, lines: _Lines) -> list[dict]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BadInput(f"{key} must be an array of tables ([[{key}]])", lines.where(key))
    return value


def _need(table: dict, key: str, lines: _Lines) -> Any:
    if key not in table:
        shown = ", ".join(f"{k}={v!r}" for k, v in list(table.items())[:2])
        raise BadInput(f"missing {key!r} in {{{shown}}}", lines.where(shown.split("=")[0]))
    return table[key]


def _sid(value: Any, lines: _Lines) -> int:
    """A SID as an integer or as "bus:dev.fn" (hex bus and device, as lspci prints)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])", str(value))
    if not m:
        raise BadInput(f"sid={value!r}: expected an integer or 'bus:dev.fn'",
                       lines.where(str(value)))
    bus, dev, fn = (int(g, 16) for g in m.groups())
    return bus << 8 | dev << 3 | fn


def _op(table: dict, lines: _Lines) -> Op:
    kind = table.get("op")
    line = lines.find(f'"{kind}"') if kind else 0
    fields = {k: v for k, v in table.items() if k not in ("op", "skip")}
    try:
        return op(str(kind), skip=tuple(table.get("skip", ())), line=line, **fields)
    except BadInput as err:
        raise BadInput(str(err), f"{lines.path}:{line}" if line else lines.path) from None


def _gate(table: dict, lines: _Lines) -> LockGate:
    known = {"lock", "nth", "thread", "released"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise BadInput(f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(known))}",
                       lines.where(unknown[0]))
    return LockGate(lock=str(_need(table, "lock", lines)), nth=int(table.get("nth", 0)),
                    thread=str(_need(table, "thread", lines)),
                    released=int(table.get("released", 1)))


def _freedom(table: dict, lines: _Lines) -> Freedom:
    known = {"device", "iova", "times", "caches", "access", "no_snoop", "pasid", "after_thread",
             "negative", "expect_fault", "first"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise BadInput(f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(known))}",
                       lines.where(unknown[0]))
    return Freedom(
        device=str(_need(table, "device", lines)),
        iova=int(_need(table, "iova", lines)),
        times=int(table.get("times", 1)),
        caches=tuple(table.get("caches", ("iotlb",))),
        access=str(table.get("access", "read")),
        no_snoop=bool(table.get("no_snoop", False)),
        pasid=table.get("pasid"),
        after_thread=str(table.get("after_thread", "")),
        negative=bool(table.get("negative", False)),
        expect_fault=bool(table.get("expect_fault", False)),
        first=str(table.get("first", "p")),
    )
