"""Simulation: runs driver operations straight through on the hardware model and counts what
they cost."""
