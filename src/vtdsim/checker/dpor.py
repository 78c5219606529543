"""Depth-first search of the execution tree: plain DFS, preemption-bounded DFS, and source-set
DPOR with sleep sets (Abdulla, Aronis, Jonsson, Sagonas POPL'14, Algorithm "Source-DPOR").

The search is stateless: every execution starts from a fresh world and replays the current
branch (one ``_Node`` per depth).  At the end of each execution DPOR finds the *races* of the
new events - pairs e < e' of dependent events of different actors with no event between them
in happens-before - and makes sure some initial of ``notdep(e).e'`` (the events after e that
do not depend on it, then e') is in the backtrack set of the state before e; hence only the
backtrack sets of source sets are explored, and sleep sets cut the executions equivalent to
one already explored (Godefroid's sleep sets).  Happens-before is kept as vector clocks.

Blocking (locks, waits).  A race e < e' where e' cannot run before e (e released the lock e'
acquires, or wrote what e' waits for) is not reversible.  As in Flanagan & Godefroid POPL'05
(DPOR's "may be co-enabled" test), the search then walks further back to the latest earlier
dependent event before which the reversal's initial *is* enabled (the acquire that took the
lock), and if there is none it adds every enabled actor (the conservative backtrack) - except
when e enabled e' (wrote its guard): e' could not run before e, and no earlier event of the
execution could have enabled it instead (that one would be a reversal point), so the two are
not co-enabled and there is nothing to reverse (Source-DPOR's reversible races; the slot an
IQT write publishes, the status word a wait descriptor writes).  The pending transitions of
the actors blocked at the end of a deadlocked execution race too.

Not done: wakeup trees (so sleep-set-blocked executions can occur and are counted), state
caching, and combining the preemption bound with DPOR (that needs bounded POR).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vtdsim.checker.world import Footprint

if TYPE_CHECKING:
    from vtdsim.checker.explore import Execution, _Run


@dataclass(slots=True, eq=False)
class _Node:
    """A state on the current branch and the event chosen from it."""

    enabled: tuple[str, ...]
    prev: str | None  # the actor that ran just before this state
    preemptions: int  # preemptions on the branch before this state
    backtrack: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    sleep: dict[str, Footprint] = field(default_factory=dict)
    chosen: str = ""
    fp: Footprint | None = None
    seq: int = 0  # 1-based index of this event among its actor's events
    clock: dict[str, int] | None = None  # happens-before: actor -> last seq hb-before-or-equal

    def order(self) -> list[str]:
        """Enabled actors, the one that just ran first (fewer preemptions, calmer traces)."""
        if self.prev in self.enabled:
            return [self.prev, *(a for a in self.enabled if a != self.prev)]
        return list(self.enabled)

    def next_choice(self) -> str | None:
        for actor in self.order():
            if actor in self.backtrack and actor not in self.done and actor not in self.sleep:
                return actor
        return None

    def preempts(self, actor: str) -> bool:
        return self.prev is not None and actor != self.prev and self.prev in self.enabled


def _taken(world, predicted: Footprint) -> Footprint:
    """The footprint of the transition just taken, when the world reports it exactly
    (``World.taken``, a subset of the prediction); else the prediction."""
    taken = getattr(world, "taken", None)
    exact = taken() if taken is not None else None
    return predicted if exact is None else exact


def _enabling(fp: Footprint) -> Footprint:
    """What a transition that never ran races on: its guard.  It could have run only where it
    was enabled; the events that made it so or not write its guard, and reversing one of those
    schedules it where it is enabled - its races through what it would read or write are then
    found in that execution.  (Racing a disabled transition through those would reach
    ``_reverse``'s conservative fallback - every enabled actor - at events it could never
    precede.)"""
    return Footprint(fp.guard, frozenset(), fp.guard)


def _hb(clock: dict[str, int], node: _Node) -> bool:
    """Is ``node``'s event in the happens-before past described by ``clock``?"""
    return clock.get(node.chosen, 0) >= node.seq


