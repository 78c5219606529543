"""The model's side of ``vtdsim replay`` alone, for deterministic instruction counts
(``valgrind --tool=callgrind``): the part of replay.py's main process that the benchmark's
wall time waits for (benchmarks/replay.py: the model runs in one process, the workers on the
other core).

Two steps, so that reading the logs is not counted: ``save`` reads the recording's set-up and
its first ``--calls`` items of rebuilt guest calls and submit marks (replay.guest_calls) into
a pickle; ``run`` boots the model as ``Replayer`` does, feeds those items to the CPU streams
and pickles the model's submissions in the chunks the worker would be handed.  Counting ``run``
with ``--calls 1`` gives the fixed cost (imports, boot) to subtract.  The last line printed is
a JSON object: the calls and marks fed, the submissions, and a digest of the submission stream
(the same inputs must give the same digest before and after a change).

Usage::

    python scripts/replay_model_only.py save DIR FILE [--calls N]
    valgrind --tool=callgrind python scripts/replay_model_only.py run FILE

Not covered: the workers' reading and comparing, the transfer between processes (pickling
of the submissions is done here, unpickling of the calls when ``FILE`` is loaded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from itertools import islice

from vtdsim.traces.calls import SubmitMark
from vtdsim.traces.recording import Recording
from vtdsim.traces.replay import Replayer, guest_calls, read_setup, recording_profile

CHUNK = 2048  # as traces/workers.py hands records over


def save(directory: str, out: str, calls: int) -> None:
    rec = Recording(directory)
    items = [item for item in islice(guest_calls(directory), calls)
             if type(item) in (tuple, SubmitMark)]
    with open(out, "wb") as f:
        pickle.dump((directory, read_setup(rec), recording_profile(rec), items), f)
    print(json.dumps({"saved": len(items), "file": out}))


def run(path: str) -> None:
    with open(path, "rb") as f:
        directory, setup, profile, items = pickle.load(f)
    replayer = Replayer(Recording(directory), setup, profile, 0)
    digest, chunk, counts = hashlib.sha256(), [], {"submissions": 0}

    def hand_over(submission) -> None:
        chunk.append(submission)
        counts["submissions"] += 1
        if len(chunk) == CHUNK:
            digest.update(pickle.dumps(chunk))
            chunk.clear()

    replayer._hand_over = hand_over
    cpus = replayer.cpus
    for item in items:
        if type(item) is tuple:
            replayer._call(*item)
        else:
            cpus.mark(item.stream, item.ts_us)
    cpus.finish()
    digest.update(pickle.dumps(chunk))
    print(json.dumps({"items": len(items), **counts, "digest": digest.hexdigest()[:16]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    saving = sub.add_parser("save")
    saving.add_argument("directory")
    saving.add_argument("file")
    saving.add_argument("--calls", type=int, default=10_000,
                        help="the first N items (calls and submit marks)")
    running = sub.add_parser("run")
    running.add_argument("file")
    args = parser.parse_args()
    if args.command == "save":
        save(args.directory, args.file, args.calls)
    else:
        run(args.file)


if __name__ == "__main__":
    main()
