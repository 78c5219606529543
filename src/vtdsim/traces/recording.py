"""Read one recording of the Linux intel-iommu driver under QEMU (shared/traces/README.md): a
directory with ``config.toml``, ``guest.log[.xz|.gz]`` and ``qemu.log[.xz|.gz]``.

The guest log is the guest's second serial port in sections (``=== DMESG``, ``=== GROUPS``,
``=== WORKLOAD``, ``=== TRACE``, ``=== END``).  Each accessor streams the file from the start
to its section and stops at the next ``=== `` line, so the trace is never held in memory.
``DmesgInfo`` decodes the lines Linux 6.1 prints at init: drivers/iommu/intel/dmar.c
(``reg_base_addr ... cap ... ecap``, "Using Queued invalidation"), intel/iommu.c (batching,
scalable mode), drivers/iommu/iommu.c (default domain type, invalidation policy, groups).

Not handled: recordings with several DMAR units are read, but ``cap``/``ecap``/``iommu`` are
those of the first; dmesg lines of other kernels' wording are ignored, not guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from vtdsim.errors import BadInput
from vtdsim.traces.events import GuestEvent, QemuEvent
from vtdsim.traces.ftrace import parse_ftrace_lines
from vtdsim.traces.qemu_log import parse_qemu_lines
from vtdsim.traces.textio import PrintfFormat, clip, find_variant, numbered_lines
from vtdsim.validation import parse_toml, read_text, validate

_SECTION = "=== "
# dmar.c alloc_iommu(): pr_info("%s: reg_base_addr %llx ver %d:%d cap %llx ecap %llx\n", ...)
_UNIT = PrintfFormat("%s: reg_base_addr %llx ver %d:%d cap %llx ecap %llx")
_ADDING = PrintfFormat("%s: Adding to iommu group %d")  # iommu.c __iommu_probe_device()
_GROUP_DIR = "/sys/kernel/iommu_groups/"
_DMESG_STAMP = re.compile(r"\[\s*\d+\.\d+\]\s?")
_ECAP_SMTS = 1 << 43  # VT-d spec 11.4.3: Scalable Mode Translation Support


# config.toml's first line, as the recording tool writes it (two wordings so far):
# "# Linux 6.1 (Debian 6.1.0-56-amd64, ...) guest under QEMU 7.2 (...), ..." and
# "# Linux 6.12.95+deb12-amd64 guest under QEMU emulator version 10.0.2 (...), ...".
_VERSIONS = re.compile(r"# Linux (\d+\.\d+)[^ ]* .*guest under QEMU (?:emulator version )?"
                       r"(\d+\.\d+)")
VERSIONS_SHAPE = "# Linux <x.y...> ... guest under QEMU [emulator version ]<x.y...> ..."


class Versions(NamedTuple):
    """The guest kernel's and QEMU's major.minor versions, from config.toml's first line."""

    kernel: str
    qemu: str
    where: str  # "<config.toml>:1", for errors about them


class DmarUnit(NamedTuple):
    name: str  # "dmar0"
    reg_base: int
    version: tuple[int, int]
    cap: int
    ecap: int


class IommuGroup(NamedTuple):
    group: int
    type: str  # the group's default domain type as sysfs prints it: DMA, DMA-FQ, identity
    devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DmesgInfo:
    """What the guest kernel said about its IOMMU at boot."""

    units: tuple[DmarUnit, ...]
    default_domain: str | None  # "Translated" or "Passthrough"
    dma_policy: str | None  # "lazy" or "strict", as printed by iommu_subsys_init()
    batching_disallowed: bool  # caching mode forced strict (intel/iommu.c, 6.1)
    scalable_mode: bool
    queued_invalidation: bool
    interrupt_remapping: bool
    groups: tuple[IommuGroup, ...]  # the GROUPS section, in order
    group_adds: tuple[tuple[str, int], ...]  # ("0000:00:03.0", group) in dmesg order

    @property
    def cap(self) -> int:
        return self.units[0].cap

    @property
    def ecap(self) -> int:
        return self.units[0].ecap

    @property
    def iommu(self) -> str:
        return self.units[0].name

    @property
    def effective_policy(self) -> str | None:
        """The policy in force: 6.1 prints "lazy" before it disallows batching under CM."""
        return "strict" if self.batching_disallowed else self.dma_policy


