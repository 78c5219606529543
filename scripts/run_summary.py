"""The closing lines of `make run`: what each part found, read from the parts' reports in the
folder given (demo.txt, replay.json, check.json, study/report.json); a part that left no
report says so."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _demo(out: Path) -> str:
    path = out / "demo.txt"
    if not path.is_file():
        return "no output (the demo failed)"
    lines = path.read_text().splitlines()
    retry = [line.strip() for line in lines if "retries the stale iova" in line]
    return f"{len(lines)} lines; {retry[0] if retry else 'no stale-retry line'}"


def _replay(out: Path) -> str:
    path = out / "replay.json"
    if not path.is_file():
        return "no report (the replay failed)"
    r = json.loads(path.read_text())
    d, t = r["descriptors"], r["queue_tail_writes"]
    return (f"{r['recording']}: {'agrees' if r['agrees'] else 'DIVERGES'}, "
            f"{d['matched']}/{d['recorded']} descriptors, {t['matched']}/{t['recorded']} "
            "queue-tail writes")


def _check(out: Path) -> str:
    path = out / "check.json"
    if not path.is_file():
        return "no report (the check failed before its end)"
    s = json.loads(path.read_text())["summary"]
    return (f"{s['scenarios']} scenarios, {s['as_expected']} verdicts as expected, "
            f"{s['unexpected']} unexpected, {s['bad_inputs']} bad input file(s)")


def _study(out: Path) -> str:
    path = out / "study" / "report.json"
    if not path.is_file():
        return "no report (the study failed before its end)"
    seeds = json.loads(path.read_text())["seeds"]
    notes = [s["number"] for s in seeds if s["note"]]
    return (f"{len(seeds)} seed threads answered"
            + (f", verdicts differ from the conclusion in {', '.join(notes)}" if notes else "")
            + f"; full report {path.with_name('report.html')}")


def main(folder: str) -> int:
    out = Path(folder)
    print("summary of make run:")
    print(f"  demo:   {_demo(out)}")
    print(f"  replay: {_replay(out)}")
    print(f"  check:  {_check(out)}")
    print(f"  study:  {_study(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
