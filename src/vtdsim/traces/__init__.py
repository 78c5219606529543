"""Parsers for recorded traces (guest ftrace, QEMU vtd_* log) and replay against the model."""
