"""Compare what the driver model submitted with a recording: the guest's ``qi_submit`` lines
(Linux drivers/iommu/intel/dmar.c ``qi_submit_sync``, one per caller descriptor) and what
QEMU 7.2's (or 10.0's) vIOMMU processed (hw/i386/intel_iommu.c ``vtd_process_inv_desc``: one
``vtd_inv_qi_tail`` per IQT write, then a ``vtd_inv_qi_head`` per descriptor fetched and a
``vtd_inv_desc`` with its raw words for the kinds QEMU handles).

QEMU's view is grouped into batches, one per IQT write.  Descriptors QEMU treats as no-ops
(7.2: PASID-cache, PASID-IOTLB, and in scalable mode interrupt-entry-cache; 10.0: PASID-cache;
qemu_log.SILENT_KINDS) show only as a head read: they are "silent" slots, matched with the
model's descriptors of those kinds.  Waits are compared by count (each non-empty batch ends
with one); their status addresses are the guest's memory and are not compared.  Streams are
compared position by position; the first difference is kept with the matches before it as
context.

Not handled: a profile's batched submissions against a 6.1 recording are compared as they are
(they diverge, which is the point), QEMU's IQE handling (no recording has one), 256-bit
descriptors' upper half (QEMU 7.2 prints only the lower 128 bits).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial

from vtdsim.traces import events as ev

IEC = "iec_inv"
# Descriptor kinds QEMU 7.2 fetches without a vtd_inv_desc line (linux-driver.md 1.4); each
# QEMU version's set: qemu_log.SILENT_KINDS.  Every comparison takes the recording's set.
QEMU72_SILENT = frozenset({"pc_inv", "p_iotlb_inv"})
SILENT = "silent"
CONTEXT_PAIRS = 3


def hexwords(words: Iterable[int]) -> str:
    return " ".join(f"{w:#x}" for w in words)


# -- the two sides as comparable values --------------------------------------------------------
@ev.record
class ModelDesc:
    """One descriptor the model's driver submitted, with what made it submit it."""

    label: str
    qws: tuple[int, int, int, int]
    origin: str

    def describe(self) -> str:
        return f"{self.label} {hexwords(self.qws)}  [{self.origin}]"


@ev.record
class ModelBatch:
    """One IQT write of the model: the descriptors before its wait (none for Linux's IQT=0
    write when it sets the queue up)."""

    descs: tuple[ModelDesc, ...]
    origin: str

    @property
    def count(self) -> int:
        """Descriptors, the wait excluded."""
        return len(self.descs)

    def is_silent(self, silent: frozenset = QEMU72_SILENT) -> bool:
        """Every descriptor is a kind QEMU does not log (and there is at least one)."""
        return bool(self.descs) and all(d.label in silent for d in self.descs)

    def qemu_view(self, silent: frozenset = QEMU72_SILENT) -> tuple:
        return tuple(SILENT if d.label in silent else (d.qws[0], d.qws[1])
                     for d in self.descs)

    def describe(self) -> str:
        if not self.descs:
            return f"IQT write, no descriptor  [{self.origin}]"
        return "; ".join(d.describe() for d in self.descs)


@ev.record
class QemuBatch:
    """One ``vtd_inv_qi_tail`` and what QEMU fetched for it: ``slots`` hold ``(kind, qw0,
    qw1)`` for logged descriptors (waits included) and ``SILENT`` for fetched, unlogged ones.
    ``view`` (the non-wait slots as raw words or ``SILENT``), ``waits`` and ``iec`` are
    derived once, by ``qemu_batch``, since every comparison reads them."""

    line: int
    slots: tuple
    view: tuple
    waits: int
    iec: bool

    @property
    def count(self) -> int:
        """Descriptors, waits excluded."""
        return len(self.view)

    @property
    def silent(self) -> bool:
        view = self.view
        return bool(view) and all(s == SILENT for s in view)

    def describe(self) -> str:
        parts = [SILENT if s == SILENT else f"{s[0]} low {s[1]:#x} high {s[2]:#x}"
                 for s in self.slots]
        return f"qemu.log:{self.line}: " + ("; ".join(parts) or "no descriptor")


