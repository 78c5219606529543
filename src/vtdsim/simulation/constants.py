"""The timed simulator's constants: one table in package data (``vtdsim/data/constants.toml``),
each with value, unit, source and confidence, overridable by a user's TOML file.

An override file has the same shape (``[name] value = ...``) or the short form ``name = value``;
only known names, numbers, and positive values (zero where the unit allows it) are accepted:
anything else is a one-line ``BadInput`` naming the file and key.

Not modelled: constants that vary with load (DRAM latency under bandwidth pressure, clock
boost) - each is one number for the whole run.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from vtdsim.errors import BadInput

CONFIDENCES = ("P", "P-abs", "S", "D", "derived", "chosen")
FIELDS = ("value", "unit", "source", "confidence")


@dataclass(frozen=True, slots=True)
class Constant:
    name: str
    value: float
    unit: str
    source: str
    confidence: str


class Constants:
    """The constants by name; ``ns(name)`` converts ``*_cycles`` through ``cpu_ghz``."""

    def __init__(self, table: dict[str, Constant], origin: str = "built-in"):
        self.table = table
        self.origin = origin

    def __getitem__(self, name: str) -> float:
        try:
            return self.table[name].value
        except KeyError:
            raise BadInput(f"no constant {name!r}; `vtdsim constants` lists them") from None

    def ns(self, name: str) -> float:
        """The constant in nanoseconds (cycles are divided by ``cpu_ghz``)."""
        value = self[name]
        return value / self["cpu_ghz"] if self.table[name].unit == "cycles" else value

    def rows(self) -> list[Constant]:
        return [self.table[name] for name in sorted(self.table)]

    def overridden(self, path: str | Path) -> Constants:
        """A copy with the values of the TOML file at ``path``."""
        return self.with_values(_read_toml(Path(path)), str(path))

    def with_values(self, data: dict, origin: str) -> Constants:
        """A copy with ``data``'s values (``name = value`` or ``[name] value = ...``);
        ``origin`` names the file in errors."""
        table = dict(self.table)
        for name, spec in data.items():
            where = f"{origin}: key {name!r}"
            if name not in table:
                raise BadInput(f"{where}: no such constant (`vtdsim constants` lists them)")
            table[name] = _override(table[name], spec, where)
        return Constants(table, origin=origin)


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except OSError as err:
        raise BadInput(f"{path}: cannot read ({err.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: not TOML ({err})") from None


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{where}: value must be a number, got {value!r}")
    if value < 0:
        raise BadInput(f"{where}: value must not be negative, got {value!r}")
    return float(value)


def _override(old: Constant, spec: object, where: str) -> Constant:
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(FIELDS))
        if unknown:
            raise BadInput(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
        if "value" not in spec:
            raise BadInput(f"{where}: a table needs a 'value'")
        if "unit" in spec and spec["unit"] != old.unit:
            raise BadInput(f"{where}: unit {spec['unit']!r} differs from {old.unit!r}")
        new = replace(old, value=_number(spec["value"], where),
                      source=str(spec.get("source", f"override ({where.split(':')[0]})")),
                      confidence=str(spec.get("confidence", "chosen")))
    else:
        new = replace(old, value=_number(spec, where), source=f"override ({where.split(':')[0]})",
                      confidence="chosen")
    if new.confidence not in CONFIDENCES:
        raise BadInput(f"{where}: confidence {new.confidence!r} not in {CONFIDENCES}")
    if old.name == "cpu_ghz" and new.value == 0:
        raise BadInput(f"{where}: cpu_ghz must be positive")
    return new


def _parse_builtin(text: str, where: str) -> dict[str, Constant]:
    table = {}
    for name, spec in tomllib.loads(text).items():
        missing = [f for f in FIELDS if f not in spec]
        if missing:
            raise BadInput(f"{where}: constant {name!r} lacks {missing[0]!r}")
        table[name] = Constant(name, _number(spec["value"], f"{where}: key {name!r}"),
                               spec["unit"], spec["source"], spec["confidence"])
    return table


def load(override: str | Path | None = None) -> Constants:
    """The built-in table, with ``override``'s values when given."""
    text = resources.files("vtdsim").joinpath("data/constants.toml").read_text()
    constants = Constants(_parse_builtin(text, "vtdsim/data/constants.toml"))
    return constants.overridden(override) if override is not None else constants
