"""Robustness fuzzing of a remapping unit with guest-controlled inputs (VT-d spec ch. 10: a guest
writing garbage gets ignored writes, fault records or IQEs - never a Python exception).

Seeded random inputs go through real units built from the presets: MMIO writes and reads of
random offsets, sizes and values (biased towards GCMD/RTADDR/IQA/IQT/CCMD/IOTLB/FSTS/FRCD and
the values Linux writes), descriptors written into the queue followed by IQT, random root /
context / PASID / page-table bytes in a small "structure" region, DMA requests of every kind,
and the hardware freedoms (cache fills, evictions, write-backs, async queue steps).  Any
exception escaping the unit is a bug: the run stops and prints the seed, the input number and
the input.

With ``--vmm qemu-7.2|qemu-10.0`` the unit is the VMM model's emulated one (virtualization.vmm,
random QEMU properties) with a MAP/UNMAP listener (shadowing, under caching mode) and a
DEVIOTLB_UNMAP listener on the first SIDs, so garbage also reaches QEMU's notifier work.

Usage: ``python scripts/fuzz_unit.py [--iterations N] [--seed S] [--preset NAME] [--vmm V]``

Not covered: several units sharing memory, the driver layer.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Callable

from vtdsim.devices.endpoint import Endpoint
from vtdsim.hardware.descriptors import LABEL_TYPES, LAYOUTS, encode
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import PRESETS
from vtdsim.hardware.remapping_unit import RemappingUnit
from vtdsim.hardware.request import DmaRequest
from vtdsim.hardware.root_table import CONTEXT_ENTRY, ROOT_ENTRY
from vtdsim.hardware.second_stage import SS_PTE

REGION = 0x100000  # structures, queue and DMA targets live in [REGION, REGION + PAGES * 4K)
PAGES = 64
QUEUE = REGION  # first two pages: where plausible IQA values point
ROOT = REGION + 0x2000
CONTEXT = REGION + 0x3000
TABLES = (REGION + 0x4000, REGION + 0x5000, REGION + 0x6000, REGION + 0x7000)
IOVAS = (0xFFFF_F000, 0x0, 0x20_0000, 0xFFE0_0000, 0x7F_FFFF_F000)
SIDS = (0x0000, 0x0008, 0x0100, 0x0101, 0x01F8)
INPUTS_PER_UNIT = 2000  # a fresh unit (and preset) every so often, so state does not saturate

HOT_OFFSETS = (0x18, 0x20, 0x24, 0x28, 0x2C, 0x34, 0x38, 0x80, 0x88, 0x8C, 0x90, 0x9C, 0xA0,
               0xB8)
LINUX_GCMD = (0x04000000, 0x05000000, 0x06000000, 0x46000000, 0x86000000, 0x87000000,
              0x0E000000, 0x02000000)


class Fuzzer:
    """One seeded run: ``step()`` applies one random input to the current unit."""

    def __init__(self, seed: int, preset: str | None = None, qi_mode: str | None = None,
                 vmm: str | None = None):
        self.rng = random.Random(seed)
        self.preset = preset
        self.qi_mode = qi_mode
        self.vmm = vmm
        self.events: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.unit: RemappingUnit | None = None
        self.last = ""
        self.inputs: list[tuple[int, Callable[[], None]]] = [
            (30, self.mmio_write),
            (6, self.mmio_read),
            (12, self.queue_descriptors),
            (16, self.structure_bytes),
            (20, self.dma),
            (5, self.fill),
            (3, self.evict),
            (3, self.cpu_cache),
            (5, self.qi_step),
            (4, self.service_faults),
            (12, self.table_chain),
        ]
        self._weights = [w for w, _ in self.inputs]

    # -- unit lifecycle ----------------------------------------------------------------------------
    def new_unit(self) -> None:
        if self.unit is not None:
            self.totals.update(self.unit.stats)
        name = self.preset or self.rng.choice(sorted(PRESETS))
        mode = self.qi_mode or self.rng.choice(("sync", "async"))
        if self.vmm:
            name, mode = self.new_vmm_unit(), "sync"
        else:
            self.unit = RemappingUnit(PRESETS[name], PhysicalMemory(), qi_mode=mode)
        self.unit.listeners.append(lambda _u, event, _f: self.events.update([event]))
        for sid in SIDS[:3]:
            # One endpoint in five never answers ATS invalidations: device-TLB descriptors to
            # it time out, so ITE and the abort of pending waits are exercised too.
            Endpoint(sid, ats=self.rng.random() < 0.5,
                     respond_to_invalidations=self.rng.random() >= 0.2).connect(self.unit)
        self.last = f"new unit {name} qi_mode={mode}"
        if self.rng.random() < 0.8:
            self.linux_init()

    def new_vmm_unit(self) -> str:
        """The VMM model's emulated unit with listeners; its description."""
        from vtdsim.virtualization import qemu
        from vtdsim.virtualization.vmm import Vmm

        version = qemu.get_version(self.vmm)
        rng = self.rng
        props = qemu.QemuProperties(caching_mode=rng.random() < 0.7,
                                    scalable_mode=rng.random() < 0.5,
                                    device_iotlb=rng.random() < 0.5)
        vmm = Vmm(version, props, PhysicalMemory())
        self.unit = vmm.unit
        for sid in SIDS[:3]:
            kinds = {"deviotlb_unmap"} | ({"map", "unmap"} if props.caching_mode else set())
            vmm.register_notifier(sid, frozenset(kinds),
                                  lambda ev: self.events.update(["notify_" + ev.kind]))
        return f"{version.name} {props}"

    def linux_init(self) -> None:
        """The register programming of Linux's init_dmars (queue, root table, TE), so that
        later inputs reach the queue and the walkers, not only the register front."""
        unit, rng = self.unit, self.rng
        ttm = 0x400 if unit.caps.smts and rng.random() < 0.7 else 0
        dw = 0x800 if unit.caps.smts and rng.random() < 0.7 else 0
        for offset, size, value in (
            (0x88, 4, 0), (0x90, 8, QUEUE | dw | rng.randint(0, 1)), (0x18, 4, 0x04000000),
            (0x20, 8, ROOT | ttm), (0x18, 4, 0x44000000), (0x18, 4, 0x84000000),
        ):
            self.last = f"linux_init mmio_write({offset:#x}, {size}, {value:#x})"
            unit.mmio_write(offset, size, value)

    def step(self, n: int) -> None:
        if n % INPUTS_PER_UNIT == 0:
            self.new_unit()
        action = self.rng.choices(self.inputs, weights=self._weights)[0][1]
        action()

    # -- random values ---------------------------------------------------------------------------
    def region_addr(self, align: int = 8) -> int:
        return REGION + self.rng.randrange(PAGES * 4096 // align) * align

    def qword(self) -> int:
        """Mostly plausible entries (a region pointer plus random low bits), sometimes noise."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.5:
            return (self.region_addr(4096) | rng.getrandbits(12)) | (rng.getrandbits(4) << 60)
        if kind < 0.7:
            return rng.getrandbits(64)
        if kind < 0.85:
            return rng.getrandbits(8)
        return 0

    def value_for(self, offset: int, size: int) -> int:
        rng = self.rng
        if offset == 0x18 and rng.random() < 0.7:
            return rng.choice(LINUX_GCMD) if rng.random() < 0.6 else rng.getrandbits(9) << 23
        if offset in (0x20, 0x90) and rng.random() < 0.7:
            return self.region_addr(4096) | rng.getrandbits(12)
        if offset == 0x88 and rng.random() < 0.7:
            return rng.randrange(0, 0x2000, 16)
        return rng.getrandbits(8 * size)

    # -- inputs ----------------------------------------------------------------------------------
    def mmio_write(self) -> None:
        rng, unit = self.rng, self.unit
        if rng.random() < 0.7:
            offset = rng.choice(HOT_OFFSETS + tuple(r.offset for r in unit.regs.registers))
            size = rng.choice((4, 4, 8))
        else:
            offset = rng.randrange(0x1000)
            size = rng.choice((1, 2, 3, 4, 8, 16))
        value = self.value_for(offset, size)
        self.last = f"mmio_write({offset:#x}, {size}, {value:#x})"
        unit.mmio_write(offset, size, value)

    def mmio_read(self) -> None:
        offset, size = self.rng.randrange(0x1000), self.rng.choice((1, 4, 8))
        self.last = f"mmio_read({offset:#x}, {size})"
        self.unit.mmio_read(offset, size)

    def descriptor(self) -> list[int]:
        """A descriptor of a real type with random fields, or random qwords."""
        rng = self.rng
        if rng.random() < 0.3:
            return [rng.getrandbits(64) for _ in range(4)]
        dtype = LABEL_TYPES[rng.choice(sorted(LABEL_TYPES))]
        layout = LAYOUTS[dtype]
        small = rng.random() < 0.6  # small values: mostly well-formed descriptors
        fields = {n: (rng.randrange(min(4, 1 << f.width)) if small else rng.getrandbits(f.width))
                  if rng.random() < 0.5 else 0 for n, f in layout.fields.items()}
        fields["type"], fields["type_hi"] = dtype, 0
        if "status_addr" in fields and rng.random() < 0.5:
            fields["status_addr"] = self.region_addr(4) >> 2
        value = layout.encode(**{n: v & layout[n].mask for n, v in fields.items()})
        return [*layout.to_qwords(value), 0, 0, 0][:4]

    def queue_descriptors(self) -> None:
        rng, unit = self.rng, self.unit
        if unit.regs.get("FSTS", "iqe") and rng.random() < 0.7:
            self.service_faults()
        base = unit.regs.get("IQA", "iqa") << 12
        width = 32 if unit.regs.get("IQA", "dw") else 16
        tail = unit.regs.get("IQT", "qt") << 4
        count = rng.randint(1, 3)
        for _ in range(count):
            for i, qw in enumerate(self.descriptor()[: width // 8]):
                addr = (base + tail + 8 * i) % (1 << 52)
                unit.memory.cpu_store(addr, qw, 8)
            tail = (tail + width) % (4096 << unit.regs.get("IQA", "qs"))
        self.last = f"{count} descriptors then IQT={tail:#x}"
        unit.mmio_write(0x88, 4, tail)

    def structure_bytes(self) -> None:
        addr, value = self.region_addr(), self.qword()
        self.last = f"cpu_store({addr:#x}, {value:#x}, 8)"
        if self.rng.random() < 0.8:
            self.unit.memory.cpu_store(addr, value, 8)
        else:
            self.unit.memory.write_qword(addr, value)

    def table_chain(self) -> None:
        """One link of a plausible legacy chain root -> context -> SS tables for one of the
        SIDS and IOVAS, so walks get deep (random bytes alone rarely line up)."""
        rng, sid, iova = self.rng, self.rng.choice(SIDS), self.rng.choice(IOVAS)
        link = rng.randrange(5)
        if link == 0:
            addr = ROOT + 16 * (sid >> 8)
            value = ROOT_ENTRY.encode(p=int(rng.random() < 0.9), ctp=CONTEXT >> 12)
        elif link == 1:
            addr = CONTEXT + 16 * (sid & 0xFF)
            value = CONTEXT_ENTRY.encode(
                p=int(rng.random() < 0.9), fpd=int(rng.random() < 0.1), tt=rng.randrange(4),
                ssptptr=TABLES[0] >> 12, aw=rng.choice((1, 1, 2, 3)), did=rng.randrange(4),
            )
        else:
            level = 5 - link  # 3, 2 or 1
            addr = TABLES[3 - level] + 8 * ((iova >> (12 + 9 * (level - 1))) & 511)
            target = TABLES[4 - level] if level > 1 else self.region_addr(4096)
            value = SS_PTE.encode(r=rng.randrange(2), w=rng.randrange(2), snp=rng.randrange(2),
                                  ps=int(level > 1 and rng.random() < 0.2), addr=target >> 12)
        self.last = f"table_chain write {addr:#x} = {value:#x}"
        for i, qw in enumerate((value >> (64 * k)) & (2**64 - 1) for k in range(2)):
            if link < 2 or i == 0:
                self.unit.memory.cpu_store(addr + 8 * i, qw, 8)
        if rng.random() < 0.5:
            self.unit.memory.clflush(addr)

    def request(self) -> DmaRequest:
        rng = self.rng
        addr = rng.choice((rng.getrandbits(64), rng.getrandbits(40), self.region_addr(1),
                           rng.choice(IOVAS) + rng.getrandbits(12), 0xFEE0_0000,
                           rng.choice(IOVAS)))
        return DmaRequest(
            sid=rng.choice(SIDS) if rng.random() < 0.9 else rng.getrandbits(16),
            addr=addr,
            write=rng.random() < 0.5,
            pasid=None if rng.random() < 0.6 else rng.choice((0, 1, rng.getrandbits(20))),
            at=rng.choice((0, 0, 0, 1, 2, 3)),
            priv=rng.random() < 0.1,
            exe=rng.random() < 0.1,
            no_snoop=rng.random() < 0.2,
        )

    def dma(self) -> None:
        rng, unit = self.rng, self.unit
        req = self.request()
        kind = rng.random()
        self.last = f"dma {req.describe()} ({kind:.2f})"
        if kind < 0.4:
            unit.access(req)
        elif kind < 0.6:
            unit.translate(req.sid, req.addr, req.write, req.pasid)
        elif kind < 0.8:
            unit.dma_read(req, rng.choice((1, 8, 64, 4096, 5000)))
        else:
            unit.dma_write(req, bytes(rng.getrandbits(8) for _ in range(rng.choice((1, 8, 100)))))

    def fill(self) -> None:
        req = self.request()
        self.last = f"possible_fills({req.sid:#x}, {req.addr:#x}, {req.pasid})"
        fills = self.unit.possible_fills(req.sid, req.addr, req.pasid)
        if fills:
            self.unit.apply_fill(self.rng.choice(fills))

    def evict(self) -> None:
        cached = self.unit.cached()
        if cached:
            name, key = self.rng.choice(cached)
            self.last = f"evict({name}, {key})"
            self.unit.evict(name, key)

    def cpu_cache(self) -> None:
        memory = self.unit.memory
        lines = memory.dirty_lines()
        if lines and self.rng.random() < 0.8:
            line = self.rng.choice(lines)
            self.last = f"writeback_line({line:#x})"
            memory.writeback_line(line)
        else:
            self.last = "wbinvd()"
            memory.wbinvd()

    def service_faults(self) -> None:
        """What Linux's dmar_fault does: clear every pending F, then the FSTS status bits; on
        IQE first overwrite the bad descriptor with a wait, as qi_check_fault does."""
        unit = self.unit
        self.last = "service_faults()"
        if unit.regs.get("FSTS", "iqe"):
            head = (unit.regs.get("IQA", "iqa") << 12) + (unit.regs.get("IQH", "qh") << 4)
            wait = encode("inv_wait", sw=1, status_data=2, status_addr=self.region_addr(4))
            unit.memory.cpu_store(head % (1 << 52), wait[0], 8)
            unit.memory.cpu_store((head + 8) % (1 << 52), wait[1], 8)
        for reg in unit.regs.registers:
            if reg.name.startswith("FRCD"):
                unit.mmio_write(reg.offset + 12, 4, 0x80000000)
        unit.mmio_write(0x34, 4, 0x7F)

    def qi_step(self) -> None:
        self.last = "qi_step()"
        self.unit.qi_step()

    # -- summary ---------------------------------------------------------------------------------
    def summary(self) -> Counter[str]:
        totals = Counter(self.totals)
        if self.unit is not None:
            totals.update(self.unit.stats)
        return totals


def run(iterations: int, seed: int, preset: str | None = None,
        qi_mode: str | None = None, vmm: str | None = None) -> Fuzzer:
    """Apply ``iterations`` inputs; an escaping exception is re-raised with the reproduction."""
    fuzzer = Fuzzer(seed, preset, qi_mode, vmm)
    for n in range(iterations):
        try:
            fuzzer.step(n)
        except Exception as exc:
            raise AssertionError(
                f"seed={seed} input #{n} ({fuzzer.unit!r}): {fuzzer.last}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return fuzzer


def report(fuzzer: Fuzzer) -> str:
    stats, events = fuzzer.summary(), fuzzer.events
    ignored = sum(v for k, v in events.items() if "ignored" in k or k == "read_only_write")
    lines = [
        f"faults presented={stats['faults']} recorded={stats['faults_recorded']} "
        f"overflow={stats['fault_overflow']} dropped_pfo={stats['faults_dropped_pfo']} "
        f"compressed={stats['faults_compressed']}",
        f"iqe={stats['iqe']} ite={stats['ite']} ignored_mmio={ignored} "
        f"gcmd_multiple={stats['gcmd_multiple_commands']} iqt_writes={stats['iqt_writes']}",
        "events: " + " ".join(f"{k}={v}" for k, v in sorted(events.items())),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--qi-mode", choices=("sync", "async"))
    parser.add_argument("--vmm", choices=("qemu-7.2", "qemu-10.0"))
    args = parser.parse_args(argv)
    try:
        fuzzer = run(args.iterations, args.seed, args.preset, args.qi_mode, args.vmm)
    except AssertionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{args.iterations} inputs, seed {args.seed}: no exception escaped")
    print(report(fuzzer))
    return 0

if __name__ == "__main__":
    sys.exit(main())