def qemu_batch(line: int, slots: tuple) -> QemuBatch:
    """The batch of the ``vtd_inv_qi_tail`` at ``line`` with its fetched ``slots``."""
    logged = [s for s in slots if s != SILENT]
    view = tuple(s if s == SILENT else (s[1], s[2]) for s in slots
                 if s == SILENT or s[0] != "wait")
    return QemuBatch(line, slots, view, sum(1 for s in logged if s[0] == "wait"),
                     any(s[0] == "iec" for s in logged))


def batch_matches(qemu: QemuBatch, model: ModelBatch, silent: frozenset = QEMU72_SILENT) -> bool:
    """Same descriptors (raw words, or silent for silent), and one wait per non-empty batch."""
    return model.qemu_view(silent) == qemu.view and qemu.waits == (1 if model.descs else 0)


def guest_matches(recorded: ev.QiSubmit, model: ModelDesc) -> bool:
    return (recorded.label == model.label
            and (recorded.qw0, recorded.qw1, recorded.qw2, recorded.qw3) == model.qws)


def describe_guest(recorded: ev.QiSubmit) -> str:
    words = (recorded.qw0, recorded.qw1, recorded.qw2, recorded.qw3)
    return (f"{recorded.label} {hexwords(words)}  [guest trace line {recorded.line}, "
            f"cpu {recorded.cpu}, {recorded.ts_us / 1e6:.6f} s, {recorded.context}]")


# -- QEMU's log as batches ---------------------------------------------------------------------
def qemu_batches(events: Iterable[ev.QemuEvent]) -> Iterator[QemuBatch]:
    """Group QEMU events into one batch per IQT write (``vtd_inv_qi_tail``)."""
    line, slots = None, []
    for event in events:
        kind = type(event)
        if kind is ev.QemuQiTail:
            if line is not None:
                yield qemu_batch(line, tuple(slots))
            line, slots = event.line, []
        elif line is None:
            continue
        elif kind is ev.QemuQiHead:
            slots.append(SILENT)
        elif kind is ev.QemuInvDesc:
            entry = (event.kind, event.qw0, event.qw1)
            if slots and slots[-1] == SILENT:
                slots[-1] = entry  # the head read this descriptor came from
            else:
                slots.append(entry)
    if line is not None:
        yield qemu_batch(line, tuple(slots))


# -- position-by-position comparison -----------------------------------------------------------
@dataclass
class Divergence:
    """The first place two streams differ, with the pairs that matched just before it."""

    stream: str
    index: int
    recorded: str
    model: str
    context: list[tuple[str, str]]

    def lines(self) -> list[str]:
        out = [f"first divergence in {self.stream}, item {self.index + 1}:"]
        for recorded, model in self.context:
            out.append(f"    ok        {recorded}")
            if model != recorded:
                out.append(f"      model   {model}")
        out.append(f"  > recorded  {self.recorded}")
        out.append(f"  > model     {self.model}")
        return out


def _one(_item: object) -> int:
    return 1


@dataclass
class PairedStream:
    """Pairs recorded and model items in order and compares each pair.  Items wait in a queue
    until their counterpart arrives, so memory is the lag between the two sides."""

    name: str
    same: Callable[[object, object], bool]
    describe_recorded: Callable[[object], str]
    describe_model: Callable[[object], str]
    weight: Callable[[object], int] = _one  # functions by name: a stream must pickle
    recorded: deque = field(default_factory=deque)
    model: deque = field(default_factory=deque)
    pairs: int = 0
    matched: int = 0
    matched_weight: int = 0
    recorded_total: int = 0
    recorded_weight: int = 0
    model_total: int = 0
    model_weight: int = 0
    first: Divergence | None = None
    _context: deque = field(default_factory=partial(deque, maxlen=CONTEXT_PAIRS))

    def push_recorded(self, item) -> None:
        self.recorded_total += 1
        self.recorded_weight += self.weight(item)
        self.recorded.append(item)
        self._pair()

    def push_model(self, item) -> None:
        self.model_total += 1
        self.model_weight += self.weight(item)
        self.model.append(item)
        self._pair()

    def _pair(self) -> None:
        while self.recorded and self.model:
            self._compare(self.recorded.popleft(), self.model.popleft())

    def _compare(self, recorded, model) -> None:
        index = self.pairs
        self.pairs += 1
        if self.same(recorded, model):
            self.matched += 1
            self.matched_weight += self.weight(recorded)
            if self.first is None:
                # The items, not their descriptions: formatting is paid only at a divergence.
                self._context.append((recorded, model))
            return
        self._diverged(index, self.describe_recorded(recorded), self.describe_model(model))

    def _diverged(self, index: int, recorded: str, model: str) -> None:
        if self.first is None:
            context = [(self.describe_recorded(r), self.describe_model(m))
                       for r, m in self._context]
            self.first = Divergence(self.name, index, recorded, model, context)

    def finish(self) -> None:
        """Items left on one side had no counterpart: the first of them is a divergence."""
        if self.recorded:
            self._diverged(self.pairs, self.describe_recorded(self.recorded[0]),
                           f"(nothing: the model submitted {self.model_total} in all)")
        elif self.model:
            self._diverged(self.pairs, f"(nothing: the recording has {self.recorded_total})",
                           self.describe_model(self.model[0]))

    @property
    def mismatched(self) -> int:
        return self.pairs - self.matched

    @property
    def exact(self) -> bool:
        return self.first is None

    def kinds_agree(self) -> bool:
        """Every pair compared equal (leftovers on one side allowed: the lazy rule)."""
        return self.matched == self.pairs


