"""Toy worlds for the checker's tests: actors running tiny programs of atomic ops over shared
variables (herd7-style litmus shapes: lost update, lock-order deadlock, message passing, a
cache the "hardware" may fill or evict at any moment, independent writers).

Not a VT-d model: locations are plain names; there is no memory order beyond the op order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from vtdsim.checker.world import Footprint, StepRecord, Violation

Effect = Callable[[dict, dict], None]  # (shared, local); local["self"] is the actor name
Guard = Callable[[dict, dict], bool]


def _nothing(shared: dict, local: dict) -> None:
    return None


@dataclass(frozen=True)
class Op:
    """One atomic transition of a toy actor."""

    text: str
    reads: tuple = ()
    writes: tuple = ()
    effect: Effect = _nothing
    guard: Guard | None = None
    guard_on: tuple = ()  # the locations ``guard`` reads
    key: bool = False
    chain: str = ""


def read(var: str, reg: str) -> Op:
    return Op(f"{reg} = {var}", reads=(var,), effect=lambda s, l: l.__setitem__(reg, s[var]))


def write(var: str, value: int, **kw) -> Op:
    return Op(
        f"{var} = {value}", writes=(var,), effect=lambda s, l: s.__setitem__(var, value), **kw
    )


def store_incremented(var: str, reg: str) -> Op:
    return Op(
        f"{var} = {reg} + 1", writes=(var,), effect=lambda s, l: s.__setitem__(var, l[reg] + 1)
    )


def lock(name: str) -> Op:
    loc = ("lock", name)
    return Op(
        f"lock {name}",
        reads=(loc,),
        writes=(loc,),
        effect=lambda s, l: s.__setitem__(loc, l["self"]),
        guard=lambda s, l: s.get(loc) is None,
        guard_on=(loc,),
    )


def unlock(name: str) -> Op:
    loc = ("lock", name)
    return Op(
        f"unlock {name}", reads=(loc,), writes=(loc,), effect=lambda s, l: s.__setitem__(loc, None)
    )


def wait(var: str, value: int) -> Op:
    return Op(
        f"wait {var} == {value}",
        reads=(var,),
        guard=lambda s, l: s.get(var) == value,
        guard_on=(var,),
    )


def _no_violations(shared: dict) -> list[Violation]:
    return []


@dataclass
class ToyModel:
    name: str
    programs: dict[str, tuple[Op, ...]]
    init: dict = field(default_factory=dict)
    properties: tuple[str, ...] = ()
    check: Callable[[dict], list[Violation]] = _no_violations
    final: Callable[[dict], list[Violation]] = _no_violations
    optional_actors: frozenset = frozenset()

    def new_world(self) -> ToyWorld:
        return ToyWorld(self)

    def fingerprint(self) -> str:
        text = repr([(a, [op.text for op in ops]) for a, ops in self.programs.items()])
        return f"{self.name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class ToyWorld:
    """Implements ``vtdsim.checker.world.World`` for a ToyModel."""

    def __init__(self, model: ToyModel):
        self.model = model
        self.shared = dict(model.init)
        self.local = {a: {"self": a} for a in model.programs}
        self.pc = dict.fromkeys(model.programs, 0)

    def _next(self, actor: str) -> Op | None:
        program = self.model.programs[actor]
        pc = self.pc[actor]
        return program[pc] if pc < len(program) else None

    def _ready(self, actor: str) -> bool | None:
        """None when finished, else whether its next op may run."""
        op = self._next(actor)
        if op is None:
            return None
        return op.guard is None or op.guard(self.shared, self.local[actor])

    def enabled(self) -> list[str]:
        return [a for a in self.model.programs if self._ready(a)]

    def blocked(self) -> list[str]:
        return [a for a in self.model.programs if self._ready(a) is False]

    def footprint(self, actor: str) -> Footprint:
        op = self._next(actor)
        return Footprint(frozenset(op.reads), frozenset(op.writes), frozenset(op.guard_on))

    def step(self, actor: str) -> StepRecord:
        assert self._ready(actor), f"{actor} is not enabled"
        op = self._next(actor)
        op.effect(self.shared, self.local[actor])
        self.pc[actor] += 1
        return StepRecord(actor, op.text, {"key": op.key, "chain": op.chain or op.text})

    def violations(self) -> list[Violation]:
        return self.model.check(self.shared)

    def finished(self) -> bool:
        return all(
            self._ready(a) is None
            for a in self.model.programs
            if a not in self.model.optional_actors
        )

    def deadlocked(self) -> bool:
        return not self.enabled() and not self.finished()

    def final_checks(self) -> list[Violation]:
        return self.model.final(self.shared)

    def describe_bounds(self) -> dict:
        return {"actors": len(self.model.programs)}

    def optional(self, actor: str) -> bool:
        return actor in self.model.optional_actors

    def snapshot(self) -> tuple:
        """The whole state, hashable: tests compare the final states strategies reach."""
        shared = sorted((repr(k), v) for k, v in self.shared.items())
        local = sorted((a, tuple(sorted(loc.items()))) for a, loc in self.local.items())
        return tuple(shared), tuple(local), tuple(sorted(self.pc.items()))


# -- the litmus shapes ---------------------------------------------------------------------


def counter(threads: int = 2, locked: bool = False) -> ToyModel:
    """Non-atomic increments: the lost update, and the locked fix."""
    body = (read("x", "r"), store_incremented("x", "r"))
    if locked:
        body = (lock("m"), *body, unlock("m"))

    def final(s: dict) -> list[Violation]:
        ok = s["x"] == threads
        return [] if ok else [Violation("no_lost_update", f"x={s['x']:#x}, want {threads}")]

    name = "counter+lock" if locked else "counter"
    return ToyModel(
        name, {f"T{i}": body for i in range(threads)}, {"x": 0}, ("no_lost_update",), final=final
    )


def lock_order() -> ToyModel:
    """ABBA: T0 takes a then b, T1 takes b then a."""
    return ToyModel(
        "lock-order",
        {
            "T0": (lock("a"), lock("b"), unlock("b"), unlock("a")),
            "T1": (lock("b"), lock("a"), unlock("a"), unlock("b")),
        },
    )


def message_passing(buggy: bool = False) -> ToyModel:
    """MP: T0 publishes data then flag; T1 waits for the flag and reads data."""
    publish = (
        (write("flag", 1), write("data", 1)) if buggy else (write("data", 1), write("flag", 1))
    )

    def final(s: dict) -> list[Violation]:
        return [] if s["seen"] == 1 else [Violation("reads_published", f"data={s['seen']:#x}")]

    reader = (
        wait("flag", 1),
        read("data", "r"),
        Op("seen = r", writes=("seen",), effect=lambda s, l: s.__setitem__("seen", l["r"])),
    )
    return ToyModel(
        "mp-buggy" if buggy else "mp",
        {"T0": publish, "T1": reader},
        {"data": 0, "flag": 0, "seen": -1},
        ("reads_published",),
        final=final,
    )


def stale_cache(buggy: bool = True, fills: int = 1) -> ToyModel:
    """A cache the hardware may fill (from the PTE) or evict at any time.  The buggy unmap
    flushes before clearing the PTE: a fill between the two leaves a stale entry, and a DMA
    after the free reaches the freed page through it."""
    clear = write("pte", 0, key=True, chain="clear PTE")
    flush = Op(
        "flush cache",
        writes=("cache",),
        effect=lambda s, l: s.__setitem__("cache", 0),
        key=True,
        chain="flush",
    )
    free = write("freed", 1, key=True, chain="free page")
    unmap = (flush, clear, free) if buggy else (clear, flush, free)

    def fill(s: dict, l: dict) -> None:
        if s["pte"]:
            s["cache"] = s["pte"]

    def dma(s: dict, l: dict) -> None:
        page = s["cache"] or s["pte"]
        if page and s["freed"]:
            s["uaf"] = page

    def check(s: dict) -> list[Violation]:
        page = s.get("uaf")
        return [Violation("dma_after_free", f"dma reached freed page={page:#x}")] if page else []

    fill_op = Op(
        "fill cache from PTE",
        reads=("pte",),
        writes=("cache",),
        effect=fill,
        key=True,
        chain="fill",
    )
    return ToyModel(
        "stale-cache-buggy" if buggy else "stale-cache",
        {
            "T0:unmap": unmap,
            "hw:fill": (fill_op,) * fills,
            "hw:evict": (
                Op("evict cache", writes=("cache",), effect=lambda s, l: s.__setitem__("cache", 0)),
            ),
            "dev:dma": (
                Op(
                    "DMA through cache",
                    reads=("cache", "pte", "freed"),
                    writes=("dma",),
                    effect=dma,
                    key=True,
                    chain="DMA hits freed page",
                ),
            ),
        },
        {"pte": 0x5000, "cache": 0, "freed": 0},
        ("dma_after_free",),
        check=check,
        optional_actors=frozenset({"hw:fill", "hw:evict"}),
    )


def independent(actors: int = 4, steps: int = 2) -> ToyModel:
    """Writers to private variables: one Mazurkiewicz trace, (actors*steps)!/(steps!^actors)
    interleavings."""
    programs = {f"T{i}": tuple(write(f"v{i}", k + 1) for k in range(steps)) for i in range(actors)}
    return ToyModel(f"independent-{actors}x{steps}", programs)


def random_program(seed: int, actors: int = 3, length: int = 3) -> ToyModel:
    """A random small program over two variables, one lock and a flag wait, for differential
    tests of the reductions against plain DFS."""
    rng = random.Random(seed)
    programs = {f"T{i}": _random_body(rng, i, length) for i in range(actors)}
    programs["hw:copy"] = (
        Op("y = x", reads=("x",), writes=("y",), effect=lambda s, l: s.__setitem__("y", s["x"])),
    )
    return ToyModel(
        f"random-{seed}", programs, {"x": 0, "y": 0, "f": 0}, optional_actors=frozenset({"hw:copy"})
    )


def _random_body(rng: random.Random, i: int, length: int) -> tuple[Op, ...]:
    ops: list[Op] = []
    for k in range(length):
        kind = rng.choice(("read", "write", "locked", "wait", "set"))
        var = rng.choice(("x", "y"))
        if kind == "read":
            ops.append(read(var, f"r{k}"))
        elif kind == "write":
            ops.append(write(var, 10 * i + k))
        elif kind == "locked":
            ops += [lock("m"), read(var, f"r{k}"), write(var, 10 * i + k + 1), unlock("m")]
        elif kind == "wait":
            ops.append(wait("f", 1))
        else:
            ops.append(write("f", 1))
    return tuple(ops)
