"""A VMM that emulates VT-d for a guest: caching mode, every queue-tail write a VM exit,
shadowed second stage, nested first stage, and KVM/VFIO no-snoop handling."""