def guest_stream() -> PairedStream:
    return PairedStream("the guest's qi_submit stream (traced part)", guest_matches,
                        describe_guest, ModelDesc.describe)


def qemu_stream(name: str, silent: frozenset = QEMU72_SILENT) -> PairedStream:
    same = batch_matches if silent is QEMU72_SILENT else partial(batch_matches, silent=silent)
    return PairedStream(name, same, QemuBatch.describe, ModelBatch.describe,
                        weight=_batch_weight)


def _batch_weight(batch) -> int:
    return batch.count


# -- boot: the QEMU log before the guest trace starts ------------------------------------------
@dataclass
class BootComparison:
    """QEMU's boot batches against the model's boot, in order.  QEMU batches the model does
    not produce are classified: interrupt remapping (iec, or silent where the model has no
    silent descriptor), or boot-time work after the model's boot and before the trace
    started (the model cannot know it); any other difference is a divergence."""

    stream: PairedStream
    iec_batches: int = 0
    silent_as_iec: int = 0
    pre_trace: list[QemuBatch] = field(default_factory=list)
    in_trace: list[ModelBatch] = field(default_factory=list)
    """The model's boot batches QEMU's boot part has no room for: the guest trace started
    before the boot's work did (6.12's ftrace is enabled from the command line, before
    ``intel_iommu_init``), so they are compared with the traced part, first."""


def compare_boot(model: list[ModelBatch], qemu: list[QemuBatch],
                 silent: frozenset = QEMU72_SILENT) -> BootComparison:
    result = BootComparison(qemu_stream("boot (QEMU log before the guest trace starts)",
                                        silent))
    pending = deque(model)
    for batch in qemu:
        if batch.iec:
            result.iec_batches += 1
        elif pending and batch_matches(batch, pending[0], silent):
            result.stream.push_model(pending.popleft())
            result.stream.push_recorded(batch)
        elif batch.silent and not (pending and pending[0].is_silent(silent)):
            result.silent_as_iec += 1
        elif not pending:
            result.pre_trace.append(batch)
        else:
            result.stream.push_model(pending.popleft())
            result.stream.push_recorded(batch)
    result.in_trace = list(pending)
    result.stream.finish()
    return result


def guest_desc_fits(recorded: ev.QiSubmit, batch: QemuBatch, slot: int = 0,
                    silent: frozenset = QEMU72_SILENT) -> bool:
    """Is ``batch`` the IQT write of this guest submission, as its descriptor ``slot``?
    ``qi_submit_sync`` writes IQT once per call, after the caller's descriptors and one
    wait: 6.1 passes one descriptor a call, 6.12's ``qi_batch_flush_descs`` up to 16."""
    view = batch.view
    if slot >= len(view) or batch.waits != 1:
        return False
    if view[slot] == SILENT:
        return recorded.label == IEC or recorded.label in silent
    return recorded.label not in silent and view[slot] == (recorded.qw0, recorded.qw1)


