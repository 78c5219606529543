"""Replay speed and memory: ``vtdsim replay`` on the largest shared recording (legacy-cm-ats:
181k guest trace events, 1.05M QEMU log lines, 108k invalidation submissions).

``events_per_s`` counts every trace event the replay reads (guest ftrace events + QEMU log
lines, the skipped ``vtd_dmar_translate`` ones included) over the whole replay's wall time.
Memory: the RSS at each quarter of the guest trace and at the end, and the peak; a replay whose
memory does not grow with the trace's length shows the quarters about equal.
Targets: events_per_s >= 200,000; peak RSS not growing with the trace.

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
import time
from pathlib import Path

from vtdsim.traces import compare
from vtdsim.traces.recording import Recording
from vtdsim.traces.replay import LAZY_TOLERANCE, Replayer, read_setup
from vtdsim.traces.textio import numbered_lines

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "legacy-cm-ats"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mb() -> float:
    """The current resident set (Linux /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


class SampledRecording(Recording):
    """Samples the RSS at each quarter of the guest trace during the main pass (the first
    pass only reads the first submissions, to align QEMU's log)."""

    def __init__(self, path, total: int):
        super().__init__(path)
        self.marks = {total * q // 4: q for q in (1, 2, 3)}
        self.rss_quarters: list[float] = []
        self.passes = 0

    def guest_events(self):
        self.passes += 1
        main = self.passes > 1
        for count, event in enumerate(super().guest_events(), 1):
            if main and count in self.marks:
                self.rss_quarters.append(round(rss_mb(), 1))
            yield event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=str(DEFAULT))
    parser.add_argument("--profile-top", type=int, default=0,
                        help="print the N functions with the most own time (cProfile)")
    args = parser.parse_args()
    if not Path(args.directory).is_dir():
        sys.exit(f"no recording at {args.directory}")
    guest_events = sum(1 for _ in Recording(args.directory).guest_events())
    qemu_lines = sum(1 for _ in numbered_lines(Recording(args.directory).qemu_log))
    rec = SampledRecording(args.directory, guest_events)
    replayer = Replayer(rec, read_setup(rec), "linux-6.1", 0)
    profiler = cProfile.Profile() if args.profile_top else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    result = replayer.run()
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - start
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
        "events_per_s": round(events / seconds),
        "guest_events_per_s": round(guest_events / seconds),
        "submissions_per_s": round(result.guest.model_total / seconds),
        "rss_mb_quarters": [*rec.rss_quarters, round(rss_mb(), 1)],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "agreement": verdict.ok,
        "profiled": bool(profiler),
    }
    print(f"{events} trace events in {seconds:.1f} s: {figures['events_per_s']:,} events/s; "
          f"RSS at 1/4, 1/2, 3/4 and the end of the guest trace "
          f"{figures['rss_mb_quarters']} MB, peak {figures['peak_rss_mb']} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
