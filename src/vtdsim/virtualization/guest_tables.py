"""What the VMM reads from the guest's remapping structures for one device, outside any
translation: QEMU's ``vtd_dev_to_context_entry`` then ``vtd_get_domain_id`` and the
second-stage root (legacy context entry, or the RID_PASID entry in scalable mode).

QEMU re-reads guest memory here every time (invalidation, sync and replay never use its
context cache); the hardware's own fetch functions (a dry ``RequestFlow``) do the decoding,
so the layouts stay in ``vtdsim.hardware``.

Not modelled: PASIDs other than the RID's (QEMU 7.2/10.0 shadow RID_PASID only).
"""

from __future__ import annotations

from dataclasses import dataclass

from vtdsim.hardware import pasid_table as pt
from vtdsim.hardware import root_table as rt
from vtdsim.hardware.request import DmaRequest
from vtdsim.hardware.translation.flow import RequestFlow
from vtdsim.hardware.translation.outcome import Abort
from vtdsim.virtualization.address_space import SsRoot


@dataclass(frozen=True)
class DeviceTables:
    """A device's translation as the guest programmed it: ``kind`` "ss", "fs", "nested",
    "pt" or "" (no usable context); ``root``/``levels`` the table, ``did`` its domain."""

    kind: str
    did: int = 0
    root: int = 0
    levels: int = 0
    pasid_entry: int = 0  # scalable mode: the raw RID_PASID entry (nesting binds from it)

    @property
    def ss_root(self) -> SsRoot | None:
        return SsRoot(self.did, self.root, self.levels) if self.kind == "ss" else None


def read_device_tables(unit, sid: int) -> DeviceTables:
    """The device's context (and RID_PASID entry) read fresh from guest memory."""
    if not unit.root_table_addr and not unit.translation_enabled:
        return DeviceTables("")
    flow = RequestFlow(unit, DmaRequest(sid, 0), dry=True)
    try:
        ce = flow.fetch_context(sid)
        if not ce.present:
            return DeviceTables("")
        if not ce.scalable:
            if ce.tt == rt.TT_PASS_THROUGH:
                return DeviceTables("pt", ce.did)
            return DeviceTables("ss", ce.did, ce.ssptptr, ce.levels)
        pe = flow.fetch_pasid_entry(ce, ce.rid_pasid)
    except Abort:
        return DeviceTables("")
    if not pe.present:
        return DeviceTables("")
    kind = pt.PGTT_NAMES.get(pe.pgtt, "")
    if kind in ("fs", "nested"):
        return DeviceTables(kind, pe.did, pe.fsptptr, 5 if pe.fspm else 4, pe.raw)
    return DeviceTables(kind, pe.did, pe.ssptptr, pe.levels, pe.raw)