class BatchFiller:
    """Which QEMU batch (IQT write) and slot each guest ``qi_submit`` line is.

    ``qi_submit_sync`` prints one line per caller descriptor under ``qi->q_lock``, then
    writes IQT once (6.1: one descriptor a call; 6.12's ``qi_batch_flush_descs``: up to 16),
    so one CPU's consecutive lines fill one batch slot by slot, and no other CPU's line comes
    between them (the lock).  But ftrace merges its per-CPU buffers by timestamp and on a tie
    prints the lower CPU first (kernel/trace/trace.c ``__find_next_entry`` keeps the first
    smallest), and a lagging vCPU's clock reads the last value any CPU read
    (arch/x86/kernel/pvclock.c ``pvclock_clocksource_read``'s ``last_value``), so tied lines
    of different CPUs are in no known order - QEMU's log, one IQT write at a time, has the
    queue's.  ``fill_tied`` gives each new batch of such a group to the CPU whose next line
    fits its first slot (the first in guest order when several do), the batch's CPU fills
    the rest, and each CPU's own lines keep their order."""

    def __init__(self, batches: Iterator[QemuBatch], silent: frozenset = QEMU72_SILENT):
        self.batches = batches
        self.silent = silent
        self.batch: QemuBatch | None = None  # the IQT write being filled
        self.slot = 0  # the next line's slot in it
        self.owner = -1  # the CPU filling it

    def _open(self) -> bool:
        batch = self.batch
        return batch is not None and self.slot < max(len(batch.view), 1)

    def _take(self) -> QemuBatch | None:
        self.batch, self.slot = next(self.batches, None), 0
        return self.batch

    def _place(self, event: ev.QiSubmit) -> tuple[QemuBatch | None, int]:
        placed = self.batch, self.slot
        self.slot += 1
        self.owner = event.cpu
        return placed

    def fill(self, event: ev.QiSubmit) -> tuple[QemuBatch | None, int]:
        """The batch and slot of the next line, lines taken in trace order."""
        if not self._open():
            self._take()
        return self._place(event)

    def fits(self, event: ev.QiSubmit, batch: QemuBatch | None, slot: int) -> bool:
        return batch is not None and guest_desc_fits(event, batch, slot, self.silent)

    def fill_tied(self, group: list[ev.QiSubmit]) -> tuple[list[tuple], bool]:
        """Batch and slot of each line of ``group`` (one timestamp, several CPUs), in guest
        order, and whether QEMU's log has the group's batches in another order."""
        queues: dict[int, deque[int]] = {}
        for i, event in enumerate(group):
            queues.setdefault(event.cpu, deque()).append(i)
        placed: list[tuple] = [(None, 0)] * len(group)
        openers = []
        for _ in group:
            if self._open() and queues.get(self.owner):
                i = queues[self.owner].popleft()
            else:
                batch = self._take()
                heads = sorted(q[0] for q in queues.values() if q)
                i = next((h for h in heads if self.fits(group[h], batch, 0)), heads[0])
                queues[group[i].cpu].popleft()
                openers.append(i)
            placed[i] = self._place(group[i])
        return placed, openers != sorted(openers)


def split_at_trace_start(batches: Iterator[QemuBatch], first: list[ev.QiSubmit],
                         silent: frozenset = QEMU72_SILENT,
                         ) -> tuple[list[QemuBatch], Iterator[QemuBatch]] | None:
    """QEMU's batches before the guest trace's first submissions (``first``, in order, filling
    the IQT writes slot by slot), and an iterator from there on; None when they never appear
    in that order."""
    if not first:
        return None
    boot: list[QemuBatch] = []
    window: deque = deque()
    for batch in batches:
        window.append(batch)
        if len(window) > len(first):
            boot.append(window.popleft())
        if len(window) == len(first) and _fill(first, window, silent):
            return boot, _chain(window, batches)
    while window:  # the log ended: batched submissions need fewer batches than lines
        if _fill(first, window, silent):
            return boot, iter(window)
        boot.append(window.popleft())
    return None


def _fill(first: list[ev.QiSubmit], window: deque, silent: frozenset) -> bool:
    """Do the submissions ``first`` fill the batches from ``window[0]`` on, exactly?"""
    index, slot = 0, 0
    for submission in first:
        if index == len(window) or not guest_desc_fits(submission, window[index], slot, silent):
            return False
        slot += 1
        if slot == len(window[index].view):
            index, slot = index + 1, 0
    return slot == 0


