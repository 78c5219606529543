"""The unit's side of a queued flush takes written-out paths; each is exact against the general
one it stands for, run on twins and compared whole:

* the IOTLB's page-selective invalidations (``_invalidate_range``: no predicate closure,
  ``range_keys`` of one page written out) against ``invalidate_where`` with
  ``_overlapping`` over every entry of the scope - on random entries of every level, stage,
  global bit, PASID and domain, requester-tagged or not, and random ranges;
* ``range_keys`` / ``range_key_count`` against the pages of each size a range touches;
* ``InvalidationQueue.step`` (its ``pending`` checks inline) against ``pending`` then
  ``_run`` of one, on random queue states: QI off, IQE/ITE set, tails beyond the queue or
  misaligned, either width, valid and garbage descriptors;
* the register file's write slots against ``locate`` and the shift and mask it implied;
* ``decode`` (each field read from its qword; ``decode_fetched``, a fetch's qwords taken as
  they are) and ``validate`` (reserved bits per qword, the one capability a type needs)
  against the joined-value decode and the former checks, on random qwords of every type and
  the units' presets, in either queue width."""

from hypothesis import given, settings
from hypothesis import strategies as st

from vtdsim.hardware.bitfield import QWORD_MASK
from vtdsim.hardware.caches.base import psi_range
from vtdsim.hardware.caches.iotlb import (
    IOTLB_LEVELS,
    TYPE2_STAGES,
    TYPE6_STAGES,
    Iotlb,
    IotlbEntry,
    _nested_or,
    _overlapping,
    level_shift,
    range_key_count,
    range_keys,
)
from vtdsim.hardware.descriptors import (
    _ADDRESS_SHIFT,
    _TYPE_FIELDS,
    IQEI_INVALID_TYPE,
    IQEI_INVALID_WIDTH,
    IQEI_RESERVED,
    LAYOUTS,
    Descriptor,
    _content_invalid,
    _type_of,
    decode,
    decode_fetched,
    encode,
    validate,
)
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import PRESETS, get_preset
from vtdsim.hardware.registers import RegisterFile
from vtdsim.hardware.remapping_unit import RemappingUnit

STAGES = ("fs", "ss", "nested", "pt")
IOVAS = (0x0, 0x1000, 0x1F_F000, 0x20_0000, 0x20_1000, 0x4000_0000, 0x7FFF_F000)

entries = st.tuples(st.integers(1, 2), st.integers(0, 1), st.sampled_from(IOTLB_LEVELS),
                    st.sampled_from(IOVAS), st.sampled_from(STAGES), st.booleans(),
                    st.integers(0, 1))
flushes = st.tuples(st.sampled_from((2, 6)), st.integers(1, 2), st.integers(0, 1),
                    st.sampled_from(IOVAS + (0x1234_5000, 0x20_0800)), st.integers(0, 10))


def _fill(cache: Iotlb, did, pasid, level, iova, stage, global_, sid) -> None:
    base = iova & ~((1 << level_shift(level)) - 1)
    entry = IotlbEntry(did, pasid, base, level, 0x1000_0000, True, True, False, False, stage,
                       global_=global_, sid=sid if cache.tag_sid else None)
    cache.fill(entry.key, entry)


def _reference(cache: Iotlb, kind, did, pasid, addr, am) -> int:
    """The general path: a predicate over every entry of the scope."""
    base, size = psi_range(addr, am)
    if kind == 6:
        pred = _overlapping(TYPE6_STAGES, base, size, spare_global=False)
        return cache.invalidate_where(pred, cache.group_keys((did, pasid)))
    pred = _overlapping(TYPE2_STAGES, base, size, spare_global=False)
    return sum(cache.invalidate_where(_nested_or(pred) if g in cache._nested_groups else pred,
                                      cache.group_keys(g)) for g in cache.domain_groups(did))


def _state(cache: Iotlb):
    return (cache.items(), cache.stats.as_dict(), cache.groups(),
            [cache.group_keys(g) for g in cache.groups()], cache._sole,
            sorted(cache._nested_groups), sorted(cache._large_groups))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(entries, flushes), max_size=40), st.integers(2, 12), st.booleans())
def test_page_selective_iotlb_flushes_equal_the_general_path(ops, capacity, tag_sid):
    fast, full = Iotlb(capacity), Iotlb(capacity)
    fast.tag_sid = full.tag_sid = tag_sid
    for op in ops:
        if len(op) == 7:
            _fill(fast, *op)
            _fill(full, *op)
            continue
        kind, did, pasid, addr, am = op
        if kind == 6:
            dropped = fast.invalidate_pasid_page(did, pasid, addr, am)
        else:
            dropped = fast.invalidate_page(did, addr, am)
        assert dropped == _reference(full, kind, did, pasid, addr, am), op
        assert _state(fast) == _state(full), op


@given(st.integers(0, 1 << 40), st.integers(1, 1 << 31))
def test_range_keys_are_the_pages_of_each_size_the_range_touches(base, size):
    last = base + size - 1
    expected = [(7, 1, level, n) for level in IOTLB_LEVELS
                for n in range(base >> level_shift(level), (last >> level_shift(level)) + 1)]
    if len(expected) > 5000:
        expected = None  # too many to list: the count alone
    keys = range_keys(7, 1, base, size) if expected is not None else None
    assert keys == expected
    count = sum((last >> level_shift(level)) - (base >> level_shift(level)) + 1
                for level in IOTLB_LEVELS)
    assert range_key_count(base, size) == count


