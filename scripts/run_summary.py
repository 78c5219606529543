"""The closing lines of `make run`: what each part found, read from the parts' JSON reports
(replay.json, check.json) and the demo's last line, in the folder given."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    out = Path(folder)
    demo = (out / "demo.txt").read_text().strip().splitlines()
    replay = json.loads((out / "replay.json").read_text())
    check = json.loads((out / "check.json").read_text())
    s = check["summary"]
    d, t = replay["descriptors"], replay["queue_tail_writes"]
    print("summary of make run:")
    retry = [line.strip() for line in demo if "retries the stale iova" in line]
    print(f"  demo:   {len(demo)} lines; {retry[0] if retry else 'no stale-retry line'}")
    print(f"  replay: {replay['recording']}: {'agrees' if replay['agrees'] else 'DIVERGES'}, "
          f"{d['matched']}/{d['recorded']} descriptors, {t['matched']}/{t['recorded']} "
          "queue-tail writes")
    print(f"  check:  {s['scenarios']} scenarios, {s['as_expected']} verdicts as expected, "
          f"{s['unexpected']} unexpected, {s['bad_inputs']} bad input file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
