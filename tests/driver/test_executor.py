import pytest

from vtdsim.driver import steps as st
from vtdsim.driver.executor import DirectExecutor
from vtdsim.driver.platform import Platform
from vtdsim.errors import ModelError, SpecRuleBroken
from vtdsim.hardware.memory import PhysicalMemory


def _platform(**kw):
    return Platform(PhysicalMemory(), [], **kw)


def _op(*items):
    """A generator yielding ``items`` and returning what each step sent back."""
    def gen():
        out = []
        for item in items:
            out.append((yield item))
        return out
    return gen()


def test_memory_steps_apply_and_reads_send_values_back():
    p = _platform()
    ex = DirectExecutor(p)
    out = ex.run(_op(st.CpuWrite(addr=0x1000, value=0x1122334455667788),
                     st.CpuRead(addr=0x1000, size=4),
                     st.CpuCmpxchg(addr=0x1000, expected=1, new=5),
                     st.CpuCmpxchg(addr=0x1000, expected=0x1122334455667788, new=5),
                     st.CpuRead(addr=0x1000)))
    assert out == [None, 0x55667788, 0x1122334455667788, 0x1122334455667788, 5]
    assert ex.steps == {"CpuWrite": 1, "CpuRead": 2, "CpuCmpxchg": 2}


def test_clflush_range_writes_every_line_back():
    p = _platform()
    DirectExecutor(p).run(_op(st.CpuWrite(addr=0x2038, value=7),
                              st.CpuWrite(addr=0x2040, value=9),
                              st.ClflushRange(addr=0x2038, size=16)))
    assert p.memory.dram_qword(0x2038) == 7 and p.memory.dram_qword(0x2040) == 9
    assert p.memory.dirty_lines() == []


@pytest.mark.parametrize("works", [True, False])
def test_wbinvd_follows_the_platform(works):
    p = _platform(wbinvd_works=works)
    DirectExecutor(p).run(_op(st.CpuWrite(addr=0x3000, value=1), st.Wbinvd()))
    assert p.memory.dram_qword(0x3000) == (1 if works else 0)


def test_locks_deadlock_and_bad_unlock():
    ex = DirectExecutor(_platform())
    with pytest.raises(ModelError, match="deadlock"):
        ex.run(_op(st.Lock(name="a"), st.Lock(name="a")))
    with pytest.raises(SpecRuleBroken):
        DirectExecutor(_platform()).run(_op(st.Unlock(name="b")))


def test_pages_come_back_lifo():
    p = _platform()
    out = DirectExecutor(p).run(_op(st.AllocPage(), st.AllocPage()))
    DirectExecutor(p).run(_op(st.FreePage(addr=out[0])))
    assert out[1] == out[0] + 4096
    assert DirectExecutor(p).run(_op(st.AllocPage())) == [out[0]]


def test_wait_that_cannot_finish_is_a_model_error():
    with pytest.raises(ModelError, match="can never complete"):
        DirectExecutor(_platform()).run(_op(st.WaitQword(addr=0x100, value=2)))


def test_non_step_is_reported_with_its_location():
    with pytest.raises(ModelError, match="test_executor.py"):
        DirectExecutor(_platform()).run(_op("not a step"))


def test_annotations_reach_listeners():
    seen = []
    DirectExecutor(_platform(), [seen.append]).run(_op(st.Annotate(event="x", data=(1,))))
    assert [a.event for a in seen] == ["x"]


def test_apply_and_ready_give_the_checker_the_executor_semantics():
    from vtdsim.driver import steps as st
    from vtdsim.driver.executor import DirectExecutor
    from vtdsim.driver.platform import Platform
    from vtdsim.hardware.memory import PhysicalMemory

    ex = DirectExecutor(Platform(PhysicalMemory(), []))
    wait = st.WaitQword(addr=0x2000, value=2)
    assert not ex.ready(wait)
    assert ex.apply(st.CpuWrite(addr=0x2000, value=2)) is None
    assert ex.ready(wait)
    assert ex.apply(wait) == 2
    assert ex.ready(st.Lock(name="l"))
    ex.apply(st.Lock(name="l"))
    assert not ex.ready(st.Lock(name="l"))
    assert ex.steps["Lock"] == 1 and ex.steps["WaitQword"] == 1


@pytest.mark.parametrize("stored, mask, value", [
    (2, 0xFFFF_FFFF_FFFF_FFFF, 2), (0x2_0000_0001, 0xFFFF_FFFF << 32, 2 << 32),
    (1, 0xFFFF_FFFF_FFFF_FFFF, 2), (0x1_0000_0002, 0xFFFF_FFFF << 32, 2 << 32),
    (0, 0xFF, 0)])
def test_wait_qword_satisfied_is_ready_then_apply(stored, mask, value):
    """The timed engine's shortcut for a status poll answers as ``ready`` then ``apply``
    would: the same reply and count when the condition holds, nothing done when not."""
    runs = []
    for shortcut in (True, False):
        ex = DirectExecutor(_platform())
        ex.apply(st.CpuWrite(addr=0x2008, value=stored))
        wait = st.WaitQword(addr=0x2008, value=value, mask=mask)
        if shortcut:
            reply = ex.wait_qword_satisfied(wait)
        else:
            reply = ex.apply(wait) if ex.ready(wait) else None
        runs.append((reply, dict(ex.steps)))
    assert runs[0] == runs[1]
    assert (runs[0][0] is not None) == (stored & mask == value)
