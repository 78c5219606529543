"""Replay speed and memory: ``vtdsim replay`` on the largest shared recording (legacy-cm-ats:
181k guest trace events, 1.05M QEMU log lines, 108k invalidation submissions).

``events_per_s`` counts every trace event the replay reads (guest ftrace events + QEMU log
lines, the skipped ``vtd_dmar_translate`` ones included) over the whole replay's wall time.
The two logs are read and parsed by worker processes (traces/prefetch.py) while the model runs
in this one.
Memory: this process's RSS sampled through the replay (at each quarter of the run's time) and
its peak, which a replay whose memory does not grow with the trace's length keeps flat; and
the workers' peak, reported apart: an xz stream is decoded with a window of up to its
dictionary size (64 MiB for the shared recordings, ``xz -lvv``), so a worker's memory grows
with the bytes it has decompressed until the window is full - a property of the file, not of
the replay.
``model_cpu_s`` is this process's CPU time (the model and the comparisons; the workers parse):
on a shared machine it moves less than the wall time.
Targets: events_per_s >= 200,000; this process's RSS not growing with the trace.

Usage: python benchmarks/replay.py [DIR] [--profile-top N]
The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import sys
import threading
import time
from pathlib import Path

from vtdsim.traces import compare
from vtdsim.traces.prefetch import prefetched
from vtdsim.traces.recording import Recording
from vtdsim.traces.replay import LAZY_TOLERANCE, Replayer, read_setup
from vtdsim.traces.textio import numbered_lines

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "legacy-cm-ats"
SAMPLE_S = 0.1


def rss_mb() -> float:
    """The current resident set (Linux /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def max_rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


class RssSampler(threading.Thread):
    """This process's RSS every ``SAMPLE_S`` seconds until ``stop``."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.samples.append(rss_mb())

    def stop(self) -> list[float]:
        """RSS at 1/4, 1/2, 3/4 of the run and at its end."""
        self._done.set()
        self.join()
        samples = self.samples or [rss_mb()]
        n = len(samples)
        return [round(samples[min(n - 1, n * q // 4)], 1) for q in (1, 2, 3)] + [
            round(samples[-1], 1)]


def count_events(directory: str) -> tuple[int, int]:
    """(guest trace events, QEMU log lines) of the recording."""
    rec = Recording(directory)
    return (sum(1 for _ in rec.guest_events()), sum(1 for _ in numbered_lines(rec.qemu_log)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=str(DEFAULT))
    parser.add_argument("--profile-top", type=int, default=0,
                        help="print the N functions with the most own time (cProfile)")
    args = parser.parse_args()
    if not Path(args.directory).is_dir():
        sys.exit(f"no recording at {args.directory}")
    # Counted in a worker too, so that this process's peak RSS is the replay's alone.
    guest_events, qemu_lines = prefetched(count_events, args.directory)
    rec = Recording(args.directory)
    sampler = RssSampler()
    replayer = Replayer(rec, read_setup(rec), "linux-6.1", 0)
    profiler = cProfile.Profile() if args.profile_top else None
    sampler.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    result = replayer.run()
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - start
    model_cpu_s = time.process_time() - cpu_start  # this process: the model + comparison
    quarters = sampler.stop()
    lines, verdict = compare.report(result, LAZY_TOLERANCE)
    print(lines[-1])
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile_top)
    events = guest_events + qemu_lines
    figures = {
        "recording": Path(args.directory).name,
        "guest_events": guest_events,
        "qemu_lines": qemu_lines,
        "submissions": result.guest.model_total,
        "seconds": round(seconds, 2),
        "model_cpu_s": round(model_cpu_s, 2),
        "events_per_s": round(events / seconds),
        "guest_events_per_s": round(guest_events / seconds),
        "submissions_per_s": round(result.guest.model_total / seconds),
        "rss_mb_quarters": quarters,
        "peak_rss_mb": round(max_rss_mb(resource.RUSAGE_SELF), 1),
        "worker_peak_rss_mb": round(max_rss_mb(resource.RUSAGE_CHILDREN), 1),
        "agreement": verdict.ok,
        "profiled": bool(profiler),
    }
    print(f"{events} trace events in {seconds:.1f} s: {figures['events_per_s']:,} events/s; "
          f"RSS at 1/4, 1/2, 3/4 and the end of the run "
          f"{figures['rss_mb_quarters']} MB, peak {figures['peak_rss_mb']} MB; "
          f"log workers' peak {figures['worker_peak_rss_mb']} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