class RecordingConfig(BaseModel):
    """config.toml as shared/tools/record-linux-trace writes it: every key a string, the
    five it always writes required (an empty file is an error, never defaults)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, Field(min_length=1)]
    qemu_iommu_device: Annotated[str, Field(pattern=r"^intel-iommu\b")]
    kernel_cmdline: str
    qemu_device_args: str
    workload: str
    guest_log: str = ""  # descriptions of the two logs (optional)
    qemu_log: str = ""


class Recording:
    """One recording directory; every accessor streams its file anew."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise BadInput("not a recording directory", where=str(self.path))

    @cached_property
    def config_path(self) -> Path:
        return find_variant(self.path, "config.toml")

    @cached_property
    def guest_log(self) -> Path:
        return find_variant(self.path, "guest.log")

    @cached_property
    def qemu_log(self) -> Path:
        return find_variant(self.path, "qemu.log")

    @cached_property
    def config(self) -> dict:
        """config.toml checked against ``RecordingConfig`` (what record-linux-trace writes)."""
        where = str(self.config_path)
        text = read_text(self.config_path, "recording config")
        data = parse_toml(text, where)
        return validate(RecordingConfig, data, where, text).model_dump()

    @cached_property
    def versions(self) -> Versions:
        """Kernel and QEMU versions named by config.toml's first line; BadInput otherwise."""
        where = f"{self.config_path}:1"
        with self.config_path.open(encoding="utf-8", errors="replace") as stream:
            first = stream.readline().strip()
        found = _VERSIONS.match(first)
        if found is None:
            raise BadInput(f"first line does not name the kernel and QEMU versions (expected "
                           f"{VERSIONS_SHAPE!r}): {clip(first)!r}", where=where)
        return Versions(found.group(1), found.group(2), where)

    @property
    def name(self) -> str:
        return self.config["name"]

    def guest_events(self, names: Iterable[str] | None = None) -> Iterator[GuestEvent]:
        """The events of the TRACE section, streamed (only ``names``, when given)."""
        return parse_ftrace_lines(self._section("TRACE"), str(self.guest_log), names)

    def qemu_events(self) -> Iterator[QemuEvent]:
        return parse_qemu_lines(numbered_lines(self.qemu_log), str(self.qemu_log))

    @cached_property
    def workload_output(self) -> str:
        return "".join(line + "\n" for _, line in self._section("WORKLOAD"))

    def dmesg(self) -> DmesgInfo:
        facts = _DmesgFacts(str(self.guest_log))
        for lineno, line in self._section("DMESG"):
            facts.read(lineno, line)
        groups = _read_groups(self._section("GROUPS"), str(self.guest_log))
        return facts.info(groups)

    def _section(self, name: str) -> Iterator[tuple[int, str]]:
        """The numbered lines of section ``=== name``, read lazily."""
        marker = _SECTION + name
        lines = numbered_lines(self.guest_log)
        if not any(line.rstrip() == marker for _, line in lines):
            raise BadInput(f"no {marker!r} section", where=str(self.guest_log))
        lineno = 0
        for lineno, line in lines:
            if line.startswith(_SECTION):
                return
            yield lineno, line
        raise BadInput(f"the file ends inside {marker!r} without '=== END' (truncated?)",
                       where=f"{self.guest_log}:{lineno}")


