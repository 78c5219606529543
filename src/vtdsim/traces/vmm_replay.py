"""Replay a recording with the guest on the VMM model (``vtdsim replay DIR --vmm``): the VMM
(virtualization.vmm) is built from the recording's QEMU version and ``-device intel-iommu``
properties, its CAP/ECAP must equal the words the guest printed, the model guest replays the
recorded calls on it (replay.py), and the VMM's trace events are compared with QEMU's
(vmm_compare.py): exits against queue-tail writes, each descriptor's decode, context-cache
and address-space-switch events.

QEMU creates an address space for every PCI device behind the unit when the machine starts;
the model creates one for each device of the recording's IOMMU groups before the guest boots.

Lazy recordings (a flush queue) are judged by the lazy rule (vmm_compare.py): equal up to a
flush-timing boundary, exits within 5%.

Not modelled: other QEMU versions than 7.x and 10.x, the recording's device DMA
(``vtd_dmar_translate``).
"""

from __future__ import annotations

from pathlib import Path

from vtdsim.errors import BadInput
from vtdsim.hardware.request import parse_sid
from vtdsim.simulation.machine import vm_half
from vtdsim.traces.recording import Recording
from vtdsim.traces.replay import Replayer, Result, read_setup, recording_profile
from vtdsim.traces.vmm_compare import VmmComparison, compare_items, recorded_items
from vtdsim.traces.workers import prefetched
from vtdsim.virtualization import qemu
from vtdsim.virtualization.backends import VfioShadow, host_name
from vtdsim.virtualization.vmm import Vmm

_VMM_OF_QEMU = {"7.2": "qemu-7.2", "10.0": "qemu-10.0"}  # major.minor -> the VMM model
_BOOL_PROPS = {"caching-mode": "caching_mode", "x-scalable-mode": "scalable_mode",
               "x-flts": "flts", "device-iotlb": "device_iotlb", "x-pasid-mode": "pasid",
               "snoop-control": "snoop_control", "dma-drain": "dma_drain", "pt": "pt"}


def vmm_of(rec: Recording) -> tuple[qemu.QemuVersion, qemu.QemuProperties]:
    """The QEMU version (config.toml's first line, ``Recording.versions``) and the unit's
    properties."""
    versions = rec.versions
    if versions.qemu not in _VMM_OF_QEMU:
        raise BadInput(f"no VMM model of QEMU {versions.qemu}; known: "
                       f"{', '.join(_VMM_OF_QEMU)}", where=versions.where)
    device = str(rec.config.get("qemu_iommu_device", ""))
    props = {}
    for word in device.split(",")[1:]:
        key, _, value = word.partition("=")
        if key in _BOOL_PROPS:
            props[_BOOL_PROPS[key]] = value in ("on", "true", "yes")
        elif key == "aw-bits":
            props["aw_bits"] = int(value)
    return qemu.get_version(_VMM_OF_QEMU[versions.qemu]), qemu.QemuProperties(**props)


def replay_on_vmm(path: str | Path, profile: str | None = None, seed: int = 0,
                  device: str | None = None, assign: bool = False
                  ) -> tuple[Result, VmmComparison, Vmm]:
    """Replay ``path`` with the guest on the VMM model; with ``assign`` the traced device is
    assigned through VFIO (its second stage shadowed into a host unit, ``host``): what the
    recorded workload would cost with the device passed through.  QEMU's trace events do
    not depend on the listeners, so the comparison is the same."""
    rec = Recording(path)
    setup = read_setup(rec, device)
    version, props = vmm_of(rec)
    # the machine builder's VMM half: the recording's guest boot runs on top (Replayer)
    vmm, host = vm_half("shadow" if assign else "emulated", version, props,
                        name=setup.dmesg.iommu, record=True)
    caps = vmm.unit.caps
    if (caps.cap, caps.ecap) != (setup.dmesg.cap, setup.dmesg.ecap):
        raise BadInput(f"{version.name} with {props} builds cap {caps.cap:x} ecap "
                       f"{caps.ecap:x}; the guest saw cap {setup.dmesg.cap:x} ecap "
                       f"{setup.dmesg.ecap:x}", where=str(rec.path))
    for name, _ in setup.dmesg.group_adds:
        vmm.address_space(parse_sid(name))  # vtd_find_add_as at machine start
    if assign:
        # the traced device assigned through VFIO at machine start (host: mainline, strict)
        host.probe(host_name(setup.traced))
        VfioShadow(vmm, host, setup.traced)
    profile = profile or recording_profile(rec)
    result = Replayer(rec, setup, profile, seed, vmm=vmm).run()
    comparison = compare_items(vmm.events, prefetched(recorded_items, str(rec.path)),
                               lazy=result.boot.cookie.fq is not None,
                               exit_orders=result.exit_orders)
    return result, comparison, vmm
