"""The study's plots: per seed, the numeric figures grouped by unit (one panel per unit),
coloured by where each number comes from, as an SVG string for inline use (matplotlib, Agg).

Deterministic: a fixed SVG hash salt and no date in the metadata, so the same report gives
byte-identical SVG.  Not provided: marked absences (they are in the tables, not plotted).
"""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

COLOURS = {"model run": "#4c72b0", "recording": "#dd8452", "cited": "#55a868",
           "derived": "#8172b3"}
MAX_UNITS = 5


def _axis(f: dict) -> str:
    """The panel a figure goes in: its unit, and what it is counted per (``exits per
    map+unmap`` and a total of exits are not drawn on one axis)."""
    _, per, rest = f["label"].partition(" per ")
    return f"{f['unit']} per {rest.split()[0]}" if per else f["unit"]


def seed_svg(study: dict) -> str | None:
    """One SVG of the seed's numeric figures, or None when it has none."""
    by_unit: dict[str, list[dict]] = {}
    for f in study["figures"] + study["published"]:
        if f["value"] is not None:
            by_unit.setdefault(_axis(f), []).append(f)
    if not by_unit:
        return None
    units = list(by_unit)[:MAX_UNITS]
    plt.rcParams.update({"svg.hashsalt": f"vtdsim-study-{study['number']}",
                         "svg.fonttype": "none", "font.size": 8})
    heights = [0.45 * len(by_unit[u]) + 0.8 for u in units]
    fig, axes = plt.subplots(len(units), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, unit in zip(axes[:, 0], units, strict=True):
        _panel(ax, unit, by_unit[unit])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    fig.legend(handles, list(COLOURS), loc="upper right", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = out.getvalue()
    return text[text.index("<svg"):]  # inline: no XML declaration or doctype


def _panel(ax, unit: str, figures: list[dict]) -> None:
    labels = ["\n".join(textwrap.wrap(f["label"], 60)) for f in figures]
    values = [f["value"] for f in figures]
    ax.barh(range(len(figures)), values, color=[COLOURS[f["source"]] for f in figures])
    ax.set_yticks(range(len(figures)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:g}", va="center", fontsize=7)
    ax.margins(x=0.15)
