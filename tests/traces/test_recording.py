"""Recording directories: dmesg facts, groups, workload output, streaming the TRACE section,
and the bad-input cases (missing files, malformed config, missing or truncated sections)."""

from __future__ import annotations

import gzip
import lzma
import tracemalloc
from pathlib import Path

import pytest

from vtdsim.errors import BadInput
from vtdsim.traces import events as ev
from vtdsim.traces.recording import IommuGroup, Recording

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
NAMES = ["legacy-cm-ats", "legacy-cm-default", "legacy-nocm-ats-lazy", "legacy-nocm-lazy",
         "legacy-nocm-strict", "sm-nocm-lazy"]
# name: (cap, ecap, printed policy, batching disallowed, scalable mode, group type)
DMESG = {
    "legacy-cm-ats": (0xd2008c22260286, 0xf00f4e, "lazy", True, False, "DMA"),
    "legacy-cm-default": (0xd2008c22260286, 0xf00f4a, "lazy", True, False, "DMA"),
    "legacy-nocm-ats-lazy": (0xd2008c22260206, 0xf00f4e, "lazy", False, False, "DMA-FQ"),
    "legacy-nocm-lazy": (0xd2008c22260206, 0xf00f4a, "lazy", False, False, "DMA-FQ"),
    "legacy-nocm-strict": (0xd2008c22260206, 0xf00f4a, "strict", False, False, "DMA"),
    "sm-nocm-lazy": (0xd2008c22260206, 0x480080f00f4a, "lazy", False, True, "DMA-FQ"),
}


def recording(name: str) -> Recording:
    if not (TRACES / name).is_dir():
        pytest.skip(f"recording {name} not present under {TRACES}")
    return Recording(TRACES / name)


@pytest.mark.parametrize("name", NAMES)
def test_dmesg_facts(name):
    rec = recording(name)
    info = rec.dmesg()
    cap, ecap, policy, no_batching, scalable, group_type = DMESG[name]
    assert (info.cap, info.ecap, info.iommu) == (cap, ecap, "dmar0")
    assert info.units[0].reg_base == 0xfed90000 and info.units[0].version == (1, 0)
    assert (info.dma_policy, info.batching_disallowed) == (policy, no_batching)
    assert info.effective_policy == ("strict" if no_batching else policy)
    assert info.scalable_mode is scalable
    assert info.queued_invalidation and info.interrupt_remapping
    assert info.default_domain == "Translated"
    assert rec.name == name


@pytest.mark.parametrize("name", NAMES)
def test_groups_match_the_dmesg_adding_order(name):
    info = recording(name).dmesg()
    assert info.groups[4] == IommuGroup(4, DMESG[name][5],
                                        ("0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"))
    from_groups = [(device, g.group) for g in info.groups for device in g.devices]
    assert from_groups == list(info.group_adds)
    ats = "ats" in name  # the virtio-blk device sits behind a root port, in its own group
    assert (info.groups[-1] == IommuGroup(5, DMESG[name][5], ("0000:01:00.0",))) is ats


@pytest.mark.parametrize("name", NAMES)
def test_workload_output(name):
    assert recording(name).workload_output.splitlines() == [
        "512+0 records in", "512+0 records out", "256+0 records in", "256+0 records out",
        "2048+0 records in", "2048+0 records out", "64+0 records in", "64+0 records out"]


def test_trace_lines_are_numbered_in_the_guest_log():
    rec = recording("legacy-cm-ats")
    first = next(iter(rec.guest_events()))
    assert first == ev.QiSubmit(63, "init", 1, 0, 2_061_715, ev.TASK, True,
                                "iec_inv", "dmar0", 0x300000014, 0, 0, 0)