def _join(into: dict[str, int], other: dict[str, int]) -> None:
    for actor, seq in other.items():
        if into.get(actor, 0) < seq:
            into[actor] = seq


class TreeSearch:
    """DFS over the execution tree; ``mode`` is ``"dfs"`` (all enabled actors) or ``"dpor"``.
    ``preemption_bound`` (DFS only) prunes branches with more preemptions (sets ``pruned``)."""

    def __init__(self, run: _Run, mode: str, max_depth: int, preemption_bound: int | None):
        self.run = run
        self.dpor = mode == "dpor"
        self.max_depth = max_depth
        self.bound = preemption_bound
        self.pruned = False
        self.pending: list[_Node] = []

    def search(self) -> str | None:
        """Explore until the tree is exhausted (returns None) or the run says stop (why)."""
        nodes: list[_Node] = []
        start = 0
        while not (limit := self.run.stop()):
            ex = self.run.execution()
            self._replay(ex, nodes)
            self._extend(ex, nodes)
            if self.dpor:
                self._races(nodes, start)
            start = self._backtrack(nodes)
            if start is None:
                return None
        return limit

    # -- one execution ------------------------------------------------------------------

    def _replay(self, ex: Execution, nodes: list[_Node]) -> None:
        for node in nodes:
            if self.dpor and node.fp is None:
                node.fp = ex.world.footprint(node.chosen)
                ex.step(node.chosen)
                node.fp = _taken(ex.world, node.fp)
                continue
            ex.step(node.chosen)

    def _extend(self, ex: Execution, nodes: list[_Node]) -> None:
        world = ex.world
        self.pending = []
        while enabled := world.enabled():
            if len(nodes) >= self.max_depth:
                ex.finish("cut")
                return
            node = self._child(tuple(enabled), nodes[-1] if nodes else None)
            actor = node.next_choice()
            if actor is None:
                ex.finish("sleep-blocked")
                return
            node.chosen = actor
            if self.dpor:
                node.fp = world.footprint(actor)
            nodes.append(node)
            ex.step(actor)
            if self.dpor:
                node.fp = _taken(world, node.fp)
        if self.dpor:  # the blocked actors' pending transitions race too
            self.pending = [
                _Node((), None, 0, chosen=a, fp=_enabling(world.footprint(a)))
                for a in world.blocked()
            ]
        self.run.complete(ex)

    def _child(self, enabled: tuple[str, ...], parent: _Node | None) -> _Node:
        if parent is None:
            node = _Node(enabled, None, 0)
        else:
            cost = parent.preempts(parent.chosen)
            node = _Node(enabled, parent.chosen, parent.preemptions + cost)
            if self.dpor:
                node.sleep = self._inherit_sleep(parent)
        node.backtrack = self._initial_backtrack(node)
        return node

    def _inherit_sleep(self, parent: _Node) -> dict[str, Footprint]:
        """Sleepers (and explored siblings) stay asleep across independent steps."""
        chosen, fp = parent.chosen, parent.fp
        return {a: f for a, f in parent.sleep.items() if a != chosen and not f.conflicts(fp)}

    def _initial_backtrack(self, node: _Node) -> set[str]:
        if self.dpor:
            awake = [a for a in node.order() if a not in node.sleep]
            return set(awake[:1])
        if self.bound is None or node.preemptions < self.bound:
            return set(node.enabled)
        free = {a for a in node.enabled if not node.preempts(a)}
        if len(free) < len(node.enabled):
            self.pruned = True
        return free

    def _backtrack(self, nodes: list[_Node]) -> int | None:
        """Move the deepest node with an unexplored choice to it; None when none is left."""
        while nodes:
            node = nodes[-1]
            node.done.add(node.chosen)
            if self.dpor:
                node.sleep[node.chosen] = node.fp
            actor = node.next_choice()
            if actor is not None:
                node.chosen, node.fp, node.clock = actor, None, None
                return len(nodes) - 1
            nodes.pop()
        return None

    # -- DPOR race analysis -------------------------------------------------------------

    def _races(self, nodes: list[_Node], start: int) -> None:
        """Races whose later event is new in this execution (index >= start), then races of
        the pending transitions of blocked actors."""
        count: dict[str, int] = {}
        last: dict[str, int] = {}
        for j in range(len(nodes)):
            self._race_event(nodes, j, count, last, j >= start)
        for node in self.pending:  # each against the branch alone: they never ran
            self._race_event([*nodes, node], len(nodes), dict(count), dict(last), True)

    def _race_event(self, events: list[_Node], j: int, count: dict, last: dict, new: bool):
        node = events[j]
        count[node.chosen] = node.seq = count.get(node.chosen, 0) + 1
        prev = last.get(node.chosen)
        last[node.chosen] = j
        if new:
            for i in self._clock(events, j, prev):
                self._reverse(events, i, j, prev)

    @staticmethod
    def _clock(events: list[_Node], j: int, prev: int | None) -> list[int]:
        """Compute event j's vector clock; return the events in an immediate race with it."""
        me = events[j]
        clock = dict(events[prev].clock) if prev is not None else {}
        clock[me.chosen] = me.seq
        races = []
        for i in range(j - 1, -1, -1):
            other = events[i]
            if _hb(clock, other) or not other.fp.conflicts(me.fp):
                continue
            races.append(i)
            _join(clock, other.clock)
        me.clock = clock
        return races

    def _reverse(self, events: list[_Node], i: int, j: int, prev: int | None) -> None:
        """Schedule the reversal of race i < j in the backtrack set before i.  When e_i may
        have enabled e_j (it writes e_j's guard), also before the earlier dependent events,
        back to one before which e_j itself is known to be enabled (the acquire that took the
        lock); if no initial is enabled anywhere, add every enabled actor before i - unless
        e_i enabled e_j, a race that cannot be reversed."""
        past = events[prev].clock if prev is not None else {}
        added = False
        for m in self._reversal_points(events, i, j, past):
            added = self._add_initial(events, m, j) or added
            if added and self._reversible(events, m, j, prev):
                return
        if not added and events[j].fp.guard.isdisjoint(events[i].fp.writes):
            events[i].backtrack.update(events[i].enabled)

    def _add_initial(self, events: list[_Node], m: int, j: int) -> bool:
        """Source-DPOR's step: some initial of notdep(e_m).e_j in backtrack(pre(e_m)).
        False when none of them is enabled there."""
        node = events[m]
        initials = self._initials(events, m, j)
        if initials & node.backtrack:
            return True
        live = [a for a in node.order() if a in initials]
        if live:
            node.backtrack.add(live[0])
        return bool(live)

    @staticmethod
    def _reversible(events: list[_Node], m: int, j: int, prev: int | None) -> bool:
        """e_j can run before e_m: e_m does not touch its guard, or e_j was already the
        actor's next transition before e_m and enabled there."""
        me = events[j]
        if me.fp.guard.isdisjoint(events[m].fp.writes):
            return True
        return (prev is None or prev < m) and me.chosen in events[m].enabled

    @staticmethod
    def _reversal_points(events: list[_Node], i: int, j: int, past: dict[str, int]):
        """i, then earlier events dependent with j that j's actor does not already need."""
        yield i
        me = events[j]
        for m in range(i - 1, -1, -1):
            other = events[m]
            if other.chosen != me.chosen and not _hb(past, other) and other.fp.conflicts(me.fp):
                yield m

    @staticmethod
    def _initials(events: list[_Node], m: int, j: int) -> set[str]:
        """Actors that can start ``notdep(e_m).e_j``: those whose first event there has no
        happens-before predecessor in it."""
        origin = events[m]
        first_seq: dict[str, int] = {}
        initials = set()
        for k in range(m + 1, j + 1):
            event = events[k]
            if k < j and _hb(event.clock, origin):
                continue
            if event.chosen not in first_seq:
                clock = event.clock
                if not any(clock.get(a, 0) >= s for a, s in first_seq.items()):
                    initials.add(event.chosen)
                first_seq[event.chosen] = event.seq
        return initials
