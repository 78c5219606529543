"""PhysicalMemory: the CPU cache, clflush/wbinvd, snooped vs non-snooped DMA, the write buffer."""

import random

import pytest

from vtdsim.errors import ModelError
from vtdsim.hardware.memory import MAX_PHYS_ADDR, PhysicalMemory


def test_unpopulated_memory_reads_zero():
    m = PhysicalMemory()
    assert m.read_qword(0x123000) == 0
    assert m.dma_read(0xFFF, 4) == bytes(4)


def test_cpu_store_is_invisible_to_non_snooped_reads_until_clflush():
    m = PhysicalMemory()
    m.cpu_store(0x1008, 0xDEAD, 8)
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


@pytest.mark.parametrize("addr", [0x1000, 0x1038, 0x103C, 0x1FF8, 0x1FFC, 0x3FF8, 0x5000])
def test_read_qword_of_dram_reads_what_dma_reads(addr):
    """A non-snooped read_qword (its inlined DRAM read) at an aligned qword, one straddling a
    line, one straddling into a populated or an unpopulated page, an unpopulated page."""
    m = PhysicalMemory()
    rng = random.Random(7)
    m.dma_write(0x1000, bytes(rng.randrange(256) for _ in range(0x1000)), snoop=False)
    m.dma_write(0x2000, bytes(rng.randrange(256) for _ in range(0x100)), snoop=False)
    m.dma_write(0x3FF8, b"\x5a" * 8, snoop=False)
    expected = int.from_bytes(m.dma_read(addr, 8, snoop=False), "little")
    assert m.read_qword(addr, snoop=False) == m.read_qword(addr, False) == expected
    assert m.dram_qword(addr) == expected


def test_write_buffer_posts_stores_until_flushed():
    m = PhysicalMemory()
    m.cpu_store(0x4000, 1, 8)
    m.write_buffer = True
    m.cpu_store(0x4000, 2, 8)
    assert m.read_qword(0x4000) == 1  # the unit still sees the pre-image
    assert m.posted_lines() == [0x4000]
    m.flush_write_buffer()
    assert m.read_qword(0x4000) == 2


def test_snapshot_distinguishes_states():
    a, b = PhysicalMemory(), PhysicalMemory()
    assert a.snapshot() == b.snapshot()
    a.cpu_store(0, 1, 8)
    assert a.snapshot() != b.snapshot()


def test_integer_loads_and_stores_of_every_size_agree_with_the_bytes():
    """In-line stores pack in place, line- or page-crossing ones store bytes; both read back
    the same through cpu_load and cpu_read (a 32-byte descriptor, an unaligned qword, a dword
    straddling a line, a qword straddling a page)."""
    m = PhysicalMemory()
    desc = int.from_bytes(bytes(range(1, 33)), "little")
    cases = [(0x1000, 1, 0xAB), (0x1002, 2, 0xBEEF), (0x103E, 4, 0x11223344),
             (0x1045, 8, 0x0102030405060708), (0x1FFC, 8, 0x8877665544332211),
             (0x2040, 16, desc & (2**128 - 1)), (0x2060, 32, desc)]
    for addr, size, value in cases:
        m.cpu_store(addr, value, size)
    for addr, size, value in cases:
        assert m.cpu_read(addr, size) == value.to_bytes(size, "little")
        if size <= 8:
            assert m.cpu_load(addr, size) == value
    m.cpu_store(0x3000, -1, 4)  # truncated to the size, as a store of that width does
    assert m.cpu_load(0x3000, 8) == 0xFFFF_FFFF


def test_a_descriptor_store_is_posted_whole_under_a_write_buffer():
    m = PhysicalMemory()
    m.write_buffer = True
    m.cpu_store(0x5020, 0x11 | 0x22 << 64, 16)
    assert m.posted_lines() == [0x5000]
    assert m.read_qword(0x5020) == 0 and m.read_qword(0x5028) == 0  # the unit: pre-image
    m.flush_write_buffer()
    assert (m.read_qword(0x5020), m.read_qword(0x5028)) == (0x11, 0x22)


