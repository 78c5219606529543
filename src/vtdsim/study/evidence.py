"""What a study reports: figures that name where they come from (a model run, a recording, a
cited source, or a derivation from the constants table), and the markers that stand in for a
figure the build cannot give (a recording not present, a platform not yet modelled).

Not provided: units conversion or uncertainty; each figure is one number as its source gives it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SOURCES = ("model run", "recording", "cited", "derived")
NOT_MODELLED = "not yet modelled on this platform"
NOT_PRESENT = "recording not present"


@dataclass(frozen=True)
class Figure:
    """One number (or, when ``value`` is None, a marked absence: ``note`` says why)."""

    label: str
    value: float | None
    unit: str
    source: str  # one of SOURCES
    detail: str  # the command, recording, citation or formula behind it
    side: str = ""  # "before" / "after" the patch (or the thread's two options), for plots
    note: str = ""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"figure source {self.source!r} not in {SOURCES}")

    def text(self) -> str:
        if self.value is None:
            return f"{self.label}: [{self.note}] ({self.source}: {self.detail})"
        return f"{self.label}: {fmt(self.value)} {self.unit} ({self.source}: {self.detail})"

    def as_json(self) -> dict:
        return asdict(self)


def fmt(value: float) -> str:
    """Numbers as the report shows them: integers plain, others with 4 significant digits."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}"


def missing(label: str, unit: str, source: str, detail: str, note: str,
            side: str = "") -> Figure:
    return Figure(label, None, unit, source, detail, side, note)