def _chain(window: deque, rest: Iterator[QemuBatch]) -> Iterator[QemuBatch]:
    yield from window
    yield from rest


# -- the report --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agreement:
    """The verdict: ``D``/``T`` matched over recorded (QEMU's view, boot + traced, interrupt
    remapping and pre-trace work excluded); exact for strict policies, the lazy rule (counts
    within ``tolerance``, every compared pair equal) for flush-queue domains."""

    lazy: bool
    desc_matched: int
    desc_recorded: int
    tail_matched: int
    tail_recorded: int
    ok: bool

    def line(self) -> str:
        return (f"agreement: {self.desc_matched}/{self.desc_recorded} descriptors, "
                f"{self.tail_matched}/{self.tail_recorded} queue-tail writes")


def within(model: int, recorded: int, tolerance: float) -> bool:
    return abs(model - recorded) <= tolerance * max(recorded, 1)


def decide(boot: BootComparison | None, guest: PairedStream, qemu: PairedStream, *,
           lazy: bool, checks_ok: bool, tolerance: float) -> Agreement:
    if boot is None:
        return Agreement(lazy, 0, qemu.recorded_weight, 0, qemu.recorded_total, False)
    streams = (boot.stream, qemu)
    d_match = sum(s.matched_weight for s in streams)
    d_rec = sum(s.recorded_weight for s in streams)
    t_match = sum(s.matched for s in streams)
    t_rec = sum(s.recorded_total for s in streams)
    ok = checks_ok and boot.stream.exact
    if lazy:
        ok = ok and all(s.kinds_agree() and within(s.model_weight, s.recorded_weight, tolerance)
                        and within(s.model_total, s.recorded_total, tolerance)
                        for s in (guest, qemu))
    else:
        ok = ok and guest.exact and qemu.exact and d_match == d_rec and t_match == t_rec
    return Agreement(lazy, d_match, d_rec, t_match, t_rec, ok)


def table(rows: list[tuple[str, int | str, int | str, int | str]]) -> list[str]:
    """A fixed-width table: what, recorded, model, matched."""
    head = ("", "recorded", "model", "matched")
    width = max(len(r[0]) for r in (head, *rows))
    fmt = f"  {{:<{width}}}  {{:>9}}  {{:>9}}  {{:>9}}"
    return [fmt.format(*head)] + [fmt.format(*map(str, row)) for row in rows]


def stream_rows(label: str, stream: PairedStream, batches: bool) -> list[tuple]:
    """Rows for one stream: descriptors, and for QEMU's view also queue-tail writes."""
    rows = [(f"{label} descriptors", stream.recorded_weight, stream.model_weight,
             stream.matched_weight)]
    if batches:
        rows.append((f"{label} queue-tail writes", stream.recorded_total, stream.model_total,
                     stream.matched))
    return rows


def _policy_lines(result) -> tuple[list[str], bool]:
    """The model's default-domain policy against what the guest printed and sysfs showed."""
    dmesg, policy = result.setup.dmesg, result.boot.policy
    recorded = dmesg.effective_policy or "unknown"
    why = " (batching disallowed: caching mode)" if dmesg.batching_disallowed else ""
    model = "strict" if policy.dma_strict else "lazy"
    types = {g.group: g.type for g in dmesg.groups}
    model_types = {g: SYSFS_TYPES[t] for g, t in result.boot.group_types.items()}
    ok = recorded == model and types == model_types
    lines = [f"policy: recorded {recorded}{why}, model {model}: "
             f"{'agree' if ok else 'DIVERGES'}"]
    if types != model_types:
        lines.append(f"  group types recorded {types}, model {model_types}")
    return lines, ok


SYSFS_TYPES = {"dma": "DMA", "dma_fq": "DMA-FQ", "identity": "identity"}


def _device_line(result) -> str:
    setup, info = result.setup, result.boot.traced_info
    domain = result.boot.cookie.domain
    did = domain.domain_id_iommu(info.iommu)
    group = next(g.group for g in setup.dmesg.groups if info.name in
                 {n.split(":", 1)[-1] for n in g.devices})
    return (f"traced device {info.name} ({setup.traced_how}): group {group}, "
            f"{SYSFS_TYPES.get(domain.type, domain.type)} domain, DID {did}, "
            f"ATS {'on' if info.ats_enabled else 'off'}")


