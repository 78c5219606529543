"""PCIe endpoints that issue DMA through a remapping unit, with their ATS device-TLBs."""
