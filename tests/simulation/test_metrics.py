"""The latency histogram: values are kept pending (``add`` is a list append) and folded in
order, so count, float total and buckets are those of adding them one by one; a bucket's
lower bound is within 1/64 below every value in it (exact under 64 ns); reads fold first."""

import random
from collections import Counter
from functools import reduce
from operator import add

from hypothesis import given
from hypothesis import strategies as st

from vtdsim.simulation.metrics import Histogram, _bucket_value, ordered_sum


def _bucket_of(value: float) -> int:
    """The bucket of one value, computed on its own (the per-value loop ``fold`` had)."""
    value = max(0, int(value))
    if value < 64:
        return value
    shift = value.bit_length() - 7
    return (shift + 1) << 6 | (value >> shift) - 64


def test_fold_keeps_order_count_and_buckets():
    rng = random.Random(7)
    values = [rng.choice([-3.5, 1.0, 63.9, 64.0, 1e3, 3e5]) * rng.random() for _ in range(3000)]
    h, total = Histogram(), 0.0
    for i, v in enumerate(values):
        h.add(v)
        total += v
        if i % 997 == 0:
            h.fold()  # folding in pieces changes nothing
    assert h.n == len(values) and h.total == total  # the same float sum, not just close
    assert h.counts == Counter(_bucket_of(v) for v in values)
    for v in values:
        low, ns = _bucket_value(_bucket_of(v)), max(0, int(v))
        assert low <= ns and (ns - low <= low / 64 if ns >= 64 else ns == low), v


def test_fold_by_bisection_matches_per_value_buckets():
    """``fold`` counts a bucket at a time on the sorted values: the same counts as bucketing
    each value alone, at every bucket edge and across many octaves."""
    rng = random.Random(11)
    edges = [_bucket_value(b) for b in range(0, 64 * 30, 7)]
    values = [rng.choice(edges) + rng.choice([-1.0, -1e-9, 0.0, 0.5, 0.999999]) for _ in
              range(2000)] + [rng.lognormvariate(8, 4) for _ in range(2000)] + [-0.0, -7.0, 0.0]
    rng.shuffle(values)
    h = Histogram()
    for v in values:
        h.add(v)
    h.fold()
    assert h.counts == Counter(_bucket_of(v) for v in values) and h.n == len(values)


def test_reads_fold_pending_values():
    h = Histogram()
    for v in (100.0, 200.0, 300.0):
        h.add(v)
    assert h.mean == 200.0 and h.percentile(50) == 200 and h.n == 3


@given(st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                          st.sampled_from([1e16, -1e16, 1.0, 0.1, 3.0]),
                          st.integers(-(1 << 60), 1 << 60))),
       st.floats(allow_nan=False, allow_infinity=False))
def test_ordered_sum_rounds_each_addition_as_plus_equals(values, start):
    """``fold``'s total: every partial sum rounded, left to right (no compensation: 1e16 + 1.0
    - 1e16 is 0.0, as ``+=`` gives), bit for bit."""
    expected = reduce(add, values, start)
    assert repr(ordered_sum(values, start)) == repr(expected)
    assert ordered_sum([1e16, 1.0, -1e16], 0.0) == 0.0