def _flush_line(result) -> list[str]:
    fq = result.boot.cookie.fq
    if fq is None:
        return []
    c, rec = fq.counters, result.recorded_flushes
    return [f"flush queue: model {c['flushes']} flushes ({c['flushes_timer']} by the timer, "
            f"{c['flushes_full']} by a full ring); recorded {sum(rec.values())} domain-wide "
            f"flushes ({rec['timer']} from softirq, {rec['other']} from elsewhere)"]


def _consistency(result) -> tuple[list[str], bool]:
    """The model's own map/unmap events against the recorded ones, and the QEMU pairing."""
    calls, notes = result.calls, result.machine.annotations
    ok = notes["map"] == calls.map_chunks and notes["unmap"] == calls.unmap_calls
    lines = [] if ok else [f"model map/unmap events {notes['map']}/{notes['unmap']} differ "
                           f"from recorded {calls.map_chunks}/{calls.unmap_calls}"]
    if result.misfits:
        lines.append(f"{result.misfits} guest submissions have no matching QEMU queue-tail "
                     "write")
    if result.tie_groups:
        lines.append(f"{result.tie_groups} groups of guest lines of one timestamp from several "
                     "CPUs are in another order in QEMU's log (ftrace prints a tie lower CPU "
                     "first): QEMU's batches compared in the guest's order")
    if not result.aligned:
        lines.append("could not find the guest trace's first submissions in QEMU's log")
    return lines, ok and not result.misfits and result.aligned


def _not_modelled(result) -> list[str]:
    boot = result.boot_cmp
    iec_boot = (boot.iec_batches + boot.silent_as_iec) if boot else 0
    lines = [f"not modelled, excluded from D and T: interrupt remapping (iec_inv): "
             f"{result.iec['guest trace']} in the guest trace, {iec_boot} in QEMU's boot part"
             + (f" ({boot.silent_as_iec} silent, taken as iec)" if boot and boot.silent_as_iec
                else "")]
    if boot and boot.pre_trace:
        lines.append(f"boot-time work before the trace started, unknown to the model: "
                     f"{len(boot.pre_trace)} queue-tail writes, first "
                     f"{boot.pre_trace[0].describe()}")
    if result.boot_mappings:
        lines.append(f"the boot's direct mappings in the trace (another domain, before its "
                     f"first attach), not replayed: {result.boot_mappings} map/unmap events")
    after = result.after_trace
    if after:
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(after.items()))
        lines.append(f"after the guest trace ended (not compared): {parts} queue-tail writes")
    return lines


def report(result, tolerance: float) -> tuple[list[str], Agreement]:
    """The whole report; the agreement line comes last."""
    setup, m = result.setup, result.machine
    out = [f"replay {setup.name}: profile {result.profile}, seed {result.seed}",
           f"unit {setup.dmesg.iommu}: cap {setup.dmesg.cap:#x} ecap {setup.dmesg.ecap:#x}"
           f" ({'scalable' if m.iommu.sm_enabled else 'legacy'} mode"
           f"{', caching mode' if m.caps.caching_mode else ''})"]
    policy, policy_ok = _policy_lines(result)
    consistency, consistent = _consistency(result)
    out += policy + [_device_line(result)]
    out += ["calls: " + line for line in result.calls.lines()] + _flush_line(result)
    out += consistency
    boot = result.boot_cmp
    streams = ([boot.stream] if boot else []) + [result.guest, result.qemu]
    firsts = [s.first for s in streams if s.first is not None]
    for first in firsts:
        out += first.lines()
    if not firsts:
        out.append("no divergence")
    rows = (stream_rows("boot", boot.stream, True) if boot else [])
    rows += stream_rows("traced (guest qi_submit)", result.guest, False)
    rows += stream_rows("traced (QEMU)", result.qemu, True)
    out += ["summary:"] + table(rows) + _not_modelled(result)
    verdict = decide(boot, result.guest, result.qemu, lazy=result.boot.cookie.fq is not None,
                     checks_ok=policy_ok and consistent, tolerance=tolerance)
    if verdict.lazy:
        out.append(f"lazy rule (flush points move with timer jitter): counts within "
                   f"{tolerance:.0%} and every compared flush of the right kind: "
                   f"{'yes' if verdict.ok else 'no'}")
    out.append(verdict.line())
    return out, verdict
