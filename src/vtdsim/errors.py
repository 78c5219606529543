"""One exception tree for vtdsim.

Three families, kept apart because callers react differently to each:

* ``BadInput`` - a file or value a user gave us is malformed (trace, scenario, litmus file,
  preset name).  Reported as one line with the location, never as a traceback.
* ``SpecRuleBroken`` - software (a driver model, a scenario) broke a rule the VT-d spec or the
  Linux driver's own invariants impose, e.g. reusing DID 0.  Hardware-visible guest mistakes are
  *not* raised: the unit records a fault or an IQE as the spec says.
* ``PropertyViolated`` - the checker found an execution that violates a named property.

Messages say ``name=0xvalue``, the rule that was broken, and the spec section or Linux function.
"""

from __future__ import annotations


class VtdsimError(Exception):
    """Base of every error vtdsim raises on purpose."""


class BadInput(VtdsimError):
    """Malformed user input; ``where`` is ``file:line`` (or a name) when known."""

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class SpecRuleBroken(VtdsimError):
    """Software broke a rule of the VT-d spec or of the modelled driver."""

    def __init__(self, message: str, spec: str | None = None):
        self.spec = spec
        super().__init__(f"{message} ({spec})" if spec else message)


class PropertyViolated(VtdsimError):
    """A checked property does not hold; ``prop`` names it."""

    def __init__(self, prop: str, message: str):
        self.prop = prop
        super().__init__(f"{prop}: {message}")


class ModelError(VtdsimError):
    """An internal inconsistency of the model itself (a vtdsim bug, never user input)."""


def hexval(name: str, value: int) -> str:
    """Format ``name=0xvalue`` the way every vtdsim message does."""
    return f"{name}={value:#x}"
