"""Timed workloads (nic-rx, nic-tx, nvme, dma-window) over the one model."""
