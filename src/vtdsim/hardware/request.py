"""DMA requests as a PCIe endpoint presents them to a remapping unit (VT-d spec 3.4, 4.1).

``at`` is the PCIe Address Type: untranslated (00), translation request (01, ATS), translated
(10).  ``pasid`` is ``None`` for requests without a PASID prefix; the unit then uses the
context entry's RID_PASID in scalable mode.

Not modelled: zero-length reads, atomics (T2:T1 = 11), page requests (PRI) as DMA.
"""

from __future__ import annotations

from vtdsim.records import record

AT_UNTRANSLATED = 0
AT_TRANSLATION_REQUEST = 1
AT_TRANSLATED = 2


@record
class DmaRequest:
    sid: int  # source-id: bus << 8 | dev << 3 | fn
    addr: int  # IOVA (or, for AT=translated, the host address the device-TLB gave)
    write: bool = False
    pasid: int | None = None
    at: int = AT_UNTRANSLATED
    priv: bool = False  # supervisor privilege (needs ECAP.SRS and PASID-entry SRE)
    exe: bool = False  # execute request (needs ERS / ERE)
    no_snoop: bool = False  # the TLP's No-Snoop attribute

    def describe(self) -> str:
        kind = ("write" if self.write else "read") + (" NS" if self.no_snoop else "")
        pasid = "" if self.pasid is None else f" pasid={self.pasid:#x}"
        at = {0: "", 1: " ATS-translate", 2: " ATS-translated"}.get(self.at, f" at={self.at}")
        return f"{kind} sid={format_sid(self.sid)} addr={self.addr:#x}{pasid}{at}"


def sid_of(bus: int, dev: int, fn: int) -> int:
    return (bus << 8) | (dev << 3) | fn


def format_sid(sid: int) -> str:
    """``bb:dd.f`` the way Linux prints a PCI requester."""
    return f"{sid >> 8:02x}:{(sid >> 3) & 0x1F:02x}.{sid & 7}"


def parse_sid(text: str) -> int:
    """Parse ``[dddd:]bb:dd.f`` (Linux device names, QEMU's ``00:1f.2``)."""
    from vtdsim.errors import BadInput

    parts = text.strip().split(":")
    try:
        if len(parts) == 3:
            parts = parts[1:]
        bus = int(parts[0], 16)
        dev, fn = parts[1].split(".")
        return sid_of(bus, int(dev, 16), int(fn, 16))
    except (ValueError, IndexError):
        raise BadInput(f"not a PCI device name: {text!r} (expected bb:dd.f)") from None
