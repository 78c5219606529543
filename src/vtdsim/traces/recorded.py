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

Where a group of tied lines takes QEMU's batches in another order than the guest's, the model
IQT writes that made those lines (by index: one VM exit each on the VMM model) are reported in
QEMU's order (``RecordedComparison.exit_orders``), so that the VMM model's exits can be
compared with QEMU's in the order QEMU processed them (vmm_compare.py).

Not modelled: interrupt remapping - ``iec_inv`` submissions are counted apart, never compared
(compare.py says what else is excluded and why).
"""

from __future__ import annotations

from collections import Counter, deque
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
    # per such group: the model's IQT writes (indexes from the boot's first) in QEMU's order
    exit_orders: list[tuple[int, ...]] = field(default_factory=list)


class _RecordedSide:
    """The two recorded streams and the comparisons they feed: the guest's ``qi_submit``
    lines and QEMU's batches from the trace's start on (``align_boot`` finds it in a
    recording's log; ``batches`` are given when there is no boot part to align)."""

    def __init__(self, submissions: Iterator[ev.QiSubmit], silent: frozenset,
                 batches: Iterator[cmp.QemuBatch] | None = None, qemu_log: str = ""):
        self.silent = silent
        self.submissions = submissions
        self.qemu_log = qemu_log
        self.qemu_batches = batches = iter(()) if batches is None else batches
        self.filler = cmp.BatchFiller(batches, self.silent)
        self.result = RecordedComparison(None, cmp.guest_stream(),
                                         cmp.qemu_stream("QEMU's queue (traced part)",
                                                         self.silent))
        self.group: list[ev.QiSubmit] = []  # guest lines of one timestamp, not yet paired
        # The model's IQT write of each model descriptor from number ``desc_base`` on, the
        # guest lines paired so far (line k is compared with model descriptor k), and the
        # tied groups QEMU took in another order, as (descriptor number, QEMU batch) per line,
        # until the model's descriptors reach them (the log is read a group ahead).
        self.desc_writes: deque[int] = deque()
        self.desc_base = 0
        self.lines_paired = 0
        self.tied: deque[list[tuple[int, cmp.QemuBatch]]] = deque()

    def align_boot(self, boot: list[cmp.ModelBatch]) -> None:
        """QEMU's part before the guest trace starts, against the model's boot (its IQT writes
        0 to ``len(boot) - 1``)."""
        first = list(islice(self.submissions, ALIGN_WINDOW))
        self.submissions = chain(first, self.submissions)
        split = cmp.split_at_trace_start(qemu_log_batches(self.qemu_log), first, self.silent)
        if split is not None:
            boot_batches, self.qemu_batches = split
            self.filler = cmp.BatchFiller(self.qemu_batches, self.silent)
            self.result.boot = cmp.compare_boot(boot, boot_batches, self.silent)
            in_trace = self.result.boot.in_trace
            for index, batch in enumerate(in_trace, len(boot) - len(in_trace)):
                self.push_model(batch, index)

    def push_model(self, batch: cmp.ModelBatch, write: int) -> None:
        """The model's IQT write number ``write`` (counted from the boot's first)."""
        guest = self.result.guest
        for desc in batch.descs:
            guest.push_model(desc)
            self.desc_writes.append(write)
        self._order_tied()
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
        lines = []
        for event, (batch, slot) in zip(group, placed, strict=True):
            desc = self._pair(event, batch, slot)
            if desc is not None and batch is not None:
                lines.append((desc, batch))
        if lines:
            self.tied.append(lines)
            self._order_tied()

    def _order_tied(self) -> None:
        """Tied groups whose model descriptors have arrived: their IQT writes in QEMU's
        order; then forget the writes of descriptors no line will ask for."""
        known = self.desc_base + len(self.desc_writes)
        while self.tied and self.tied[0][-1][0] < known:
            writes: dict[int, cmp.QemuBatch] = {}  # model IQT write -> its first line's batch
            for desc, batch in self.tied.popleft():
                writes.setdefault(self.desc_writes[desc - self.desc_base], batch)
            self._exit_order(writes)
        keep = self.tied[0][0][0] if self.tied else self.lines_paired
        while self.desc_base < keep and self.desc_writes:
            self.desc_writes.popleft()
            self.desc_base += 1

    def _exit_order(self, writes: dict[int, cmp.QemuBatch]) -> None:
        """The model's IQT writes of one tied group in QEMU's order (its log's order of the
        batches they took), when that is not the model's: QEMU's ``vtd_handle_iqt_write``
        processes one IQT write whole, head to tail, within the vCPU's MMIO exit, so each
        exit's events are contiguous and exits come in the order the guest's IQT writes
        reached QEMU - the guest's ``qi->q_lock`` order, which the tie hides."""
        ours = sorted(writes)
        theirs = sorted(writes, key=lambda write: writes[write].line)
        if theirs != ours and ours[-1] - ours[0] + 1 == len(ours):
            self.result.exit_orders.append(tuple(theirs))

    def _pair(self, event: ev.QiSubmit, batch: cmp.QemuBatch | None, slot: int) -> int | None:
        """Pair one guest line with its batch; the number of the model descriptor it is
        compared with (None for an ``iec_inv`` line: the model makes none)."""
        result = self.result
        if slot == 0 and batch is not None and event.label != cmp.IEC:
            result.qemu.push_recorded(batch)
        if not self.filler.fits(event, batch, slot):
            result.misfits += 1
        if event.label == cmp.IEC:
            result.iec["guest trace"] += 1
            return None
        if event.label in _WHOLE_DOMAIN and (event.qw0 >> 4) & 3 == _DSI:
            result.recorded_flushes["timer" if event.context == ev.SOFTIRQ else "other"] += 1
        result.guest.push_recorded(event)
        self.lines_paired += 1
        return self.lines_paired - 1

    def finish(self) -> RecordedComparison:
        """The model is done: the rest of the guest trace, then QEMU's batches after it (the
        trace was read out while the guest still ran: not compared, counted by kind)."""
        for event in self.submissions:
            self._recorded(event)
        self._pair_group()
        self._order_tied()
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
    recording = Recording(path)
    versions = recording.versions
    side = _RecordedSide(recording.guest_events(("qi_submit",)),
                         silent_kinds(versions.qemu, versions.where),
                         qemu_log=str(recording.qemu_log))
    side.align_boot([model_batch(s) for s in boot])
    for write, submission in enumerate(model, len(boot)):
        side.push_model(model_batch(submission), write)
    return side.finish()
