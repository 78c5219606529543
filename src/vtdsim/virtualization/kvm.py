"""KVM's part in seed 004: whether a guest WBINVD does anything (Linux arch/x86/kvm/x86.c
``kvm_emulate_wbinvd_noskip``, ``kvm_arch_has_noncoherent_dma``; virt/kvm/vfio.c
``kvm_vfio_update_coherency``).

WBINVD is a no-op unless non-coherent DMA is registered for the VM; VFIO registers it when a
group it adds to the KVM device is not coherent - when ``enforce_cache_coherency`` failed on
the host unit (no ECAP.SC), so the device may issue no-snoop DMA that only a real WBINVD makes
safe.  The guest platform's ``wbinvd_works`` follows the count.

Not modelled: the per-vCPU dirty mask of WBINVD exits (``wbinvd_dirty_mask``), kvm-unit
timing.
"""

from __future__ import annotations


class Kvm:
    """The VM's non-coherent-DMA registrations and the guest platform they govern."""

    def __init__(self, guest_platform) -> None:
        self.platform = guest_platform
        self.noncoherent_dma = 0
        self.platform.wbinvd_works = False

    def register_noncoherent_dma(self) -> None:
        """``kvm_arch_register_noncoherent_dma``: from now on WBINVD is executed."""
        self.noncoherent_dma += 1
        self.platform.wbinvd_works = True

    def unregister_noncoherent_dma(self) -> None:
        self.noncoherent_dma -= 1
        self.platform.wbinvd_works = self.noncoherent_dma > 0
