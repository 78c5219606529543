"""Register-based invalidation: the context command register CCMD and the IOTLB registers
IVA/IOTLB (VT-d spec 6.5.1, 10.4.7, 10.4.8).

A write that sets the go bit (CCMD.ICC, IOTLB.IVT) performs the requested invalidation at once
through ``hardware.invalidation`` (the same functions the queue uses), reports the granularity
actually used (CAIG / IAIG) and clears the go bit; software polling it sees completion.  The
write-buffer drain every invalidation implies (spec 6.8) happens in ``hardware.invalidation``.

Rules carried out here:

* QIES=1: software must use the queue; the write is ignored and ICC/IVT stay set (QEMU
  ``vtd_handle_ccmd_write``/``_iotlb_write``), counted in ``stats["reg_inval_ignored_qie"]``.
* VER major >= 6: register-based invalidation is not supported (spec rev 3.3 section 6.5, as
  cited by Xen's "VT-d: Don't assume register-based invalidation is always supported"); ignored
  the same way, counted in ``stats["reg_inval_unsupported"]``.
* Requested granularity 00 is invalid: nothing is done and 00 is reported.
* PSI with AM > CAP.MAMV is not performed: IAIG=00 (QEMU ``vtd_iotlb_flush``).
* PSI on a unit without CAP.PSI is performed as domain-selective and reported as DSI (IAIG=10).
* CCMD domain- and device-selective are performed exactly (QEMU performs domain as global,
  which the spec's CAIG allows; we keep the finer one).

Unconfirmed: what register-based context invalidation means in scalable mode (the spec directs
scalable-mode software to the queue); the model performs it as in legacy mode and counts
``stats["reg_inval_scalable_mode"]``.

Not modelled: DR/DW draining (DMA completes atomically here), the time an invalidation takes.
"""

from __future__ import annotations

from typing import Any

from vtdsim.hardware import invalidation

GLOBAL, DOMAIN, DEVICE_OR_PAGE = 1, 2, 3  # CIRG/CAIG and IIRG/IAIG encodings


def _refused(unit: Any, reg: str) -> bool:
    """Whether this unit must ignore a register-based invalidation now."""
    if unit.regs.get("GSTS", "qies"):
        unit.stats["reg_inval_ignored_qie"] += 1
        unit.trace("reg_inval_ignored_qie", reg=reg)
        return True
    if unit.caps.ver_major >= 6:
        unit.stats["reg_inval_unsupported"] += 1
        unit.trace("reg_inval_unsupported", reg=reg)
        return True
    if unit.ttm == 1:
        unit.stats["reg_inval_scalable_mode"] += 1
    return False


def on_ccmd_write(unit: Any) -> None:
    """Software wrote the dword holding CCMD.ICC."""
    regs = unit.regs
    if not regs.get("CCMD", "icc") or _refused(unit, "CCMD"):
        return
    cirg = regs.get("CCMD", "cirg")
    did = regs.get("CCMD", "did")
    if cirg == GLOBAL:
        invalidation.context_cache_global(unit)
    elif cirg == DOMAIN:
        invalidation.context_cache_domain(unit, did)
    elif cirg == DEVICE_OR_PAGE:
        invalidation.context_cache_device(
            unit, did, regs.get("CCMD", "sid"), regs.get("CCMD", "fm")
        )
    regs.update("CCMD", icc=0, caig=cirg)
    unit.stats["reg_inval:ccmd"] += 1
    unit.trace("ccmd", cirg=cirg, did=did)


def on_iotlb_write(unit: Any) -> None:
    """Software wrote the dword holding IOTLB.IVT."""
    regs = unit.regs
    if not regs.get("IOTLB", "ivt") or _refused(unit, "IOTLB"):
        return
    iirg = regs.get("IOTLB", "iirg")
    did = regs.get("IOTLB", "did")
    iaig = _iotlb_invalidate(unit, iirg, did)
    regs.update("IOTLB", ivt=0, iaig=iaig)
    unit.stats["reg_inval:iotlb"] += 1
    unit.trace("iotlb_reg", iirg=iirg, iaig=iaig, did=did, iva=regs["IVA"])


def _iotlb_invalidate(unit: Any, iirg: int, did: int) -> int:
    """Perform the request; return the actual granularity (0: not performed)."""
    if iirg == GLOBAL:
        invalidation.iotlb_global(unit)
        return GLOBAL
    if iirg == DOMAIN or (iirg == DEVICE_OR_PAGE and not unit.caps.psi):
        invalidation.iotlb_domain(unit, did)
        return DOMAIN
    if iirg != DEVICE_OR_PAGE:
        return 0
    regs = unit.regs
    am = regs.get("IVA", "am")
    if am > unit.caps.mamv:
        unit.stats["reg_inval_am_over_mamv"] += 1
        return 0
    addr = regs.get("IVA", "addr") << 12
    invalidation.iotlb_page(unit, did, addr, am, regs.get("IVA", "ih"))
    return DEVICE_OR_PAGE