# -- the queue's step -----------------------------------------------------------------------------
GCMD, FSTS, IQH, IQT, IQA = 0x18, 0x34, 0x80, 0x88, 0x90
QUEUE, STATUS = 0x10_0000, 0x20_0000

queue_states = st.fixed_dictionaries({
    "wide": st.booleans(), "qie": st.booleans(), "fsts": st.sampled_from((0, 0, 1 << 4, 1 << 6)),
    "head": st.integers(0, 7), "tail": st.sampled_from((0, 1, 2, 3, 5, 8, 300, 4096 // 16)),
    "garbage": st.integers(0, 3), "steps": st.integers(1, 6),
})


def _queue_unit(s) -> RemappingUnit:
    unit = RemappingUnit(get_preset("server-sm"), PhysicalMemory(), qi_mode="async")
    width = 32 if s["wide"] else 16
    unit.mmio_write(IQT, 8, 0)
    unit.mmio_write(IQA, 8, QUEUE | (1 << 11 if s["wide"] else 0))
    if s["qie"]:
        unit.mmio_write(GCMD, 4, 1 << 26)
    for slot in range(16):
        qws = encode("inv_wait", sw=1, status_data=2, status_addr=STATUS + 8 * slot)
        if slot == s["garbage"]:
            qws = (0x7 | slot << 40, 0xFF, 0, 0)  # type 7 with reserved bits: IQE
        for i, qw in enumerate(qws[: width // 8]):
            unit.memory.cpu_store(QUEUE + slot * width + 8 * i, qw, 8)
    unit.regs.raw["IQH"] = s["head"] * width
    unit.regs.raw["IQT"] = s["tail"] * 16
    unit.regs.raw["FSTS"] |= s["fsts"]
    return unit


def _unit_state(unit: RemappingUnit):
    return (dict(unit.regs.raw), dict(unit.stats), unit.memory.snapshot(), unit.queue.performed,
            unit.queue._stopped)


@settings(max_examples=300, deadline=None)
@given(queue_states)
def test_queue_step_equals_pending_then_one_run(s):
    fast, full = _queue_unit(s), _queue_unit(s)
    for _ in range(s["steps"]):
        took = fast.queue.step()
        q = full.queue
        q.performed = ""
        expected = q.pending() > 0 and q._run(1, q._geometry_now()) > 0
        assert took == expected
        assert _unit_state(fast) == _unit_state(full)


# -- register writes ------------------------------------------------------------------------------
def test_register_write_slots_are_what_locate_accepts():
    regs = RegisterFile(get_preset("server-sm"))
    for offset in range(0, 0x1100):
        for size in range(1, 10):
            reg = regs.locate(offset, size)
            slot = regs._slots.get((offset, size))
            if reg is None:
                assert slot is None, (offset, size)
                continue
            shift = 8 * (offset - reg.offset)
            assert slot == (reg, shift, ((1 << (8 * size)) - 1) << shift), (offset, size)


# -- descriptor decode and validation -------------------------------------------------------------
def _reference_decode(qws) -> Descriptor:
    """``decode`` through the joined 128/256-bit value, field by field (the general path)."""
    qws4 = (tuple(int(q) & QWORD_MASK for q in qws) + (0,) * (4 - len(qws)))[:4]
    dtype = _type_of(qws4[0])
    layout = LAYOUTS.get(dtype)
    if layout is None:
        return Descriptor(dtype, f"type_{dtype:#x}", {}, qws4)
    raw = layout.decode(layout.from_qwords(qws4))
    fields = {n: v << _ADDRESS_SHIFT.get(n, 0) for n, v in raw.items() if n not in _TYPE_FIELDS}
    return Descriptor(dtype, layout.name, fields, qws4)


def _reference_validate(desc: Descriptor, caps, wide: bool) -> int:
    needs = {3: caps.dt, 4: caps.ir, 8: caps.dt, 9: caps.prs}
    if desc.layout is None or not needs.get(desc.type, True):
        return IQEI_INVALID_TYPE
    if desc.type in (6, 7, 8) and not wide:
        return IQEI_INVALID_WIDTH
    if desc.reserved_bits():
        return IQEI_RESERVED
    if wide and desc.type != 9 and (desc.qws[2] or desc.qws[3]):
        return IQEI_RESERVED
    return IQEI_RESERVED if _content_invalid(desc, caps) else 0


qwords = st.one_of(st.integers(0, QWORD_MASK), st.sampled_from((0, 1, 1 << 63, QWORD_MASK)))


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 15), st.sampled_from((0, 0, 0, 1 << 9)), st.lists(qwords, min_size=4,
       max_size=4), st.sampled_from((2, 4)), st.sampled_from(sorted(PRESETS)), st.booleans())
def test_decode_and_validate_equal_the_general_path(dtype, hi, qws, count, preset, wide):
    qws = (qws[0] & ~0xE0F | dtype | hi, *qws[1:count])
    desc = decode_fetched(qws)
    reference = _reference_decode(qws)
    assert desc == reference == decode(list(qws))
    assert list(desc.fields) == list(reference.fields)  # the same order
    caps = get_preset(preset)
    assert validate(desc, caps, wide) == _reference_validate(reference, caps, wide)
