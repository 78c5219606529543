"""The global command protocol: GCMD writes and the GSTS status they produce (VT-d spec 10.4.4,
10.4.5).

Software reads GSTS, keeps the persistent bits (TE, EAFL, QIE, IRE, CFI), adds one command bit
and writes GCMD.  A persistent bit acts when the written value differs from its status bit; a
one-shot bit (SRTP, SFL, WBF, SIRTP) acts whenever it is written as 1.  Commands complete
within the write, so software's poll of GSTS sees the result at once: RTPS/FLS/IRTPS are set and
stay set, WBFS is already clear again.

The spec requires one command per write.  If software changes several at once the model counts
``stats["gcmd_multiple_commands"]``, traces it, and carries them all out from bit 31 down (TE,
SRTP, SFL, EAFL, WBF, QIE, IRE, SIRTP, CFI) - close to what QEMU's ``vtd_handle_gcmd_write``
does (TE, SRTP, QIE, SIRTP, IRE); real hardware's behaviour is undefined by the spec.

Cache effects: with CAP.ESRTPS, SRTP invalidates every DMA-remapping cache (context, PASID,
IOTLB, paging-structure).  Without it SRTP leaves the caches alone - software must invalidate
globally afterwards (reference 14.1) - and TE changes never flush.  QEMU resets its caches on
every SRTP and TE change (``vtd_handle_gcmd_srtp``/``_te``); ``CacheConfig.qemu_resets`` selects
that behaviour instead.

Not modelled: advanced fault logging (SFL/EAFL only update status, and only with CAP.AFL),
interrupt remapping itself (IRE/SIRTP/CFI only latch and report status; the interrupt-entry
cache ESIRTPS would flush does not exist), the time a command takes.
"""

from __future__ import annotations

from typing import Any

from vtdsim.hardware import invalidation
from vtdsim.hardware.registers import GCMD, GCMD_STATUS, GSTS

PERSISTENT = ("te", "eafl", "qie", "ire", "cfi")
#: The capability a command needs; without it hardware ignores the command (status unchanged).
NEEDS = {"sfl": "afl", "eafl": "afl", "qie": "qi", "ire": "ir", "sirtp": "ir", "cfi": "ir"}
ONE_SHOT = ("srtp", "sfl", "wbf", "sirtp")

#: RTADDR.TTM values (spec 10.4.6); 10 is reserved, 11 (abort-DMA) needs ECAP.ADMS.
TTM_LEGACY, TTM_SCALABLE, TTM_RESERVED, TTM_ABORT_DMA = 0, 1, 2, 3


def requested_commands(gcmd: int, gsts: int) -> list[str]:
    """The commands a GCMD value asks for, from bit 31 down."""
    commands = []
    for name in GCMD.fields:  # declared from bit 31 down
        bit = GCMD.get(gcmd, name)
        one_shot = name in ONE_SHOT and bit
        changed = name in PERSISTENT and bit != _status(gsts, name)
        if one_shot or changed:
            commands.append(name)
    return commands


def _status(gsts: int, command: str) -> int:
    return GSTS.get(gsts, GCMD_STATUS[command])


def on_gcmd_write(unit: Any) -> None:
    """Software wrote GCMD: carry out what it asks for."""
    gcmd = unit.regs["GCMD"]
    commands = requested_commands(gcmd, unit.regs["GSTS"])
    unit.stats["gcmd_writes"] += 1
    if len(commands) > 1:
        unit.stats["gcmd_multiple_commands"] += 1
        unit.trace("gcmd_multiple_commands", value=gcmd, commands=",".join(commands))
    for name in commands:
        needs = NEEDS.get(name)
        if needs is not None and not getattr(unit.caps, needs):
            _unsupported(unit, name)
            continue
        _COMMANDS[name](unit, bool(GCMD.get(gcmd, name)))


def _set_status(unit: Any, command: str, on: bool) -> None:
    unit.regs.update("GSTS", **{GCMD_STATUS[command]: int(on)})