def test_out_of_range_cpu_access_is_a_model_error():
    m = PhysicalMemory()
    with pytest.raises(ModelError):
        m.cpu_store(MAX_PHYS_ADDR - 4, 0, 8)
    with pytest.raises(ModelError):
        m.cpu_load(MAX_PHYS_ADDR - 4, 8)


def test_integer_loads_and_stores_equal_the_byte_path_on_random_sequences():
    """``cpu_store``/``cpu_load``'s in-line fast paths (a cached dirty line stored into
    directly, a load unpacked in place) against the plain byte path they replace
    (``cpu_write``/``cpu_read``): the same values and the same whole state - lines, dirty
    set, posted pre-images - through clflushes, write-backs and a write buffer."""
    rng = random.Random(12)
    fast, plain = PhysicalMemory(), PhysicalMemory()
    for _ in range(3000):
        op = rng.randrange(10)
        addr = 0x4000 + rng.randrange(0x180)
        size = rng.choice((1, 2, 4, 8, 16, 32))
        if op < 4:
            value = rng.getrandbits(8 * size + 8)  # wider than the store: truncated
            fast.cpu_store(addr, value, size)
            plain.cpu_write(addr, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
        elif op < 7:
            size = min(size, 8)
            assert fast.cpu_load(addr, size) == int.from_bytes(plain.cpu_read(addr, size),
                                                               "little")
        elif op == 7:
            fast.clflush(addr)
            plain.clflush(addr)
        elif op == 8:
            fast.write_buffer = plain.write_buffer = not fast.write_buffer
        else:
            fast.flush_write_buffer()
            plain.flush_write_buffer()
        assert fast.snapshot() == plain.snapshot()


def test_aligned_qword_loads_equal_the_byte_path():
    """``cpu_load``'s aligned-qword path (every table entry) against ``cpu_read``: cached
    and uncached lines, populated and unpopulated pages, the last qword of a page, and the
    physical limit."""
    rng = random.Random(5)
    m = PhysicalMemory()
    for _ in range(400):
        m.cpu_store(0x8000 + 8 * rng.randrange(1024), rng.getrandbits(64), 8)
    for _ in range(100):
        m.clflush(0x8000 + 64 * rng.randrange(128))
    for addr in [0x8000 + 8 * i for i in range(1024)] + [0xA000, 0x9FF8, MAX_PHYS_ADDR - 8]:
        assert m.cpu_load(addr, 8) == int.from_bytes(m.cpu_read(addr, 8), "little")
    with pytest.raises(ModelError):
        m.cpu_load(MAX_PHYS_ADDR, 8)
    with pytest.raises(ModelError):
        m.cpu_load(-8, 8)


def test_loads_at_and_beyond_the_physical_limit_equal_the_byte_path():
    """``cpu_load``'s range test (one shift) against ``cpu_read``'s: below 0, at and past
    the limit, the last bytes below it, and sizes without an in-place unpack (3, 16)."""
    m = PhysicalMemory()
    m.cpu_store(MAX_PHYS_ADDR - 8, 0x1122334455667788, 8)
    for addr in (-8, -1, -(1 << 60), MAX_PHYS_ADDR, MAX_PHYS_ADDR + 8, 1 << 60,
                 MAX_PHYS_ADDR - 8, MAX_PHYS_ADDR - 4, MAX_PHYS_ADDR - 1, MAX_PHYS_ADDR - 3):
        for size in (1, 2, 3, 4, 8, 16):
            try:
                expected = int.from_bytes(m.cpu_read(addr, size), "little")
            except ModelError:
                with pytest.raises(ModelError):
                    m.cpu_load(addr, size)
            else:
                assert m.cpu_load(addr, size) == expected
