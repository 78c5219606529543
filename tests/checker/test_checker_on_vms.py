"""The checker on the one machine builder: bare metal and VM platforms booted by
``simulation.machine.build``, a guest register write as one atomic VM exit, the host unit
carrying an assigned device's DMA, and the ``[platform]`` table through the schema."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from vtdsim.checker.boot import boot, build_model
from vtdsim.checker.scenario import Scenario, load, op
from vtdsim.checker.vtd_world import HOST, HOST_UNIT
from vtdsim.driver import steps as st
from vtdsim.errors import BadInput
from vtdsim.hardware.presets import get_preset

LITMUS = Path(__file__).resolve().parents[2] / "litmus"


def _scenario(kind: str | None = None, **table) -> Scenario:
    sc = Scenario("vm").device("dev1", 0x10).domain("dom", devices=("dev1",), pages=("buf",))
    sc.setup(op("map", domain="dom", iova=0x1000, page="buf"))
    sc.thread("T0", op("unmap", domain="dom", iova=0x1000))
    sc.dma_actor("dev1", 0x1000)
    return sc.on(kind, **table) if kind else sc


def test_bare_boots_through_the_builder_on_the_preset():
    sc = _scenario()
    system = boot(sc.validate())
    assert system.machine.platform == "bare" and system.machine.vmm is None
    assert system.platform is system.machine.guest.platform
    assert system.unit(0).caps == get_preset("qemu72-legacy")
    assert system.unit(0).qi_mode == "async" and sc.queue_mode == "async"
    assert not system.assigned


@pytest.mark.parametrize(("kind", "assigned"), [("emulated", False), ("shadow", True)])
def test_a_vm_guest_runs_on_qemus_unit(kind, assigned):
    sc = _scenario(kind, vmm="qemu-7.2")
    system = boot(sc.validate())
    machine = system.machine
    assert system.unit(0) is machine.vmm.unit and sc.queue_mode == "sync"
    assert ("dev1" in system.assigned) is assigned
    dma_unit = system.endpoint("dev1").unit
    assert dma_unit is (machine.host.unit if assigned else machine.vmm.unit)


def test_an_assigned_device_is_shadowed_once_the_guest_mapped():
    system = boot(_scenario("shadow").validate())
    backend = system.machine.backends["00:02.0"]
    assert backend.vas.use_iommu  # the IOMMU region from the start: no 1:1 map of guest RAM
    assert sorted(backend.dma) == [0x1000] and backend.pinned_pages == 1
    assert system.endpoint("dev1").dma_read(0x1000, 8).hpa == system.pages["buf"]


def _iqt_write(world) -> st.MmioWrite:
    queue = world.system.unit(0).queue
    return st.MmioWrite(unit=0, offset=0x88, value=(queue.tail + queue.width) % queue.size)


def test_a_guest_register_write_on_a_vm_is_an_exit_touching_the_host():
    world = build_model(_scenario("shadow").validate()).new_world()
    fp = world.stepper.footprint(_iqt_write(world))
    assert HOST in fp.writes and ("tlb", HOST_UNIT, 1, 0x1000 >> 12) in fp.writes
    # QEMU reads the guest's tables fresh: the page-table root's lines, both views
    root = world.system.domains["dom"].pgtable.root
    assert {("mem", root), ("dram", root + 0xFC0)} <= fp.reads
    assert ("mem", world.system.pages["buf"]) not in fp.reads  # data pages aside


def test_a_bare_register_write_touches_no_host():
    world = build_model(_scenario().validate()).new_world()
    fp = world.stepper.footprint(_iqt_write(world))
    assert HOST not in fp.writes and HOST not in fp.reads


def test_a_host_walk_waits_on_the_exits():
    world = build_model(_scenario("shadow").validate()).new_world()
    assert HOST in world.walk("dev1", 0x1000).reads
    bare = build_model(_scenario("emulated").validate()).new_world()
    assert HOST not in bare.walk("dev1", 0x1000).reads


@pytest.mark.parametrize(("change", "message"), [
    (lambda sc: setattr(sc, "preset", "qemu72-legacy-cm"), "drop preset"),
    (lambda sc: setattr(sc, "qi", "async"), "qi is sync"),
    (lambda sc: sc.platform.update(vmm="qemu-10.0", kind="nested"),
     "does not bind a nested first stage"),
])
def test_the_python_api_goes_through_the_platform_rules(change, message):
    sc = _scenario("shadow")
    change(sc)
    with pytest.raises(BadInput, match=message):
        sc.validate()


def test_library_vm_scenarios_name_their_platform():
    names = sorted(p.stem for p in LITMUS.glob("issue11_*.toml"))
    kinds = {load(LITMUS / f"{n}.toml").platform_table().kind for n in names}
    assert kinds == {"emulated", "shadow", "nested"} and len(names) >= 12


@pytest.mark.parametrize("name", ["issue11_seed003_shadow_lazy",
                                  "issue11_seed000_flush_all_emulated_ats_linux61"])
def test_dpor_over_vm_exits_agrees_with_plain_dfs(name):
    """The exit's footprint is what DPOR's reduction rests on: every verdict and observation
    of the reduced search equals the exhaustive one's."""
    from vtdsim.checker.litmus import Options, run_scenario

    sc = load(LITMUS / f"{name}.toml")
    dpor, dfs = (run_scenario(sc, Options(strategy=s)) for s in ("dpor", "dfs"))
    assert not dpor.unexpected and not dfs.unexpected
    assert dpor.verdicts == dfs.verdicts


def test_a_counterexample_names_the_exits_work():
    """The chain of the shadow attach/map race shows the exit in which VFIO mapped."""
    from vtdsim.checker.vtd_world import exit_work

    assert exit_work(Counter({"vmm_vfio_unmap_dma": 2, "vmm_walks": 1})) == "exit: VFIO unmap x2"
    assert exit_work(Counter({"vmm_walks": 1})) == ""
    world = build_model(_scenario("shadow").validate()).new_world()
    chains = []
    while not world.threads["T0"].done:
        chains.append(world.step("T0").detail["chain"])
    assert [c for c in chains if "IQT" in c] == ["submit (IQT) [exit: VFIO unmap x1]"]
