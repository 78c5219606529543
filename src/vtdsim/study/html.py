"""report.html: the study as one self-contained page - a table of contents, a section per seed
(question, quoted claims, verdicts, every chain with its table, the figures with their sources,
an inline SVG plot, the conclusion) and a marked timing section; no script, no network.

Not provided: interactivity; the page is static HTML and CSS.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from vtdsim.checker.litmus_report import write_file
from vtdsim.study.evidence import fmt
from vtdsim.study.plots import seed_svg

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
blockquote{border-left:4px solid #bbb;margin:.5em 0;padding:.2em .8em;color:#444}
table{border-collapse:collapse;width:100%;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.78em}
.violated{color:#b00;font-weight:bold} .observed{color:#a60} .holds{color:#070}
.marker{color:#a60;font-style:italic} .note{color:#b00;font-weight:bold}
.conclusion{background:#eef5ee;padding:.6em .9em;border-radius:4px}
.timing{color:#777;font-size:.85em} details{margin:.4em 0}
"""


def write_html(path: Path, report: dict) -> None:
    write_file(path, page(report))


def page(report: dict) -> str:
    seeds = report["seeds"]
    toc = "".join(f'<li><a href="#seed-{s["number"]}">seed {s["number"]}: '
                  f'{escape(s["title"])}</a></li>' for s in seeds)
    body = "".join(section(s) for s in seeds)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>vtdsim study</title><style>{CSS}</style></head><body>\n"
            f"<h1>vtdsim study: the seed threads answered</h1>\n"
            f"<p>Each number says where it comes from: a <b>model run</b> (the timed simulator "
            f"or a replay through the driver model), a <b>recording</b> (a real guest under "
            f"QEMU), a <b>cited</b> source, or a figure <b>derived</b> from the constants "
            f"table. Seed {report['seed']}, {report['ios_per_run']} I/Os per timed run.</p>\n"
            f'<nav id="toc"><h2>Contents</h2><ol>{toc}'
            f'<li><a href="#bundled">the bundled recording</a></li>'
            f'<li><a href="#timing">timing</a></li></ol></nav>\n{body}'
            f"{bundled(report['bundled'])}{timing(report['timing'])}</body></html>\n")


def section(s: dict) -> str:
    claims = "".join(f"<blockquote>\u201c{escape(c['quote'])}\u201d<br>"
                     f"<small>{escape(c['who'])}, {escape(c['when'])}</small></blockquote>"
                     for c in s["claims"])
    svg = seed_svg(s)
    plot = f'<figure class="plot">{svg}</figure>' if svg else "<p>No numeric figure.</p>"
    note = f'<p class="note">NOTE: {escape(s["note"])}</p>' if s["note"] else ""
    return (f'<section id="seed-{s["number"]}" class="seed">'
            f'<h2>seed {s["number"]}: {escape(s["title"])}</h2>'
            f'<p><b>Question.</b> {escape(s["question"])} <small>(thread: '
            f'{escape(s["thread"])})</small></p>{claims}'
            f"<h3>Checker verdicts</h3>{verdicts(s)}{chains(s)}"
            f"<h3>Costs and measurements</h3>{figures(s)}{plot}"
            f'<h3>Conclusion</h3><div class="conclusion"><p>{escape(s["conclusion"])}</p>'
            f'{note}<p><i>Open:</i> {escape(s["open"])}</p></div></section>\n')


def verdicts(s: dict) -> str:
    rows = "".join(
        f'<tr><td>{r["side"]}</td><td>{escape(r["name"])}<br><small>{escape(r["doc"])}'
        f'</small></td><td class="{r["word"]}">{r["word"]}</td><td>'
        + "<br>".join(f'{escape(v["property"])}: {escape(v["verdict"])}'
                      + ("" if v["agrees"] else f' (expected {escape(str(v["expected"]))})')
                      for v in r["verdicts"])
        + f'</td><td>{r["executions"]}{"" if r["exhaustive"] else " (bounded)"}</td></tr>'
        for r in s["scenarios"])
    return ("<table class=\"verdicts\"><tr><th>side</th><th>scenario</th><th>verdict</th>"
            f"<th>properties</th><th>executions</th></tr>{rows}</table>")


def chains(s: dict) -> str:
    out = []
    for r in s["scenarios"]:
        for c in r["chains"]:
            out.append(f'<details open class="chain"><summary><b>{escape(r["name"])}</b> '
                       f'{c["kind"]} {escape(c["property"])}: {escape(c["message"])}'
                       f'</summary><p>{escape(c["chain"])}</p>'
                       f'<pre>{escape(c["table"])}</pre></details>')
    return "".join(out) or "<p>No violation and no observation in these scenarios.</p>"


def figures(s: dict) -> str:
    rows = "".join(_figure_row(f) for f in s["figures"] + s["published"])
    return ("<table class=\"figures\"><tr><th>figure</th><th>value</th><th>source</th>"
            f"<th>from</th></tr>{rows}</table>")


def _figure_row(f: dict) -> str:
    value = (f'<span class="marker">{escape(f["note"])}</span>' if f["value"] is None
             else f'{fmt(f["value"])} {escape(f["unit"])}')
    return (f'<tr><td>{escape(f["label"])}</td><td>{value}</td><td>{f["source"]}</td>'
            f'<td><small>{escape(f["detail"])}</small></td></tr>')


def bundled(b: dict) -> str:
    rows = "".join(_figure_row(f) for f in b["figures"])
    return (f'<section id="bundled"><h2>The bundled recording</h2><p>{escape(b["recording"])}'
            " (Linux 6.1 under QEMU 7.2, caching mode, no ATS), replayed through the driver "
            "model.</p><table><tr><th>figure</th><th>value</th><th>source</th><th>from</th>"
            f"</tr>{rows}</table></section>\n")


def timing(t: dict) -> str:
    parts = [f"total {t['total_s']:.1f} s"]
    for key in ("checker_s", "simulate_s", "replay_s"):
        parts += [f"{escape(name)}: {sec:.2f} s" for name, sec in t[key].items()]
    return (f'<section id="timing" class="timing"><h2>Timing</h2><p>{escape(t["note"])}</p>'
            f'<p>{"<br>".join(parts)}</p></section>\n')
