"""From a litmus ``Scenario`` to a checker model: boot the platform through the one machine
builder (``simulation.machine.build``: bare metal, or a guest on QEMU's emulated unit with the
host behind it) and the driver as Linux does (intel_iommu_init: init_hw, probe, default
domains, attach), run the set-up operations directly, and list the actors with the scenario's
bounds.

The operation vocabulary (``OP_FACTORIES``) maps each scenario op to the driver generator it
runs; the direct run of the set-up and the checker's threads use the same factories.  Mutations
are op options: ``sync = false`` (map without ``iotlb_sync_map``, unmap without
``iotlb_sync``) and ``skip`` (step kinds never applied; ``"qi_wait"`` makes ``qi_submit_sync``
return without waiting for its wait descriptor).

Not modelled: several guest units, hot-plug, devices outside the scenario, the IOVA an op
returns other than through the deterministic allocator (scenarios name the IOVA they expect),
vhost devices (no DMA actor issues through vhost's IOTLB).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from vtdsim.checker import actors as ac
from vtdsim.checker import device_ops
from vtdsim.checker.lifecycle import MOVING_OPS
from vtdsim.checker.scenario import Op, Scenario
from vtdsim.checker.vtd_world import System, Universe, VtdModel
from vtdsim.driver import steps as st
from vtdsim.errors import BadInput

IOMMU_READ, IOMMU_WRITE = 1, 2
_PROT = {"r": IOMMU_READ, "w": IOMMU_WRITE, "rw": IOMMU_READ | IOMMU_WRITE}


# -- the operations -----------------------------------------------------------------------------
def _map(system: System, op: Op):
    from vtdsim.driver import iommu_core

    domain, paddr = system.domains[op["domain"]], system.pages[op["page"]]
    system.iova_pages[(op["domain"], op["iova"] & ~0xFFF)] = paddr
    prot = _PROT[op["prot"]]
    if op["sync"]:
        return (yield from system.driver.map(domain, op["iova"], paddr, op["size"], prot))
    mapper = getattr(iommu_core, "__iommu_map")  # the map without iotlb_sync_map (mutation)
    return (yield from mapper(system.driver, domain, op["iova"], paddr, op["size"], prot))


def _unmap(system: System, op: Op):
    from vtdsim.driver import iommu_core

    domain = system.domains[op["domain"]]
    if op["sync"]:
        return (yield from system.driver.unmap(domain, op["iova"], op["size"]))
    gather = iommu_core.IommuIotlbGather()
    return (yield from iommu_core.iommu_unmap_fast(system.driver, domain, op["iova"],
                                                   op["size"], gather))


def _dma_map(system: System, op: Op):
    from vtdsim.driver import dma_api

    paddr = system.pages[op["page"]]
    iova = yield from dma_api.iommu_dma_map_page(system.cookies[op["domain"]], paddr,
                                                 op["size"], _PROT[op["prot"]], op["cpu"])
    system.iova_pages[(op["domain"], iova & ~0xFFF)] = paddr
    return iova


def _dma_unmap(system: System, op: Op):
    from vtdsim.driver import dma_api

    yield from dma_api.iommu_dma_unmap_page(system.cookies[op["domain"]], op["iova"],
                                            op["size"], op["cpu"], system.platform.now_ns)


def _fq_timer(system: System, op: Op):
    fq = system.cookies[op["domain"]].fq
    if fq is None:
        raise BadInput(f"fq_timer: domain {op['domain']!r} has no flush queue (strict)")
    yield from fq.fq_flush_timeout(system.platform.now_ns)


def _attach(system: System, op: Op):
    """``part``: "all"; "prepare" (block the old domain, DID, device list: nothing the
    hardware sees, so a set-up may run it when the racing ops do not read the DID or the device
    list - mainline's map flushes by cache tag); "program" (the rest, after a "prepare")."""
    info, domain = system.devices[op["device"]], system.domains[op["domain"]]
    driver, part = system.driver, op.args.get("part", "all")
    if part == "prepare":
        return (yield from driver.attach_dev_prepare(domain, info))
    if part == "program":
        ret = yield from driver.dmar_domain_attach_device(domain, info)
    else:
        ret = yield from driver.attach_dev(domain, info)
    system.members[op["device"]] = op["domain"]
    if op["device"] not in system.assigned:  # an assigned function's ATS is the host's
        system.endpoint(op["device"]).ats = bool(info.ats_enabled)  # PCI ATS Control.Enable
    return ret


def _set_dev_pasid(system: System, op: Op):
    old = system.domains.get(op["old"]) if op["old"] else None
    ret = yield from system.driver.set_dev_pasid(system.domains[op["domain"]],
                                                 system.devices[op["device"]], op["pasid"], old)
    if ret == 0:
        system.pasid_members[(op["device"], op["pasid"])] = op["domain"]
    return ret


def _remove_dev_pasid(system: System, op: Op):
    # The PASID leaves its domain when the detach begins: DMA from then on may fault.
    system.pasid_members.pop((op["device"], op["pasid"]), None)
    return (yield from system.driver.remove_dev_pasid(system.devices[op["device"]],
                                                      op["pasid"]))


def _context_flip_pri(system: System, op: Op):
    from vtdsim.driver.context import context_flip_pri

    return context_flip_pri(system.devices[op["device"]], op["enable"], system.driver.profile)


def _one(step_of):
    def factory(system: System, op: Op):
        return (yield step_of(system, op))
    return factory


def _page_addr(system: System, op: Op) -> int:
    return system.pages[op["page"]] + op.args.get("offset", 0)


def _group_mutex(factory):
    """The IOMMU core moves a device between domains under its group's ``group->mutex``
    (``iommu_attach_device``, ``iommu_detach_device``, ``iommu_attach_device_pasid``,
    ``iommu_detach_device_pasid``, ``__iommu_group_set_domain`` for the blocking domain,
    ``__iommu_group_remove_device`` at release), so two such ops on one device never overlap.
    (6.1 calls ``release_device`` outside the mutex, but a device is removed once and not
    attached while being removed - device-core lifetime rules - so the same lock stands in.)
    An attach split in parts is one attach: "prepare" takes the mutex, "program" drops it."""
    def run(system: System, op: Op):
        name, part = f"group->mutex {op['device']}", op.args.get("part", "all")
        if part != "program":
            yield st.Lock(name=name, why="iommu core: group->mutex")
        ret = yield from factory(system, op)
        if part != "prepare":
            yield st.Unlock(name=name, why="iommu core: group->mutex")
        return ret
    return run


OP_FACTORIES = {
    "map": _map,
    "unmap": _unmap,
    "dma_map": _dma_map,
    "dma_unmap": _dma_unmap,
    "fq_timer": _fq_timer,
    "attach": _attach,
    "set_dev_pasid": _set_dev_pasid,
    "flush_iotlb_all": lambda s, o: s.driver.flush_iotlb_all(s.domains[o["domain"]]),
    "remove_dev_pasid": _remove_dev_pasid,
    "enforce_cache_coherency": lambda s, o: s.driver.enforce_cache_coherency(
        s.domains[o["domain"]]),
    # Seed 001: a present -> present scalable-mode context change (v6.11 context_flip_pri).
    "context_flip_pri": lambda s, o: _context_flip_pri(s, o),
    "free": _one(lambda s, o: st.FreePage(addr=s.pages[o["page"]], what="data page",
                                          why="caller frees its buffer")),
    "cpu_write": _one(lambda s, o: st.CpuWrite(addr=_page_addr(s, o), value=o["value"],
                                               why="CPU")),
    "cpu_read": _one(lambda s, o: st.CpuRead(addr=_page_addr(s, o), why="CPU")),
    "clflush": _one(lambda s, o: st.Clflush(addr=_page_addr(s, o), why="CPU")),
    "cpu_zero": _one(lambda s, o: st.CpuZero(addr=_page_addr(s, o), size=o["size"],
                                             why="CPU")),
    "wbinvd": _one(lambda s, o: st.Wbinvd(why="CPU")),
    # Pages and devices changing hands (device_ops.py).
    "alloc": device_ops.alloc,
    "detach": device_ops.detach,
    # mainline's detach is the blocking domain's attach
    "attach_blocking": device_ops.detach,
    "release": device_ops.release,
    "ats_disable": device_ops.ats_disable,
}
# The ops that move a device (the page ledger's MOVING_OPS) run under its group->mutex.
OP_FACTORIES.update({kind: _group_mutex(OP_FACTORIES[kind]) for kind in MOVING_OPS})


def factory_for(op: Op):
    """``system -> generator`` for one op (the checker calls it on each world's copy)."""
    run = OP_FACTORIES[op.kind]
    return lambda system: run(system, op)


# -- booting ------------------------------------------------------------------------------------
def boot(sc: Scenario) -> System:
    """The machine from the one builder (``simulation.machine.build``: bare metal with unit 0
    in the scenario's queue mode, or a guest on QEMU's emulated unit with the host behind it),
    the scenario's devices probed and wired as the platform does, domains, attach, data pages,
    then the set-up ops - all run directly."""
    from vtdsim.driver.profiles import get_profile

    profile = _profile(get_profile(sc.profile), sc)
    built = _machine(sc, profile)
    guest = built.guest
    # The builder's submission logs serve replay; a checker world would carry them in every
    # copy.
    for side in (guest, built.host):
        if side is not None:
            side.executor.listeners.remove(side._on_annotate)
    system = System(guest.platform, guest.executor, driver=guest.driver, machine=built)
    for d in sc.devices:
        _device(system, d)
    _domains(system, sc, guest.iommu, guest.unit.caps, profile)
    for i, op in enumerate(sc.setup_ops):
        system.setup_ops.append(f"set-up {op.describe()}")
        system.setup_current = i
        _run_op(system, op)
    system.setup_current = None
    for f in sc.warm:
        # The initial state's caches: translations the device used before the threads start.
        system.endpoint(f.device).dma_read(f.iova, 8, f.pasid)
    return system


def _machine(sc: Scenario, profile):
    from vtdsim.simulation import machine

    plat = sc.platform_table()
    if plat.kind == "bare":
        built = machine.build("bare", profile=profile, unit=sc.unit_preset,
                              qi_mode=sc.queue_mode)
        built.guest.platform.wbinvd_works = bool(sc.switches.get("wbinvd_works", True))
        return built
    # On a VM, KVM decides whether WBINVD works (virtualization.kvm), and the guest's queue
    # is QEMU's: processed inside the exit of the IQT write (sync).
    return machine.build(plat.kind, profile=profile, vmm=plat.vmm,
                         device_iotlb=plat.device_iotlb, host_unit=plat.host_unit,
                         host_profile=plat.host_profile)


def _device(system: System, d) -> None:
    """Probe one scenario device and wire it (``Machine.device``); its endpoint is the one
    whose DMA the actors issue: the host's for an assigned device."""
    from vtdsim.hardware.request import format_sid

    built, key = system.machine, format_sid(d.sid)
    # ats_qdep 0: the descriptors the checker has always shown (the field is carried for
    # MIP only, devices.endpoint)
    system.devices[d.name] = built.device(key, ats=d.ats, kind=d.backend, ats_qdep=0,
                                          pasid=d.pasid)
    endpoint = built.dma_endpoint(key)
    if built.assigned(key):
        # The host owns the physical function's ATS (its driver enabled it at VFIO's attach).
        system.assigned.add(d.name)
        endpoint.ats = bool(built.host.devices[key].ats_enabled)
    else:
        endpoint.ats = False  # PCI ATS Control.Enable: set when the guest attaches (_attach)
    system.endpoints[d.name] = endpoint


def _profile(profile, sc: Scenario):
    switches = {k: v for k, v in sc.switches.items() if k != "wbinvd_works"}
    try:
        return profile.with_(**switches) if switches else profile
    except (TypeError, BadInput) as err:
        raise BadInput(f"switches: {err}", sc.where()) from None


def _domains(system: System, sc: Scenario, iommu, caps, profile) -> None:
    from vtdsim.driver import iommu_core

    policy = iommu_core.iommu_subsys_init("lazy" if sc.policy in ("lazy", "auto") else "strict")
    iommu_core.intel_iommu_caching_mode_policy(policy, [caps], profile)
    for dom in sc.domains:
        kind = policy.def_domain_type if dom.type == "dma" else dom.type
        domain = _run(system, system.driver.domain_alloc_paging(iommu, kind, dom.stage),
                      Op("domain_alloc_paging", {"domain": dom.name}))
        system.domains[dom.name] = domain
        if domain.pgtable is not None:
            system.ledger.name_root(dom.name, domain.pgtable.root, domain.pgtable.levels)
        for page in dom.pages:
            system.pages[page] = system.platform.pages.alloc()
            system.ledger.name_data(page, system.pages[page], fresh=True)
        for dev in dom.devices:
            _run_op(system, Op("attach", {"domain": dom.name, "device": dev}))
        if kind in ("dma", "dma_fq") and _uses_dma_api(sc, dom.name):
            system.cookies[dom.name] = _cookie(system, domain)


def _uses_dma_api(sc: Scenario, domain: str) -> bool:
    ops = [o for group in (sc.setup_ops, *sc.threads.values()) for o in group]
    return any(o.kind in ("dma_map", "dma_unmap", "fq_timer") and o["domain"] == domain
               for o in ops)


def _cookie(system: System, domain):
    from vtdsim.driver.dma_api import IommuDmaCookie
    from vtdsim.driver.iova import IovaDomain

    return IommuDmaCookie(system.driver, domain, IovaDomain(), ncpus=system.platform.ncpus)


def _run_op(system: System, op: Op) -> Any:
    """One set-up op, run directly; the ledger sees its begin, every step and its end, as
    the monitor does for a thread's op."""
    system.ledger.op_begin(op, system)
    gen = _skipping(system, op, OP_FACTORIES[op.kind](system, op))
    value = _run(system, gen, op)
    system.ledger.op_done(op, value, system)
    return value


def _run(system: System, gen: Generator, op: Op | None = None) -> Any:
    return system.executor.run(_observed(system, gen, op))


def _observed(system: System, gen: Generator, op: Op | None) -> Generator:
    """Pass ``gen``'s steps through, showing each applied one to the page ledger; a set-up
    op's stores are noted as its (``System.note_setup_store``)."""
    ledger, memory = system.ledger, system.platform.memory
    reply = None
    try:
        while True:
            step = gen.send(reply)
            reply = yield step
            ledger.step(step, reply, op, memory)
            if system.setup_current is not None:
                system.note_setup_store(step, system.setup_current)
    except StopIteration as stop:
        return stop.value


def _skipping(system: System, op: Op, gen: Generator) -> Generator:
    """A direct run of a mutated op: its skipped steps are answered without applying them."""
    if not op.skip:
        return gen
    return _filter(gen, op.skip)


def _filter(gen: Generator, skip: tuple[str, ...]) -> Generator:
    reply = None
    try:
        while True:
            step = gen.send(reply)
            if ac.skipped(step, skip):
                reply = ac.skip_reply(step)
                continue
            reply = yield step
    except StopIteration as stop:
        return stop.value


# -- the model ----------------------------------------------------------------------------------
def build_model(sc: Scenario, assertions: list | None = None) -> VtdModel:
    """Check the scenario against the file schema (one built or changed through the Python
    API too), boot once, then describe the actors over the booted template."""
    sc.validate()
    system = boot(sc)
    threads = [ac.Thread(name, [(o.describe(), factory_for(o), o) for o in ops],
                         sc.gates.get(name, ()))
               for name, ops in sc.threads.items()]
    hardware = _hardware_actors(sc)
    universe = Universe({d.name: d.sid for d in sc.devices},
                        {d.name for d in sc.devices if system.endpoint(d.name).ats},
                        sc.iovas(), frozenset(system.assigned))
    return VtdModel(sc.name, system, threads, hardware, universe, bounds(sc),
                    list(assertions or []), describe=repr(sc))


def _hardware_actors(sc: Scenario) -> list:
    found: list = []
    if sc.queue_mode == "async":
        found.append(ac.QueueEngine("hw:qi", 0))
    for f in sc.fills:
        for cache in f.caches:
            name = f"hw:fill {cache} {f.device}@{f.iova:#x}{_tag(f)}"
            found.append(ac.CacheFill(name, f.times, f.device, f.iova, cache, f.pasid,
                                      f.negative))
    for f in sc.evictions:
        for cache in f.caches:
            name = f"hw:evict {cache} {f.device}@{f.iova:#x}{_tag(f)}"
            found.append(ac.CacheEvict(name, f.times, f.device, f.iova, cache, f.pasid))
    for f in sc.torn_fills:
        for cache in f.caches:
            name = f"hw:torn-fill {cache} {f.device}@{f.iova:#x}{_tag(f)} ({f.first} first)"
            found.append(ac.TornFill(name, f.times, f.device, f.iova, cache, f.pasid, f.first))
    for f in sc.ats_prefetch:
        found.append(ac.AtsPrefetch(f"{f.device}:ats@{f.iova:#x}{_tag(f)}", f.times, f.device,
                                    f.iova, f.pasid))
    for f in sc.dma:
        kind = "w" if f.access == "write" else "r"
        name = f"{f.device}:dma {kind}@{f.iova:#x}{_tag(f)}"
        found.append(ac.Dma(name, f.times, f.device, f.iova, f.access == "write", f.no_snoop,
                            f.pasid, f.after_thread, f.expect_fault))
    return found


def _tag(f) -> str:
    """Actor-name suffix of a request with a PASID (names without one are unchanged, so saved
    schedules keep replaying)."""
    return "" if f.pasid is None else f" pasid={f.pasid:#x}"


def bounds(sc: Scenario) -> dict:
    """The explicit bounds the report prints (the warm-up DMA only when there is one, so the
    fingerprints of saved schedules without it stay valid)."""
    warm = {"warm": len(sc.warm)} if sc.warm else {}
    torn = {"torn_fills": sum(f.times * len(f.caches) for f in sc.torn_fills)} \
        if sc.torn_fills else {}
    return {
        **warm,
        **torn,
        "threads": len(sc.threads),
        "ops": sum(len(o) for o in sc.threads.values()),
        "iovas": ",".join(f"{i:#x}" for i in sc.iovas()),
        "devices": ",".join(d.name for d in sc.devices),
        "fills": sum(f.times * len(f.caches) for f in sc.fills),
        "evictions": sum(f.times * len(f.caches) for f in sc.evictions),
        "ats_prefetches": sum(f.times for f in sc.ats_prefetch),
        "dma": sum(f.times for f in sc.dma),
        "qi": sc.queue_mode,
        **_platform_bounds(sc),
    }


def _platform_bounds(sc: Scenario) -> dict:
    """A VM platform in the report's bounds (none on bare metal: saved schedules' fingerprints
    stay valid)."""
    plat = sc.platform_table()
    if plat.kind == "bare":
        return {}
    return {"platform": f"{plat.kind} {plat.vmm}"}
