"""Scenario ops that hand pages and devices over (Linux mm and intel-iommu's device paths:
iommu.c ``blocking_domain_attach_dev``/``device_block_translation``,
``intel_iommu_release_device``, ``dmar_remove_one_dev_info``; PCIe ATS Control): ``alloc``,
``detach``/``attach_blocking``, ``release``, ``ats_disable``.

Each op is a driver generator over the checker's ``System``; the page ledger learns what they
did from their steps (``AllocPage``/``FreePage``) and their begin/end (``lifecycle``).

Not modelled: the IOMMU core's group bookkeeping, PRI/IOPF queues at release, ATS being
switched off in the middle of a detach (the device's ATS bit is cleared when the op ends).
"""

from __future__ import annotations

from vtdsim.driver import steps as st


def alloc(system, op):
    """A page handed to a new owner: the allocator's next page (the most recently freed one,
    as a per-CPU free list would give it) becomes the data page ``page``."""
    addr = yield st.AllocPage(what="data page", why="caller allocates a buffer")
    system.pages[op["page"]] = addr
    return addr


def detach(system, op):
    """The device leaves its domain for no translation.  Mainline: the core attaches the
    blocking domain, whose ``blocking_domain_attach_dev`` is ``device_block_translation``
    (tags dropped, context/RID_PASID entry torn down and flushed, ATS off).  6.1:
    ``intel_iommu_detach_device`` = ``dmar_remove_one_dev_info``."""
    info = system.devices[op["device"]]
    if info.domain is None:
        return 0
    driver = system.driver
    if driver.mainline:
        yield from driver.device_block_translation(info)
    else:
        yield from driver.dmar_remove_one_dev_info(info)
    _left(system, op["device"])
    return 0


def release(system, op):
    """``intel_iommu_release_device`` (device removal).  Mainline: the core first attaches the
    release (blocking) domain, then in scalable mode the context entry is torn down
    (``intel_pasid_teardown_sm_context``: zero, clflush, ``intel_context_flush_no_pasid``)
    and ``intel_pasid_free_table`` frees the PASID directory and tables.  6.1: the release is
    ``dmar_remove_one_dev_info`` (context cleared and flushed) and the tables are freed."""
    from vtdsim.driver.context import device_pasid_table_teardown

    info = system.devices[op["device"]]
    yield from detach(system, op)
    iommu = info.iommu
    if iommu.sm_enabled and system.driver.mainline:
        yield from device_pasid_table_teardown(info, system.driver.profile)
    table = info.pasid_table
    if table is not None:
        for page in [*sorted(table.tables.values()), table.directory]:
            yield st.FreePage(addr=page, what="pasid table", why="intel_pasid_free_table")
        info.pasid_table = None
    return 0


def ats_disable(system, op):
    """``pci_disable_ats``: ATS Control.Enable cleared.  A function not permitted to cache
    translations holds none (PCIe ATS Control register), so its ATC is emptied, and its
    requests are untranslated from now on."""
    info = system.devices[op["device"]]
    info.ats_enabled = False
    endpoint = system.endpoint(op["device"])
    endpoint.ats = False
    endpoint.device_tlb.clear()
    return 0
    yield  # a generator without steps: the change is a PCI config write


def _left(system, device: str) -> None:
    system.members.pop(device, None)
    endpoint = system.endpoint(device)
    endpoint.ats = False
    endpoint.device_tlb.clear()
