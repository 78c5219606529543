"""PhysicalMemory: the CPU cache, clflush/wbinvd, snooped vs non-snooped DMA, the write buffer."""

from vtdsim.hardware.memory import PhysicalMemory


def test_unpopulated_memory_reads_zero():
    m = PhysicalMemory()
    assert m.read_qword(0x123000) == 0
    assert m.dma_read(0xFFF, 4) == bytes(4)


def test_cpu_store_is_invisible_to_non_snooped_reads_until_clflush():
    m = PhysicalMemory()
    m.cpu_write_qword(0x1008, 0xDEAD)
    assert m.read_qword(0x1008) == 0xDEAD  # snooped (coherent) walk
    assert m.read_qword(0x1008, snoop=False) == 0  # non-coherent walk sees DRAM
    m.clflush(0x1000)
    assert m.read_qword(0x1008, snoop=False) == 0xDEAD
    assert m.dirty_lines() == []


def test_no_snoop_dma_write_leaves_a_stale_cpu_line():
    m = PhysicalMemory()
    m.cpu_read(0x2000, 8, allocate=True)  # the CPU holds the line (clean)
    m.dma_write(0x2000, b"\x11" * 8, snoop=False)
    assert m.cpu_read(0x2000, 8) == bytes(8)  # stale: no-snoop bypassed the CPU cache
    m.wbinvd()
    assert m.cpu_read(0x2000, 8) == b"\x11" * 8


def test_snooped_dma_write_updates_cached_copy():
    m = PhysicalMemory()
    m.cpu_write(0x3000, b"\x01" * 16)
    m.dma_write(0x3004, b"\x02" * 4)
    assert m.cpu_read(0x3000, 8) == b"\x01" * 4 + b"\x02" * 4


def test_accesses_crossing_pages_and_lines():
    m = PhysicalMemory()
    m.cpu_write(0x1FFC, b"abcdefgh")
    assert m.cpu_read(0x1FFC, 8) == b"abcdefgh"
    m.wbinvd()
    assert m.dma_read(0x1FFC, 8, snoop=False) == b"abcdefgh"
    assert m.read_qword(0x1FFC, snoop=False) == int.from_bytes(b"abcdefgh", "little")


def test_write_buffer_posts_stores_until_flushed():
    m = PhysicalMemory()
    m.cpu_write_qword(0x4000, 1)
    m.write_buffer = True
    m.cpu_write_qword(0x4000, 2)
    assert m.read_qword(0x4000) == 1  # the unit still sees the pre-image
    assert m.posted_lines() == [0x4000]
    m.flush_write_buffer()
    assert m.read_qword(0x4000) == 2


def test_snapshot_distinguishes_states():
    a, b = PhysicalMemory(), PhysicalMemory()
    assert a.snapshot() == b.snapshot()
    a.cpu_write_qword(0, 1)
    assert a.snapshot() != b.snapshot()
