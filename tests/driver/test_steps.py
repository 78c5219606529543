"""The step builders that memoise immutable steps hand out the same values as building them."""

from vtdsim.driver import steps as st


def test_qword_reads_are_the_cpu_reads_they_stand_for_and_stay_bounded():
    reads = st.QwordReads("a walk")
    for addr in range(0, 8 * (st.QWORD_READS_KEPT + 10), 8):
        step = reads[addr]
        assert step == st.CpuRead(addr=addr, size=8, why="a walk")
        assert reads[addr] is step  # built once while kept
        assert len(reads) <= st.QWORD_READS_KEPT
    assert st.qword_read(0x1008, "unmap") == st.CpuRead(addr=0x1008, size=8, why="unmap")
    assert st.qword_reads("unmap") is st.qword_reads("unmap")
