"""The recordings' side of a seed: a recording replayed through ``traces.replay`` gives both
what the real guest did (QEMU's queue-tail writes in the traced part: each one a VM exit under
KVM, traces/README.md) and what the driver model submits for the same calls.

Exits per map+unmap pair = traced queue-tail writes / unmap calls (each workload call maps, then
unmaps; interrupt-remapping writes are excluded by the replay).

Not provided: recordings outside the given folder; a missing one is a marked absence.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from vtdsim.study.evidence import NOT_PRESENT, Figure, missing
from vtdsim.traces.replay import replay


class Recordings:
    """Replays each recording once; ``traces_dir`` holds the shared recordings."""

    def __init__(self, traces_dir: Path, bundled_dir: Path, seed: int):
        self.traces_dir, self.bundled_dir, self.seed = traces_dir, bundled_dir, seed
        self._done: dict[str, dict | None] = {}
        self._pending: dict[str, Future] = {}
        self.wall: dict[str, float] = {}

    def prefetch(self, names: list[str], pool: ProcessPoolExecutor) -> None:
        """Start replaying ``names`` in ``pool`` (a replay of a large recording takes tens of
        seconds; the checker and the simulator run meanwhile on the other core)."""
        for name in names:
            path = self.path(name)
            if path is not None and name not in self._pending:
                self._pending[name] = pool.submit(_replay_counts, path, self.seed)

    def path(self, name: str) -> Path | None:
        for folder in (self.traces_dir, self.bundled_dir):
            if (folder / name / "config.toml").is_file():
                return folder / name
        return None

    def counts(self, name: str) -> dict | None:
        if name not in self._done:
            self._done[name] = self._replay(name)
        return self._done[name]

    def _replay(self, name: str) -> dict | None:
        path = self.path(name)
        if path is None:
            return None
        future = self._pending.pop(name, None)
        counts, self.wall[name] = (future.result() if future is not None
                                   else _replay_counts(path, self.seed))
        return counts

    def exits_per_pair(self, name: str, side: str, which: str = "recorded") -> Figure:
        """Exits per map+unmap pair, as ``which`` ("recorded" or "model") gives them."""
        label = f"{name}: exits per map+unmap ({which})"
        source = "recording" if which == "recorded" else "model run"
        counts = self.counts(name)
        if counts is None:
            return missing(label, "exits", source, f"{self.traces_dir}/{name}", NOT_PRESENT,
                           side)
        writes = counts[f"{which}_tail_writes"]
        pairs = max(counts["unmap_calls"], 1)
        how = ("QEMU vtd_inv_qi_tail lines in the traced part" if which == "recorded"
               else f"vtdsim replay {name} (profile {counts['profile']}): the model's writes")
        return Figure(label, round(writes / pairs, 4), "exits", source,
                      f"{how}: {writes} / {counts['unmap_calls']} unmap calls", side)

    def tail_writes(self, name: str, side: str) -> Figure:
        label = f"{name}: queue-tail writes (VM exits), traced part"
        counts = self.counts(name)
        if counts is None:
            return missing(label, "exits", "recording", f"{self.traces_dir}/{name}",
                           NOT_PRESENT, side)
        return Figure(label, float(counts["recorded_tail_writes"]), "exits", "recording",
                      f"{name}/qemu.log.xz vtd_inv_qi_tail ({counts['map_calls']} map, "
                      f"{counts['unmap_calls']} unmap calls)", side)


def _replay_counts(path: Path, seed: int) -> tuple[dict, float]:
    """The counts a study uses from one replay, and its wall time (a process-pool task)."""
    start = time.perf_counter()
    result = replay(path, None, seed)
    return ({"profile": result.profile, "map_calls": result.calls.map_calls,
             "unmap_calls": result.calls.unmap_calls,
             "recorded_tail_writes": result.qemu.recorded_total,
             "model_tail_writes": result.qemu.model_total},
            round(time.perf_counter() - start, 3))