def _unsupported(unit: Any, command: str) -> None:
    """A command the capabilities do not offer: hardware ignores it (status unchanged)."""
    unit.stats["gcmd_unsupported"] += 1
    unit.trace("gcmd_unsupported", command=command)


def _flush_all_dma_caches(unit: Any) -> None:
    """Every DMA-remapping cache (ESRTPS, spec 10.4.4 SRTP; or QEMU's vtd_reset_caches)."""
    invalidation.context_cache_global(unit)
    invalidation.pasid_cache_global(unit)
    invalidation.iotlb_global(unit)


def _te(unit: Any, on: bool) -> None:
    unit.translation_enabled = on
    _set_status(unit, "te", on)
    unit.trace("translation_enable", on=int(on))
    if unit.cache_config.qemu_resets:
        _flush_all_dma_caches(unit)


def _srtp(unit: Any, _on: bool) -> None:
    """Latch RTADDR (spec 10.4.6: the value takes effect only at SRTP)."""
    ttm = unit.regs.get("RTADDR", "ttm")
    unit.root_table_addr = unit.regs.get("RTADDR", "rta") << 12
    unit.ttm = ttm
    if not _ttm_supported(unit.caps, ttm):
        # Latched anyway: the spec reports an invalid TTM when a request or a descriptor uses
        # it (fault 0x30/0x31, IQEI 7), not at SRTP time.
        unit.stats["srtp_invalid_ttm"] += 1
        unit.trace("srtp_invalid_ttm", ttm=ttm)
    _set_status(unit, "srtp", True)
    unit.trace("set_root_table", rta=unit.root_table_addr, ttm=ttm)
    if unit.caps.esrtps or unit.cache_config.qemu_resets:
        _flush_all_dma_caches(unit)


def _ttm_supported(caps: Any, ttm: int) -> bool:
    if ttm == TTM_LEGACY:
        return True
    if ttm == TTM_SCALABLE:
        return caps.smts
    return ttm == TTM_ABORT_DMA and caps.adms


def _wbf(unit: Any, _on: bool) -> None:
    """Write-buffer flush (spec 6.8): posted structure writes become visible; WBFS is set while
    the flush runs and is clear again when the write returns."""
    unit.memory.flush_write_buffer()
    unit.stats["wbf"] += 1
    _set_status(unit, "wbf", False)


def _qie(unit: Any, on: bool) -> None:
    if on:
        _enable_qi(unit)
    else:
        _disable_qi(unit)


def _enable_qi(unit: Any) -> None:
    """IQH restarts at 0 (spec 10.4.22).  A tail already written is processed at once, as
    QEMU's vtd_handle_gcmd_qie does for Windows guests (software should have IQT=0)."""
    unit.regs.update("IQH", qh=0)
    _set_status(unit, "qie", True)
    if unit.regs.get("IQT", "qt"):
        unit.queue.process()


def _disable_qi(unit: Any) -> None:
    """Allowed only with the queue quiescent (IQH == IQT; QEMU also wants the last descriptor to
    be a wait - vtd_queued_inv_disable_check).  Otherwise the write is ignored and QIES stays."""
    if unit.regs.get("IQH", "qh") != unit.regs.get("IQT", "qt"):
        unit.stats["qie_disable_refused"] += 1
        unit.trace("qie_disable_refused", iqh=unit.regs["IQH"], iqt=unit.regs["IQT"])
        return
    unit.regs.update("IQH", qh=0)
    _set_status(unit, "qie", False)


def _sirtp(unit: Any, _on: bool) -> None:
    unit.irta = unit.regs["IRTA"]
    _set_status(unit, "sirtp", True)


def _status_only(command: str):
    """A command whose only modelled effect is its status bit (see "Not modelled")."""
    return lambda unit, on: _set_status(unit, command, on or command in ONE_SHOT)


_COMMANDS = {
    "te": _te,
    "srtp": _srtp,
    "sfl": _status_only("sfl"),
    "eafl": _status_only("eafl"),
    "wbf": _wbf,
    "qie": _qie,
    "ire": _status_only("ire"),
    "sirtp": _sirtp,
    "cfi": _status_only("cfi"),
}
