"""The VT-d remapping hardware: registers, translation structures, caches, queued invalidation,
fault reporting and physical memory.  Nothing here imports the driver, checker or traces."""
