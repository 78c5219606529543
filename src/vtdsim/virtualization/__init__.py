"""A VMM that emulates VT-d for a guest (caching mode, trapped queue-tail writes, shadowed second stage, nested first stage) and KVM/VFIO no-snoop handling."""
