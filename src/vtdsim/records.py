"""``record``: a frozen, slotted dataclass built as fast as a plain class - the model's hot value
objects (driver steps, cache entries) are created once per PTE store, descriptor or walk.

Not provided: ``default_factory`` fields, ``__post_init__``, keyword-only or init=False fields
(``record`` refuses a class that has them: none of the model's records needs one).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields


def record(cls: type) -> type:
    """``cls`` as ``dataclass(frozen=True, slots=True)``, with an ``__init__`` that stores each
    field through its slot.

    Why: a frozen dataclass's generated ``__init__`` stores every field with
    ``object.__setattr__`` (a name lookup per field), which made building one cost as much as
    twenty plain calls.  The slot's own descriptor stores the same value without the lookup;
    the fields, defaults, signature, equality, hashing, repr and pickling stay the dataclass's.
    The code is generated (file ``<string>``, as the dataclass's own), so the checker's
    continuation recorder still sees a fresh object being built (checker/continuations.py)."""
    cls = dataclass(frozen=True, slots=True)(cls)
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"record {cls.__qualname__}: __post_init__ is not supported")
    env: dict = {}
    params, body = [], []
    for f in fields(cls):
        if f.default_factory is not MISSING or f.kw_only or not f.init:
            raise TypeError(f"record {cls.__qualname__}.{f.name}: only plain fields")
        env[f"_store_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            env[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"\n    _store_{f.name}(self, {f.name})")
    # The names are the class's own field names (identifiers), nothing from input.
    exec(f"def __init__(self, {', '.join(params)}):{''.join(body) or ' pass'}\n", env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls
