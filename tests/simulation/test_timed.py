"""The timed engine and workloads: time is charged from the constants, locks contend, the
unit's queue takes hardware time, and results are deterministic for a seed."""

import json

import pytest
from click.testing import CliRunner

from vtdsim.cli.main import _register, cli
from vtdsim.simulation import constants, platforms
from vtdsim.simulation.platforms import ExitPlatform, register_platform
from vtdsim.simulation.run import Mode, make_params, simulate
from vtdsim.simulation.workloads.common import DmaWorld

TABLE = constants.load()


def _run(workload, ios=400, table=TABLE, params=None, **mode):
    return simulate(workload, Mode(ios=ios, **mode), make_params(workload, **(params or {})),
                    table)


def _without_timing(result):
    return {k: v for k, v in result.items() if k != "timing"}


def test_same_seed_same_result_apart_from_timing():
    a = _run("dma-window", seed=3, params={"window": 16 << 20})
    b = _run("dma-window", seed=3, params={"window": 16 << 20})
    c = _run("dma-window", seed=4, params={"window": 16 << 20})
    assert json.dumps(_without_timing(a)) == json.dumps(_without_timing(b))
    assert _without_timing(a) != _without_timing(c)


def test_strict_unmap_waits_for_the_hardware(tmp_path):
    """A strict unmap's time grows with the unit's per-descriptor time (two descriptors:
    IOTLB invalidation + wait)."""
    slow = tmp_path / "slow.toml"
    slow.write_text("qi_descriptor_ns = 1325\n")
    base = _run("nvme", policy="strict")
    slower = _run("nvme", policy="strict", table=constants.load(slow))
    assert slower["descriptors_per_io"] == base["descriptors_per_io"] == 2.0
    assert slower["unmap_ns"] - base["unmap_ns"] == pytest.approx(2 * 1000, abs=1)


MAP = {"rx_buffers": "map"}  # a fresh dma_map per receive buffer: one unmap per packet


def test_lazy_batches_invalidations_and_off_translates_nothing():
    strict = _run("nic-rx", policy="strict", params=MAP)
    lazy = _run("nic-rx", policy="lazy", params=MAP)
    off = _run("nic-rx", policy="off", params=MAP)
    assert strict["iqt_writes_per_io"] == 1.0
    assert lazy["iqt_writes_per_io"] < 0.05
    assert lazy["unmap_ns"] < strict["unmap_ns"]
    assert off["translation_reads_per_4k"] == 0 and off["map_ns"] == 0
    assert strict["iotlb_misses_per_4k"] > 0 and strict["dma_latency_penalty_ns"] > 0
    assert off["cpu_ns_per_io"] < lazy["cpu_ns_per_io"] < strict["cpu_ns_per_io"]


def test_window_beyond_the_iotlb_pays_walks_and_2m_pages_recover():
    """Random reads over 32 MiB: 8192 4 KiB pages overflow the 64-entry IOTLB, 16 2 MiB
    pages do not."""
    small = _run("dma-window", ios=2000, params={"window": 128 << 10})
    big = _run("dma-window", ios=2000, params={"window": 32 << 20})
    huge = _run("dma-window", ios=2000, params={"window": 32 << 20}, iova_pages="2m")
    assert big["iotlb_miss_rate"] > 0.5
    assert small["iotlb_miss_rate"] < 0.3 and huge["iotlb_miss_rate"] < 0.05
    # Per 4 KiB of data: 64 reads of 64 bytes each.
    assert big["iotlb_misses_per_4k"] == pytest.approx(64 * big["iotlb_miss_rate"], rel=0.02)
    assert huge["dma_latency_penalty_ns"] < big["dma_latency_penalty_ns"]
    assert sum(big["pscache_misses_per_4k"].values()) >= 0


def test_lock_contention_is_timed():
    world = DmaWorld(Mode(ios=1), TABLE, 2)
    machine, env, order = world.machine, world.env, []

    def holder(name, ns):
        yield from machine.hold("a.lock", ns)
        order.append((name, env.now))

    env.process(holder("first", 1000))
    env.process(holder("second", 10))
    env.run()
    assert [name for name, _ in order] == ["first", "second"]
    assert machine.lock_wait_ns["a.lock"] >= 1000


def test_nvme_reports_iops_and_latency_above_the_device():
    one = _run("nvme", params={"jobs": 1, "qd": 4})
    assert one["iops"] > 0 and one["latency_ns_p50"] > TABLE["nvme_read_latency_ns"]


@pytest.mark.parametrize("args, words", [
    (["nic-rx", "--platform", "nested", "--ring", "70000"], "smaller --ring"),
    (["nic-rx", "--platform", "nested", "--unit", "qemu72-legacy"], "ECAP.NEST"),
    (["nic-rx", "--exits", "sidecore"], "bare metal takes no VM exits"),
    (["nvme", "--bs", "100"], "--bs 100"),
    (["dma-window", "--duration", "soon"], "--duration"),
    (["dma-window", "--iova-pages", "2m", "--window", "4096"], "2 MiB"),
    (["nic-rx", "--pool-size", "-1"], "--pool-size"),
    (["nic-rx", "--iova-pages", "2m"], "--rx-buffers map"),
    (["nic-rx", "--mtu", "40"], "--mtu 40"),
])
def test_bad_modes_are_one_line_errors(args, words):
    _register()
    out = CliRunner().invoke(cli, ["simulate", *args, "--ios", "10"])
    assert out.exit_code == 2 and words in out.output and "Traceback" not in out.output


def test_cli_json_csv_plot(tmp_path):
    _register()
    runner = CliRunner()
    out = runner.invoke(cli, ["simulate", "nic-tx", "--ios", "200", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    for key in ("gbps", "iotlb_misses_per_4k", "pscache_misses_per_4k", "exits_per_io",
                "descriptors_per_io", "map_ns", "unmap_ns", "cpu_ns_per_io", "latency_ns_p50",
                "latency_ns_p99", "dma_latency_penalty_ns", "cpu_ghz",
                "translation_reads_per_4k"):
        assert key in result
    out = runner.invoke(cli, ["simulate", "nvme", "--ios", "50", "--csv", "--plot",
                              str(tmp_path / "p.svg")])
    assert out.exit_code == 0 and out.output.startswith("workload,")
    first = (tmp_path / "p.svg").read_text()
    assert first.lstrip().startswith("<?xml")
    runner.invoke(cli, ["simulate", "nvme", "--ios", "50", "--csv", "--plot",
                        str(tmp_path / "p.svg")])
    assert (tmp_path / "p.svg").read_text() == first  # one seed, one plot
    out = runner.invoke(cli, ["constants"])
    assert out.exit_code == 0 and "qi_descriptor_ns" in out.output


class _PricedExits(ExitPlatform):
    """The vIOMMU hook as the virtualization layer uses it: every IQT write an exit, the
    VMM's work priced per counted event (here the unit's own IOTLB invalidations)."""

    name = "hook-test"
    # The domain is first-stage on server-sm: mainline flushes it with PASID-based IOTLB
    # invalidations (p_iotlb_inv); second-stage domains use iotlb_inv.
    work_ns = {"desc:iotlb_inv": "vfio_call_ns", "desc:p_iotlb_inv": "vfio_call_ns"}


@pytest.fixture
def hook_platform():
    register_platform("hook-test", _PricedExits)
    yield "hook-test"
    platforms._REGISTRY.pop("hook-test")


def test_exit_platform_charges_each_iqt_write_as_an_exit(hook_platform):
    bare = _run("nvme", policy="strict")
    trap = _run("nvme", policy="strict", platform=hook_platform)
    side = _run("nvme", policy="strict", platform=hook_platform, exits="sidecore")
    exit_ns = TABLE.ns("vmexit_user_cycles") + TABLE["vfio_call_ns"]
    assert trap["exits_per_io"] == trap["iqt_writes_per_io"] == 1.0
    assert side["exits_per_io"] == 0.0 and bare["exits_per_io"] == 0.0
    assert trap["unmap_ns"] >= exit_ns > bare["unmap_ns"]
    assert bare["unmap_ns"] < side["unmap_ns"] < trap["unmap_ns"]


def test_iotlb_size_is_a_constant(tmp_path):
    """The knee of the window curve moves with the IOTLB's size: 1 MiB of 4 KiB pages (256)
    fits 1024 entries; with the default 64, random reads miss about 1 - 64/256 of the time."""
    big = tmp_path / "big.toml"
    big.write_text("iotlb_entries = 1024\n")
    window = {"window": 1 << 20}
    big_tlb = _run("dma-window", ios=2000, params=window, table=constants.load(big))
    small_tlb = _run("dma-window", ios=2000, params=window)
    assert big_tlb["iotlb_miss_rate"] < 0.15
    assert small_tlb["iotlb_miss_rate"] == pytest.approx(0.75, abs=0.05)


def test_strict_flows_contend_on_the_flush_path():
    """Several flows unmapping at once: mainline holds domain->cache_lock across the flush
    (cache_tag_flush_range), 6.1 queues on qi->q_lock (qi_submit_sync); lazy scales."""
    one = _run("nic-rx", ios=1000, params={"flows": 1, "ring": 128, **MAP})
    four = _run("nic-rx", ios=2000, params={"flows": 4, "ring": 128, **MAP})
    old = _run("nic-rx", ios=2000, params={"flows": 4, "ring": 128, **MAP}, profile="linux-6.1")
    lazy = _run("nic-rx", ios=2000, params={"flows": 4, "ring": 128, **MAP}, policy="lazy")
    assert one["lock_wait_ns"] == {}
    assert four["lock_wait_ns"]["domain1.cache_lock"] > 0
    assert old["lock_wait_ns"]["qi0.q_lock"] > 0
    assert four["unmap_ns"] > 2 * one["unmap_ns"]
    assert lazy["gbps"] > 2 * four["gbps"]


def test_ats_device_adds_device_tlb_invalidations_and_translation_requests():
    """With ATS a strict unmap also invalidates the device-TLB (one more descriptor, the ATS
    round trip to the endpoint); a device-TLB miss is a Translation Request round trip."""
    plain = _run("nvme", policy="strict")
    ats = _run("nvme", policy="strict", ats=True)
    assert plain["ats"] is False and ats["ats"] is True
    assert ats["descriptors_per_io"] == plain["descriptors_per_io"] + 1
    extra = TABLE["ats_invalidation_ns"] + TABLE["qi_descriptor_ns"]
    assert ats["unmap_ns"] - plain["unmap_ns"] == pytest.approx(extra, abs=5)
    assert ats["dma_latency_penalty_ns"] >= TABLE["ats_translation_request_ns"]


def test_the_engine_counts_the_steps_it_applies_as_the_direct_executor_does():
    """``run_op`` dispatches charged steps itself (``DirectExecutor.dispatch``): a strict map
    and unmap count the same steps by kind as the same calls run straight through."""
    from vtdsim.driver.dma_api import iommu_dma_map_page, iommu_dma_unmap_page

    timed, direct = (DmaWorld(Mode(ios=1), TABLE, 2) for _ in range(2))
    for world in (timed, direct):
        world.system.executor.reset_steps()

    def ops():
        addr = yield from timed.machine.run_op(iommu_dma_map_page(timed.cookie, 1 << 32, 4096))
        yield from timed.machine.run_op(iommu_dma_unmap_page(timed.cookie, addr, 4096))

    timed.env.run(timed.env.process(ops()))
    addr = direct.system.run(iommu_dma_map_page(direct.cookie, 1 << 32, 4096))
    direct.system.run(iommu_dma_unmap_page(direct.cookie, addr, 4096))
    counted = timed.system.executor.steps
    assert counted == direct.system.executor.steps
    assert counted["CpuCmpxchg"] >= 1 and counted["MmioWrite"] >= 1 and counted["Lock"] >= 2
    # run_op hands annotations to the executor's listeners itself: the system heard the same
    assert counted["Annotate"] >= 3 and timed.system.events == direct.system.events
    assert timed.system.submitted == direct.system.submitted


def test_the_engine_counts_a_walks_reads_before_anything_else_can_look():
    """``run_op`` counts a run of ``CpuRead``s in one go before the next step (or once the
    op raised): a listener hearing each annotation, and the counts after an op that raises
    mid-walk, see what the direct executor's count-per-step shows."""
    from vtdsim.driver import steps as st

    class Broken(Exception):
        pass

    def op():
        for reads in (3, 1, 2):
            for i in range(reads):
                yield st.CpuRead(addr=0x5000 + 8 * i)
            yield st.Annotate(event="walked")
        yield st.CpuWrite(addr=0x5000, value=1)
        yield st.CpuRead(addr=0x5000, size=4)
        yield st.CpuRead(addr=0x5008)
        raise Broken

    heard = {}
    for name in ("timed", "direct"):
        world = DmaWorld(Mode(ios=1), TABLE, 2)
        executor = world.system.executor
        executor.reset_steps()
        seen = heard[name] = []
        executor.listeners.append(lambda step, e=executor, seen=seen: seen.append(e.steps))
        if name == "timed":
            world.env.process(world.machine.run_op(op()))
            with pytest.raises(Broken):
                world.env.run()
        else:
            with pytest.raises(Broken):
                world.system.run(op())
        seen.append(executor.steps)
    assert heard["timed"] == heard["direct"]
    assert [s["CpuRead"] for s in heard["timed"]] == [3, 4, 6, 8]


def test_a_poll_the_idle_unit_cannot_satisfy_is_a_model_error():
    """``run_op`` blocks a poll until the hardware satisfies it: with no hardware at work
    it can never complete."""
    from vtdsim.driver import steps as st
    from vtdsim.errors import ModelError

    world = DmaWorld(Mode(ios=1), TABLE, 2)

    def op():
        yield st.WaitQword(addr=0x5000, value=1)

    world.env.process(world.machine.run_op(op()))
    with pytest.raises(ModelError, match="the unit is idle"):
        world.env.run()
