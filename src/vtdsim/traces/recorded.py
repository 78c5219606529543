"""The recorded side of a replay: the guest's ``qi_submit`` lines and QEMU's queue-tail batches
of one recording, paired with each other and compared with the model's submissions as they
arrive (compare.py).  ``compare_recording`` is what replay runs in a worker process
(workers.py), so that the model's process runs nothing but the model.

The model's stream arrives as ``ModelSubmission``s, one per IQT write: ``(origin, descs)``
with each descriptor as ``(label, qw0, qw1, qw2, qw3)``.  The first ones are the model's boot;
QEMU's log before the trace's first submissions (found by the first ``ALIGN_WINDOW`` of them,
``split_at_trace_start``) is compared with those; the boot batches beyond what that part holds
were made after the trace started (6.12) and open the traced comparison.  After that, the
guest's submissions fill QEMU's batches slot by slot (one IQT write per ``qi_submit_sync``
call: one descriptor in 6.1, up to 16 in 6.12, each guest line must fit its slot; lines of
one timestamp from several CPUs take QEMU's order, ``compare.BatchFiller``), and both are
compared with the model's stream position by position.  The logs are read only as far as
the model's stream has come, so memory is the lag between the two
sides, not the recording's length.

Not modelled: interrupt remapping - ``iec_inv`` submissions are counted apart, never compared
(compare.py says what else is excluded and why).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice

from vtdsim.traces import compare as cmp
from vtdsim.traces import events as ev
from vtdsim.traces.qemu_log import parse_qemu_lines, silent_kinds
from vtdsim.traces.recording import Recording
from vtdsim.traces.textio import numbered_lines

# Guest submissions that locate the trace's start in QEMU's log (iec ones included: they are
# QEMU-visible in legacy mode); enough to be unambiguous, few enough to stay early in the log.
ALIGN_WINDOW = 12
# QEMU events the comparison needs; the rest (vtd_dmar_translate above all) is skipped unparsed.
_QEMU_EVENTS = frozenset({"vtd_inv_qi_tail", "vtd_inv_qi_head", "vtd_inv_desc"})
# The flush queue's flush (cache_tag_flush_all): an iotlb_inv DSI, or for first-stage domains a
# PASID-selective p_iotlb_inv - both G = 2 in qw0 bits 4-5.
_DSI = 2
_WHOLE_DOMAIN = frozenset({"iotlb_inv", "p_iotlb_inv"})

ModelSubmission = tuple[str, tuple[tuple, ...]]  # (origin, ((label, qw0..qw3), ...))
_new_desc = ev.fast_constructor(cmp.ModelDesc)
_new_batch = ev.fast_constructor(cmp.ModelBatch)


def model_batch(submission: ModelSubmission) -> cmp.ModelBatch:
    origin, descs = submission
    return _new_batch(tuple([_new_desc(d[0], d[1:], origin) for d in descs]), origin)


def qemu_log_batches(path: str) -> Iterator[cmp.QemuBatch]:
    """The batches of QEMU's log at ``path`` (only the lines the comparison needs are parsed)."""
    return cmp.qemu_batches(parse_qemu_lines(numbered_lines(path), path, _QEMU_EVENTS))


@dataclass
class RecordedComparison:
    """What the recorded side found: the boot part (None when the trace's start could not be
    found in QEMU's log), the two traced streams, and what was counted apart."""

    boot: cmp.BootComparison | None
    guest: cmp.PairedStream
    qemu: cmp.PairedStream
    iec: Counter = field(default_factory=Counter)  # "guest trace" -> iec_inv not modelled
    recorded_flushes: Counter = field(default_factory=Counter)  # DSIs: "timer" / "other"
    after_trace: Counter = field(default_factory=Counter)  # QEMU batches after the trace
    misfits: int = 0  # guest submissions whose QEMU batch does not hold them
    tie_groups: int = 0  # groups of tied guest lines QEMU's log shows in another order