class _DmesgFacts:
    """Accumulates the facts of the DMESG section, one line at a time."""

    def __init__(self, source: str):
        self.source = source
        self.units: list[DmarUnit] = []
        self.default_domain: str | None = None
        self.dma_policy: str | None = None
        self.batching_disallowed = False
        self.sm_not_enabled = False
        self.sm_off_on_cmdline = False
        self.queued_invalidation = False
        self.interrupt_remapping = False
        self.group_adds: list[tuple[str, int]] = []

    def read(self, lineno: int, line: str) -> None:
        text = _DMESG_STAMP.sub("", line, count=1).strip()
        prefix, _, message = text.partition(": ")
        if prefix == "DMAR":
            self._dmar(lineno, message)
        elif prefix == "iommu":
            self._iommu(message)
        elif prefix in ("Command line", "Kernel command line"):
            self.sm_off_on_cmdline |= _sm_off(message)
        elif text.startswith("DMAR-IR: Enabled IRQ remapping in"):
            self.interrupt_remapping = True
        elif "Adding to iommu group" in text:
            self._adding(lineno, text)

    def _dmar(self, lineno: int, message: str) -> None:
        if " reg_base_addr " in message:
            values = _UNIT.parse(message)
            if values is None:
                raise BadInput(f"expected {_UNIT.fmt!r}: {clip(message)!r}",
                               where=f"{self.source}:{lineno}")
            name, base, major, minor, cap, ecap = values
            self.units.append(DmarUnit(name, base, (major, minor), cap, ecap))
        elif message.endswith("Using Queued invalidation"):
            self.queued_invalidation = True
        elif message.startswith("IOMMU batching disallowed"):
            self.batching_disallowed = True
        elif message.startswith("VT-d Scalable Mode not enabled"):
            self.sm_not_enabled = True

    def _iommu(self, message: str) -> None:
        if message.startswith("Default domain type:"):
            self.default_domain = message.split(":", 1)[1].split()[0]
        elif message.startswith("DMA domain TLB invalidation policy:"):
            self.dma_policy = message.split(":", 1)[1].split()[0]

    def _adding(self, lineno: int, text: str) -> None:
        # "pci 0000:00:03.0: Adding to iommu group 3": the bus name comes first.
        values = _ADDING.parse(text.partition(" ")[2])
        if values is None:
            raise BadInput(f"expected '<bus> <device>: Adding to iommu group <n>': "
                           f"{clip(text)!r}", where=f"{self.source}:{lineno}")
        self.group_adds.append(values)

    def info(self, groups: tuple[IommuGroup, ...]) -> DmesgInfo:
        if not self.units:
            raise BadInput(f"no DMAR unit line ({_UNIT.fmt!r}) in the DMESG section",
                           where=self.source)
        return DmesgInfo(
            units=tuple(self.units), default_domain=self.default_domain,
            dma_policy=self.dma_policy, batching_disallowed=self.batching_disallowed,
            scalable_mode=self._scalable_mode(), queued_invalidation=self.queued_invalidation,
            interrupt_remapping=self.interrupt_remapping, groups=groups,
            group_adds=tuple(self.group_adds))

    def _scalable_mode(self) -> bool:
        """6.1's sm_supported() is intel_iommu_sm && ECAP.SMTS.  Linux says so only under
        caching mode ("not enabled", register_pasid_allocator); otherwise it is inferred:
        intel_iommu=sm_off turns it off, and the recorded Debian kernel defaults it on
        (CONFIG_INTEL_IOMMU_SCALABLE_MODE_DEFAULT_ON; sm-nocm-lazy's QEMU log shows the
        root table written with TTM=01)."""
        if self.sm_not_enabled or self.sm_off_on_cmdline:
            return False
        return bool(self.units[0].ecap & _ECAP_SMTS)


def _sm_off(cmdline: str) -> bool:
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == "intel_iommu" and "sm_off" in value.split(","):
            return True
    return False


def _read_groups(lines: Iterator[tuple[int, str]], source: str) -> tuple[IommuGroup, ...]:
    """``/sys/kernel/iommu_groups/<n> <type> <device>`` lines, each followed by one line per
    further device of the group."""
    groups: list[IommuGroup] = []
    for lineno, line in lines:
        words = line.split()
        if not words:
            continue
        if words[0].startswith(_GROUP_DIR):
            number = words[0][len(_GROUP_DIR):]
            if not number.isdigit() or len(words) < 2:
                raise BadInput(f"expected '{_GROUP_DIR}<n> <type> [<device>]': {clip(line)!r}",
                               where=f"{source}:{lineno}")
            groups.append(IommuGroup(int(number), words[1], tuple(words[2:])))
        elif groups and len(words) == 1:
            last = groups[-1]
            groups[-1] = last._replace(devices=(*last.devices, words[0]))
        else:
            raise BadInput(f"expected a group line or a device name: {clip(line)!r}",
                           where=f"{source}:{lineno}")
    return tuple(groups)
