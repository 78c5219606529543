"""The common shape of every remapping-hardware translation cache (VT-d spec 6.2).

``LruCache`` is an ordered map with least-recently-used replacement and hit/miss counters.
Every cache of the unit (context-cache, PASID-cache, IOTLB, paging-structure caches) and the
device-TLB subclass it and add ``invalidate_<granularity>`` methods named after the
invalidation descriptor granularities (spec 6.5.2).

Hardware freedom, made explicit for the checker (spec 6.2: "hardware may cache ... and may
evict at any time"): any entry may be dropped at any moment (``evict``), and any translation
structure entry reachable in *current* memory may be filled at any moment (the fills come
from ``RemappingUnit.possible_fills``; the cache only stores what it is given).  Capacity and
LRU replacement are the simulator's choice of one legal behaviour among many.

Not modelled: set associativity, per-level partitioning, replacement policies other than LRU,
the timing of lookups.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from vtdsim.errors import ModelError


@dataclass(slots=True)
class CacheStats:
    """What a cost model reads off one cache."""

    hit: int = 0
    miss: int = 0
    fill: int = 0
    replaced: int = 0  # entries pushed out by a fill into a full cache (LRU replacement)
    evicted: int = 0  # entries dropped through ``evict`` (the hardware's freedom)
    invalidated: int = 0  # entries dropped by invalidations

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class LruCache:
    """An LRU-replaced cache of frozen entries; ``capacity`` 0 means it never caches.

    A subclass may set ``group_len`` to keep a secondary index by key prefix (e.g. the
    ``(did, pasid)`` tag) so scoped invalidations visit only the entries of their scope
    instead of the whole cache; lookups never touch the index.

    The index (``_groups``): group -> its member keys, groups in first-fill order.  While
    one group has filled an empty cache and no other has come (``_sole``: one device's
    domain, the common case), its members are simply all entries - stored as None - so a
    fill that replaces an entry of that group keeps no index at all; the first other
    group to come makes its member dict (``_group``), kept until the cache empties.
    """

    # The length of the key prefix that names a key's invalidation scope (``group_of``); 0:
    # not grouped.  A prefix, sliced inline, because a fill and its LRU victim's drop are on
    # every IOTLB miss: a method call each would be a good part of the fill's cost.
    group_len = 0
    # A fill into a full cache empties it whole instead of replacing the LRU entry (QEMU's
    # vtd_update_iotlb resets its IOTLB at VTD_IOTLB_MAX_SIZE; legal: hardware may evict
    # anything at any moment, spec 6.1).  ``stats.replaced`` counts every entry so dropped.
    flush_when_full = False

    def __init__(self, name: str, capacity: int):
        if capacity < 0:
            raise ModelError(f"cache {name}: negative capacity {capacity}")
        self.name = name
        self.capacity = capacity
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._bind()
        # group -> its members (None: the sole group, whose members are all entries).
        self._groups: dict[Hashable, dict[Hashable, None] | None] = {}
        self._sole: Hashable | None = None  # the group whose members are all entries

    def _bind(self) -> None:
        # Bound once: refreshing recency is on every hit of the IOTLB fast path.
        self._touch = self._entries.move_to_end
        self._get = self._entries.get

    def __getstate__(self) -> dict:
        # deepcopy treats bound C methods as atomic: a copy would keep using the original's
        # dict.  Drop them and bind again on the copy (copy, deepcopy and pickle alike).
        state = self.__dict__.copy()
        del state["_touch"], state["_get"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bind()

    def group_of(self, key: Hashable) -> Hashable:
        """The invalidation scope a key belongs to (only for a grouped cache)."""
        if not self.group_len:
            raise ModelError(f"cache {self.name} is not grouped")
        return key[:self.group_len]

    # -- lookups --------------------------------------------------------------------------------
    def lookup(self, key: Hashable) -> Any | None:
        """The entry for ``key`` (refreshing its recency), counting a hit or a miss."""
        entry = self._get(key)
        if entry is None:
            self.stats.miss += 1
            return None
        self._touch(key)
        self.stats.hit += 1
        return entry

    def lookup_first(self, keys: Iterable[Hashable]) -> Any | None:
        """The entry of the first of ``keys`` cached (its recency refreshed, one hit), else
        None (one miss): a lookup that probes one key per page size."""
        get = self._get
        for key in keys:
            entry = get(key)
            if entry is not None:
                self._touch(key)
                self.stats.hit += 1
                return entry
        self.stats.miss += 1
        return None

    def peek(self, key: Hashable) -> Any | None:
        """The entry for ``key`` without touching recency or counters (for checkers, printing)."""
        return self._get(key)

    # -- fills and evictions --------------------------------------------------------------------
    def fill(self, key: Hashable, entry: Any) -> Hashable | None:
        """Store ``entry``; returns the key of the LRU entry it replaced, if any."""
        entries = self._entries
        if key not in entries:
            return self.fill_absent(key, entry)
        self._touch(key)
        entries[key] = entry
        self.stats.fill += 1
        return None

    def fill_absent(self, key: Hashable, entry: Any) -> Hashable | None:
        """``fill`` of a ``key`` the caller knows is not cached (it has just probed it, and
        nothing ran since): no membership test.  Returns the replaced LRU entry's key."""
        entries = self._entries
        # A key of the sole group (a device's domain; a full IOTLB replaces one of its entries
        # on every fill): the index has nothing to change, nor has the victim's drop.
        n, sole = self.group_len, self._sole
        indexed = n and (sole is None or key[:n] != sole)
        victim = None
        if len(entries) >= self.capacity:  # full, or capacity 0
            if not self.capacity:
                return None
            if self.flush_when_full:
                victim = next(iter(entries))
                self.stats.replaced += len(entries)
                entries.clear()
                self._groups.clear()
                self._sole = None
                indexed = n
            else:
                # _drop of the LRU entry, inlined: a full cache replaces one on every fill.
                victim = entries.popitem(False)[0]  # positional: no keyword parsing
                self.stats.replaced += 1
                if indexed:
                    self._forget(victim)
        if indexed:
            self._group(key)
        entries[key] = entry
        self.stats.fill += 1
        return victim

    def _group(self, key: Hashable) -> None:
        """Index a key about to be filled into a grouped cache (not the sole group's)."""
        group = key[:self.group_len]
        groups = self._groups
        if not groups:
            groups[group] = None  # the first group of an empty cache: the sole one
            self._sole = group
            return
        sole = self._sole
        if sole is not None:  # another group comes: the sole group's members made explicit
            groups[sole] = dict.fromkeys(self._entries)
            self._sole = None
        members = groups.get(group)
        if members is None:
            groups[group] = {key: None}
        else:
            members[key] = None

    def _forget(self, key: Hashable) -> None:
        """Un-index a key just dropped from the entries of a grouped cache."""
        group = key[:self.group_len]
        members = self._groups[group]
        if members is None:  # the sole group: gone with the last entry
            if not self._entries:
                del self._groups[group]
                self._sole = None
            return
        del members[key]
        if not members:
            del self._groups[group]

    def evict(self, key: Hashable) -> bool:
        """Drop one entry (hardware may do so at any moment); False if it was not cached."""
        if key not in self._entries:
            return False
        self._drop(key)
        self.stats.evicted += 1
        return True

    def _drop(self, key: Hashable) -> None:
        del self._entries[key]
        if self.group_len:
            self._forget(key)

    # -- invalidation ---------------------------------------------------------------------------
    def invalidate_where(
        self, pred: Callable[[Hashable, Any], bool], keys: Iterable[Hashable] | None = None
    ) -> int:
        """Drop every entry for which ``pred(key, entry)`` holds - among ``keys`` when given
        (keys not cached are skipped), else among all; returns how many."""
        get = self._get
        candidates = self._entries if keys is None else keys
        return self.drop_keys([k for k in candidates if (e := get(k)) is not None and pred(k, e)])

    def drop_keys(self, doomed: list[Hashable]) -> int:
        """Drop the cached keys ``doomed`` as invalidated; returns how many."""
        entries, grouped = self._entries, self.group_len
        for k in doomed:
            del entries[k]  # ``_drop``, inline
            if grouped:
                self._forget(k)
        self.stats.invalidated += len(doomed)
        return len(doomed)

    def invalidate_global(self) -> int:
        """Drop everything (every cache has a global invalidation)."""
        return self.clear()

    def clear(self) -> int:
        n = len(self._entries)
        self._entries.clear()
        self._groups.clear()
        self._sole = None
        self.stats.invalidated += n
        return n

    # -- scoped views (for invalidations) ---------------------------------------------------------
    def groups(self) -> list[Hashable]:
        """Groups that hold entries, in first-fill order (deterministic)."""
        return list(self._groups)

    def group_keys(self, group: Hashable) -> list[Hashable]:
        """The keys of ``group`` (the sole group's: all, least recently used first)."""
        members = self._groups.get(group, ())
        return list(self._entries if members is None else members)

    def group_size(self, group: Hashable) -> int:
        """How many keys ``group`` has cached."""
        members = self._groups.get(group, ())
        return len(self._entries if members is None else members)

    def domain_groups(self, did: int) -> list[Hashable]:
        """The groups of domain ``did``, for caches grouped by ``(did, pasid)``."""
        if not self._groups:
            return []  # every invalidation asks; replay and the checker often cache nothing
        return [g for g in self._groups if g[0] == did]

    # -- inspection -----------------------------------------------------------------------------
    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used (deterministic)."""
        return list(self._entries)

    def items(self) -> list[tuple[Hashable, Any]]:
        return list(self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Hashable]:
        """Keys, least recently used first (a snapshot: safe while invalidating)."""
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)}/{self.capacity})"


def ranges_overlap(base_a: int, size_a: int, base_b: int, size_b: int) -> bool:
    """Whether [base_a, base_a+size_a) and [base_b, base_b+size_b) share an address."""
    return base_a < base_b + size_b and base_b < base_a + size_a


def psi_range(addr: int, am: int) -> tuple[int, int]:
    """(base, size) of a page-selective invalidation: 2^AM 4 KiB pages, ADDR aligned down to
    that size.  Spec 6.5.2.3 requires ADDR aligned; how hardware treats a misaligned ADDR is
    unconfirmed - we mask the low bits as QEMU's vtd_iotlb_page_invalidate does."""
    size = 1 << (12 + am)
    return addr & ~(size - 1), size