def peak_memory(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_the_trace_is_streamed_in_constant_memory():
    rec = recording("legacy-nocm-ats-lazy")  # 12 MB of text, 95k events

    def decompress_only():
        with lzma.open(rec.guest_log, "rb") as stream:
            while stream.read(1 << 20):
                pass

    def count():
        assert sum(1 for _ in rec.guest_events()) == 47184 + 500 + 47180

    # xz's own dictionary (64 MiB at preset 9) is the baseline; parsing may add little.
    assert peak_memory(count) < peak_memory(decompress_only) + 6_000_000


# --- synthetic recordings -------------------------------------------------------------------

GUEST_LOG = """=== DMESG
[    0.354970] DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap d2008c22260206 ecap f00f4a
[    1.266407] iommu: Default domain type: Translated 
[    1.266407] iommu: DMA domain TLB invalidation policy: strict mode (set via kernel command line)
[    1.480916] DMAR: dmar0: Using Queued invalidation
[    1.483788] pci 0000:00:00.0: Adding to iommu group 0
=== GROUPS
/sys/kernel/iommu_groups/0 DMA 0000:00:00.0
=== WORKLOAD
done
=== TRACE
# tracer: nop
          insmod-116     [000] .....     2.576212: map: IOMMU: iova=0x00000000ffffe000 - 0x0000000100000000 paddr=0x0000000005cf6000 size=8192
=== END
"""  # noqa: E501, W291 - a recorded log, trailing space included


TINY_CONFIG = ('name = "tiny"\nqemu_iommu_device = "intel-iommu,intremap=on"\n'
               'kernel_cmdline = "intel_iommu=on"\nqemu_device_args = ""\nworkload = "true"\n')


def make(tmp_path: Path, guest: str = GUEST_LOG, config: str = TINY_CONFIG,
         opener=open, suffix: str = "") -> Path:
    with opener(tmp_path / f"guest.log{suffix}", "wt") as stream:
        stream.write(guest)
    with opener(tmp_path / f"qemu.log{suffix}", "wt") as stream:
        stream.write("vtd_inv_qi_tail write tail 2\n")
    (tmp_path / "config.toml").write_text(config)
    return tmp_path


@pytest.mark.parametrize(("opener", "suffix"), [(open, ""), (gzip.open, ".gz"),
                                                (lzma.open, ".xz")])
def test_synthetic_recording_any_compression(tmp_path, opener, suffix):
    rec = Recording(make(tmp_path, opener=opener, suffix=suffix))
    assert rec.name == "tiny" and rec.config["kernel_cmdline"] == "intel_iommu=on"
    info = rec.dmesg()
    assert (info.dma_policy, info.scalable_mode, info.groups) == (
        "strict", False, (IommuGroup(0, "DMA", ("0000:00:00.0",)),))
    assert [type(e) for e in rec.guest_events()] == [ev.Map]
    assert list(rec.qemu_events()) == [ev.QemuQiTail(1, 2)]
    assert rec.workload_output == "done\n"


@pytest.mark.parametrize("missing", ["guest.log", "qemu.log", "config.toml"])
def test_missing_file_names_the_path(tmp_path, missing):
    path = make(tmp_path)
    (path / missing).unlink()
    rec = Recording(path)
    use = {"guest.log": rec.dmesg, "qemu.log": lambda: list(rec.qemu_events()),
           "config.toml": lambda: rec.config}[missing]
    with pytest.raises(BadInput, match=f"{path / missing}: missing file"):
        use()


def test_not_a_directory(tmp_path):
    with pytest.raises(BadInput, match="not a recording directory"):
        Recording(tmp_path / "absent")


def test_malformed_config_points_at_its_line(tmp_path):
    rec = Recording(make(tmp_path, config='name = "x"\nworkload = \n'))
    with pytest.raises(BadInput, match=r"config\.toml:2: TOML: Invalid value"):
        _ = rec.config


def test_missing_trace_section(tmp_path):
    rec = Recording(make(tmp_path, guest=GUEST_LOG.split("=== TRACE")[0]))
    with pytest.raises(BadInput, match="no '=== TRACE' section"):
        list(rec.guest_events())


def test_truncated_trace_section(tmp_path):
    rec = Recording(make(tmp_path, guest=GUEST_LOG.replace("=== END\n", "")))
    events = rec.guest_events()
    assert isinstance(next(events), ev.Map)
    with pytest.raises(BadInput, match=r"guest\.log:13: the file ends inside '=== TRACE'"):
        next(events)


def test_bad_trace_line_reports_the_guest_log_line(tmp_path):
    rec = Recording(make(tmp_path, guest=GUEST_LOG.replace("# tracer: nop", "garbage")))
    with pytest.raises(BadInput, match=r"guest\.log:12: not an ftrace line"):
        list(rec.guest_events())


def test_dmesg_without_a_unit_line(tmp_path):
    guest = "\n".join(line for line in GUEST_LOG.splitlines() if "reg_base_addr" not in line)
    with pytest.raises(BadInput, match="no DMAR unit line"):
        Recording(make(tmp_path, guest=guest + "\n")).dmesg()


def test_bad_group_line(tmp_path):
    guest = GUEST_LOG.replace("/sys/kernel/iommu_groups/0 DMA", "/sys/kernel/iommu_groups/x DMA")
    with pytest.raises(BadInput, match=r"guest\.log:8: expected '/sys/kernel/iommu_groups/"):
        Recording(make(tmp_path, guest=guest)).dmesg()


@pytest.mark.parametrize(("first", "kernel", "qemu"), [
    ("# Linux 6.1 (Debian 6.1.0-56-amd64, 6.1.192) guest under QEMU 7.2 (Debian 1:7.2), TCG",
     "6.1", "7.2"),
    ("# Linux 6.12.95+deb12-amd64 guest under QEMU emulator version 10.0.2 (Debian), TCG",
     "6.12", "10.0"),
])
def test_config_first_line_names_kernel_and_qemu(tmp_path, first, kernel, qemu):
    rec = Recording(make(tmp_path, config=first + '\nname = "tiny"\n'))
    assert rec.versions[:2] == (kernel, qemu)


def test_config_without_versions_is_one_line_error(tmp_path):
    rec = Recording(make(tmp_path))
    with pytest.raises(BadInput, match=r"config.toml:1: first line does not name the kernel"):
        _ = rec.versions