class _RecordedSide:
    """The two recorded streams and the comparisons they feed."""

    def __init__(self, path: str):
        self.recording = Recording(path)
        versions = self.recording.versions
        self.silent = silent_kinds(versions.qemu, versions.where)
        self.submissions = self.recording.guest_events(("qi_submit",))
        self.qemu_batches: Iterator[cmp.QemuBatch] = iter(())
        self.filler = cmp.BatchFiller(iter(()), self.silent)
        self.result = RecordedComparison(None, cmp.guest_stream(),
                                         cmp.qemu_stream("QEMU's queue (traced part)",
                                                         self.silent))
        self.group: list[ev.QiSubmit] = []  # guest lines of one timestamp, not yet paired

    def align_boot(self, boot: list[cmp.ModelBatch]) -> None:
        """QEMU's part before the guest trace starts, against the model's boot."""
        first = list(islice(self.submissions, ALIGN_WINDOW))
        self.submissions = chain(first, self.submissions)
        split = cmp.split_at_trace_start(qemu_log_batches(str(self.recording.qemu_log)), first,
                                         self.silent)
        if split is not None:
            boot_batches, self.qemu_batches = split
            self.filler = cmp.BatchFiller(self.qemu_batches, self.silent)
            self.result.boot = cmp.compare_boot(boot, boot_batches, self.silent)
            for batch in self.result.boot.in_trace:
                self.push_model(batch)

    def push_model(self, batch: cmp.ModelBatch) -> None:
        guest = self.result.guest
        for desc in batch.descs:
            guest.push_model(desc)
        self.result.qemu.push_model(batch)
        while guest.recorded_total < guest.model_total:
            event = next(self.submissions, None)
            if event is None:
                return
            self._recorded(event)

    def _recorded(self, event: ev.QiSubmit) -> None:
        """A guest submission, paired with its QEMU batch once its timestamp's group is
        complete (``_pair_group``)."""
        group = self.group
        if group and event.ts_us != group[0].ts_us:
            self._pair_group()
        self.group.append(event)

    def _pair_group(self) -> None:
        """Guest lines of one timestamp and the QEMU batch slots they fill (one IQT write per
        ``qi_submit_sync`` call, one line per caller descriptor: 6.1 one, 6.12's ``qi_batch``
        up to 16); lines of several CPUs take their batches in QEMU's order where they fit
        (``compare.BatchFiller``), so both streams are compared in the guest's order."""
        group, self.group = self.group, []
        if not group:
            return
        filler, cpu = self.filler, group[0].cpu
        if all(event.cpu == cpu for event in group):
            for event in group:
                self._pair(event, *filler.fill(event))
            return
        placed, reordered = filler.fill_tied(group)
        self.result.tie_groups += reordered
        for event, (batch, slot) in zip(group, placed, strict=True):
            self._pair(event, batch, slot)

    def _pair(self, event: ev.QiSubmit, batch: cmp.QemuBatch | None, slot: int) -> None:
        result = self.result
        if slot == 0 and batch is not None and event.label != cmp.IEC:
            result.qemu.push_recorded(batch)
        if not self.filler.fits(event, batch, slot):
            result.misfits += 1
        if event.label == cmp.IEC:
            result.iec["guest trace"] += 1
            return
        if event.label in _WHOLE_DOMAIN and (event.qw0 >> 4) & 3 == _DSI:
            result.recorded_flushes["timer" if event.context == ev.SOFTIRQ else "other"] += 1
        result.guest.push_recorded(event)

    def finish(self) -> RecordedComparison:
        """The model is done: the rest of the guest trace, then QEMU's batches after it (the
        trace was read out while the guest still ran: not compared, counted by kind)."""
        for event in self.submissions:
            self._recorded(event)
        self._pair_group()
        after = self.result.after_trace
        for batch in self.qemu_batches:
            after["iec" if batch.iec else "silent" if batch.silent else "other"] += 1
        self.result.guest.finish()
        self.result.qemu.finish()
        return self.result


def compare_recording(model: Iterator[ModelSubmission], path: str,
                      boot: list[ModelSubmission]) -> RecordedComparison:
    """Compare the recording at ``path`` with the model's ``boot`` submissions and then with
    each one ``model`` yields (replay's worker)."""
    side = _RecordedSide(path)
    side.align_boot([model_batch(s) for s in boot])
    for submission in model:
        side.push_model(model_batch(submission))
    return side.finish()
