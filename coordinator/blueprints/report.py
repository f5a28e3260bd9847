"""A blueprint run's HTML report: one self-contained file, no network, readable in any browser.

Charts and maps are inline SVG drawn here: bars with 95% error bars, time profiles with a 95%
band, choropleths on real LSOA 2011 boundaries, model coefficients with intervals, composite
indices with rank intervals. Every figure says its accuracy in plain words. A few lines of
script add hover read-outs and sortable tables; the report reads fully without them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analyses.blueprint import OutputSpec
from coordinator.blueprints.geography import area_shapes

__all__ = ["Figure", "ReportInput", "accuracy_words", "render_report"]

_PALETTE = ("#fff5eb", "#fdd0a2", "#fd8d3c", "#d94801", "#7f2704")
_BAR = "#3b6ea8"
_SERIES = ("#3b6ea8", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 1 else f"{value:.3g}"


def accuracy_words(accuracy: Sequence[float] | float, noun: str, cells: str) -> str:
    """The 95% accuracy of a set of released values in plain words."""
    acc = np.atleast_1d(np.asarray(accuracy, dtype=float))
    acc = acc[np.isfinite(acc)]
    if acc.size == 0:
        return f"No {noun} could be estimated: every cell was suppressed or undefined."
    low, high = float(acc.min()), float(acc.max())
    if math.isclose(low, high, rel_tol=0.01):
        return (
            f"Each {noun} is within ±{_num(low)} of its value before privacy noise in 19 of 20 {cells} "
            "(95% confidence)."
        )
    return (
        f"Each {noun} is within its own margin of its value before privacy noise in 19 of 20 {cells}; "
        f"the margins run from ±{_num(low)} to ±{_num(high)} (median ±{_num(float(np.median(acc)))}) "
        "and are shown on hover and in the exports."
    )


@dataclass
class Figure:
    """One rendered output: its heading, SVG or table HTML, and the words under it."""

    output: OutputSpec
    body: str
    words: list[str] = field(default_factory=list)


@dataclass
class ReportInput:
    title: str
    subtitle: str
    summary: str
    facts: list[tuple[str, str]]
    governance: list[tuple[str, str]]
    parameters: list[tuple[str, str, str]]
    budget_rows: list[tuple[str, str, str, str]]
    figures: list[Figure]
    refusals: list[tuple[str, str, str]]
    files: list[str]


def _axes(width: int, height: int, left: int, bottom: int, top: float, scale: float, label: str) -> list[str]:
    """An SVG chart's opening tag and its horizontal grid with value ticks."""
    svg = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">']
    for tick in np.linspace(0, top, 5):
        y = height - bottom - tick * scale
        svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        svg.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_num(float(tick))}</text>'
        )
    return svg


def _legend(groups: Sequence[object], left: int, height: int) -> list[str]:
    """One colour swatch and label per series, along the bottom."""
    return [
        f'<rect x="{left + gi * 120}" y="{height - 14}" width="10" height="10" fill="{_SERIES[gi % len(_SERIES)]}"/>'
        f'<text x="{left + gi * 120 + 14}" y="{height - 5}" class="tick">{_e(g)}</text>'
        for gi, g in enumerate(groups)
    ]


def bar_chart(frame: pd.DataFrame, x: str, value: str, series: str | None, noun: str) -> str:
    """Bars of `value` by `x` (one bar per `series` value) with 95% error bars."""
    acc_col = f"{value}_accuracy95"
    xs = list(dict.fromkeys(frame[x].tolist()))
    groups = list(dict.fromkeys(frame[series].tolist())) if series else [None]
    top = 0.0
    cells: list[tuple[int, int, float, float]] = []
    for _, row in frame.iterrows():
        v = float(row[value]) if pd.notna(row[value]) else math.nan
        a = float(row[acc_col]) if acc_col in frame and pd.notna(row[acc_col]) else 0.0
        cells.append((xs.index(row[x]), groups.index(row[series]) if series else 0, v, a))
        if math.isfinite(v):
            top = max(top, v + a)
    top = top or 1.0
    width, height, left, bottom = 760, 300, 64, 70
    slot = (width - left - 10) / max(len(xs), 1)
    bar = slot * 0.8 / len(groups)
    scale = (height - bottom - 10) / top
    svg = _axes(width, height, left, bottom, top, scale, f"{noun} by {x}")
    for xi, gi, v, a in cells:
        x0 = left + xi * slot + slot * 0.1 + gi * bar
        colour = _SERIES[gi % len(_SERIES)]
        label = f"{xs[xi]}{' · ' + str(groups[gi]) if series else ''}: {_num(v)} ± {_num(a)}"
        if not math.isfinite(v):
            svg.append(
                f'<text x="{x0 + bar / 2:.1f}" y="{height - bottom - 4}" class="tick" text-anchor="middle">s</text>'
            )
            continue
        h = max(v, 0) * scale
        svg.append(
            f'<rect class="bar" x="{x0:.1f}" y="{height - bottom - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
            f'fill="{colour}" data-tip="{_e(label)}"><title>{_e(label)}</title></rect>'
        )
        if a > 0:
            cx = x0 + bar / 2
            y_lo = height - bottom - max(v - a, 0) * scale
            y_hi = height - bottom - (v + a) * scale
            svg.append(
                f'<path class="err" d="M{cx:.1f},{y_lo:.1f}V{y_hi:.1f}M{cx - 3:.1f},{y_lo:.1f}h6M{cx - 3:.1f},{y_hi:.1f}h6"/>'
            )
    step = max(1, math.ceil(len(xs) / 24))
    for i, xv in enumerate(xs):
        if i % step:
            continue
        cx = left + (i + 0.5) * slot
        svg.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 14}" class="tick" text-anchor="end" '
            f'transform="rotate(-35 {cx:.1f} {height - bottom + 14})">{_e(xv)[:22]}</text>'
        )
    if series:
        svg += _legend(groups, left, height)
    svg.append("</svg>")
    return "".join(svg)


def time_chart(frame: pd.DataFrame, x: str, value: str, series: str | None, noun: str) -> str:
    """A profile of `value` over `x` (hour, weekday or month) with a 95% band per series."""
    acc_col = f"{value}_accuracy95"
    xs = list(dict.fromkeys(frame[x].tolist()))
    groups = list(dict.fromkeys(frame[series].tolist())) if series else [None]
    width, height, left, bottom = 760, 280, 64, 50
    data = []
    top = 0.0
    for g in groups:
        part = frame if g is None else frame[frame[series] == g]
        by_x = part.groupby(x, sort=False)[[value, *([acc_col] if acc_col in part else [])]].first()
        v = np.array([float(by_x[value].get(xv, np.nan)) for xv in xs])
        a = np.array([float(by_x[acc_col].get(xv, 0.0)) if acc_col in by_x else 0.0 for xv in xs])
        data.append((g, v, a))
        finite = v[np.isfinite(v)]
        if finite.size:
            top = max(top, float(np.nanmax(v + a)))
    top = top or 1.0
    dx = (width - left - 10) / max(len(xs) - 1, 1)
    scale = (height - bottom - 10) / top
    svg = _axes(width, height, left, bottom, top, scale, f"{noun} over {x}")
    for gi, (g, v, a) in enumerate(data):
        colour = _SERIES[gi % len(_SERIES)]
        ok = np.isfinite(v)
        pts = [(left + i * dx, height - bottom - max(v[i], 0) * scale) for i in range(len(xs)) if ok[i]]
        upper = [
            (left + i * dx, height - bottom - max(v[i] + a[i], 0) * scale) for i in range(len(xs)) if ok[i]
        ]
        lower = [
            (left + i * dx, height - bottom - max(v[i] - a[i], 0) * scale) for i in range(len(xs)) if ok[i]
        ]
        if len(pts) > 1:
            band = " ".join(f"{px:.1f},{py:.1f}" for px, py in upper + lower[::-1])
            svg.append(f'<polygon class="band" points="{band}" fill="{colour}"/>')
            line = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            svg.append(f'<polyline class="line" points="{line}" stroke="{colour}"/>')
        for i in range(len(xs)):
            if ok[i]:
                label = f"{xs[i]}{' · ' + str(g) if g is not None else ''}: {_num(v[i])} ± {_num(a[i])}"
                svg.append(
                    f'<circle cx="{left + i * dx:.1f}" cy="{height - bottom - max(v[i], 0) * scale:.1f}" r="3" '
                    f'fill="{colour}" data-tip="{_e(label)}"><title>{_e(label)}</title></circle>'
                )
    for i, xv in enumerate(xs):
        svg.append(
            f'<text x="{left + i * dx:.1f}" y="{height - bottom + 16}" class="tick" text-anchor="middle">{_e(xv)}</text>'
        )
    if series:
        svg += _legend(groups, left, height)
    svg.append("</svg>")
    return "".join(svg)


def choropleth(codes: Sequence[str], values: Sequence[float], margins: Sequence[float], noun: str) -> str:
    """One shape per area code, shaded by quintile of `values`; suppressed areas hatched grey."""
    shapes, height, source = area_shapes(list(codes))
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    breaks = np.quantile(finite, [0.2, 0.4, 0.6, 0.8]) if finite.size else np.zeros(4)
    width = 640
    svg = [
        f'<svg class="map" viewBox="-4 -4 {width + 8} {height + 48:.0f}" role="img" aria-label="map of {_e(noun)}">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="6" height="6" fill="#e6e6e6"/><line x1="0" y1="0" x2="0" y2="6" stroke="#aaa" stroke-width="2"/>'
        "</pattern></defs>",
    ]
    for shape, value, margin in zip(shapes, v, margins, strict=True):
        if math.isfinite(value):
            fill = _PALETTE[int(np.searchsorted(breaks, value, side="right"))]
            tip = f"{shape.name} ({shape.code}): {_num(value)} ± {_num(float(margin))}"
        else:
            fill = "url(#hatch)"
            tip = f"{shape.name} ({shape.code}): suppressed (too few to publish)"
        svg.append(
            f'<path class="area" data-area="{_e(shape.code)}" data-tip="{_e(tip)}" d="{shape.path}" fill="{fill}">'
            f"<title>{_e(tip)}</title></path>"
        )
    edges = [
        float(finite.min()) if finite.size else 0.0,
        *map(float, breaks),
        float(finite.max()) if finite.size else 0.0,
    ]
    for i, colour in enumerate(_PALETTE):
        x = 4 + i * 127
        svg.append(
            f'<rect x="{x}" y="{height + 14:.0f}" width="14" height="14" fill="{colour}" stroke="#666"/>'
            f'<text x="{x + 18}" y="{height + 26:.0f}" class="tick">{_num(edges[i])} to {_num(edges[i + 1])}</text>'
        )
    svg.append(f'<text x="10" y="{height + 42:.0f}" class="src">Boundaries: {_e(source)}</text>')
    svg.append("</svg>")
    return "".join(svg)


def forest_plot(frame: pd.DataFrame) -> str:
    """Model coefficients with their 95% intervals."""
    rows = frame.reset_index(drop=True)
    lo = float(np.nanmin(rows["ci95_low"])) if len(rows) else -1.0
    hi = float(np.nanmax(rows["ci95_high"])) if len(rows) else 1.0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    width, left, row_h = 760, 220, 22
    height = row_h * len(rows) + 30
    scale = (width - left - 20) / max(hi - lo, 1e-9)

    def px(v: float) -> float:
        return left + (v - lo) * scale

    svg = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="coefficients">']
    svg.append(f'<line x1="{px(0):.1f}" x2="{px(0):.1f}" y1="0" y2="{height - 20}" class="zero"/>')
    for i, row in rows.iterrows():
        y = 14 + int(str(i)) * row_h
        tip = f"{row['term']}: {row['estimate']:.3f} [{row['ci95_low']:.3f}, {row['ci95_high']:.3f}]"
        flag = " (noise-limited)" if bool(row.get("noise_limited", False)) else ""
        svg.append(
            f'<text x="{left - 8}" y="{y + 4}" class="tick" text-anchor="end">{_e(row["term"])}{flag}</text>'
        )
        svg.append(
            f'<line x1="{px(row["ci95_low"]):.1f}" x2="{px(row["ci95_high"]):.1f}" y1="{y}" y2="{y}" class="err"/>'
        )
        svg.append(
            f'<circle cx="{px(row["estimate"]):.1f}" cy="{y}" r="4" fill="{_BAR}" data-tip="{_e(tip)}"><title>{_e(tip)}</title></circle>'
        )
    for tick in np.linspace(lo, hi, 5):
        svg.append(
            f'<text x="{px(float(tick)):.1f}" y="{height - 4}" class="tick" text-anchor="middle">{tick:.2f}</text>'
        )
    svg.append("</svg>")
    return "".join(svg)


def html_table(frame: pd.DataFrame, limit: int = 40) -> str:
    """A sortable table of the first `limit` rows."""
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    body = []
    for _, row in frame.head(limit).iterrows():
        cells = []
        for value in row:
            if isinstance(value, float | np.floating):
                cells.append(f'<td class="n">{_num(float(value))}</td>')
            else:
                cells.append(f"<td>{_e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (
        f'<p class="note">First {limit} of {len(frame)} rows; all rows are in the exports.</p>'
        if len(frame) > limit
        else ""
    )
    return (
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{more}'
    )


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d1d1d;background:#fafafa}
main{max-width:980px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 14px}.note,.words{color:#333;background:#eef3f8;border-left:4px solid #3b6ea8;padding:6px 10px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 7px}
th{background:#f0f0f0;cursor:pointer}td.n{text-align:right;font-variant-numeric:tabular-nums}
.chart,.map{width:100%;height:auto;background:#fff;border:1px solid #e4e4e4}
.grid{stroke:#eee}.tick{font-size:11px;fill:#444}.src{font-size:10px;fill:#666}
.err{stroke:#111;stroke-width:1.3;fill:none}.zero{stroke:#999;stroke-dasharray:3 3}
.band{opacity:.18}.line{fill:none;stroke-width:2}
.area{stroke:#fff;stroke-width:.4}.area:hover,.bar:hover{stroke:#000;stroke-width:1.2}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:3px 7px;border-radius:3px;font-size:12px;display:none}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}dt{font-weight:600}dd{margin:0}
.refused{color:#8a1c1c}
"""

_SCRIPT = """
(function () {
  var tip = document.getElementById('tip');
  document.querySelectorAll('[data-tip]').forEach(function (el) {
    el.addEventListener('mousemove', function (ev) {
      tip.textContent = el.getAttribute('data-tip');
      tip.style.display = 'block';
      tip.style.left = (ev.clientX + 12) + 'px';
      tip.style.top = (ev.clientY + 12) + 'px';
    });
    el.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
  document.querySelectorAll('table.sortable th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = th.closest('table').tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-asc') !== '1';
      th.setAttribute('data-asc', asc ? '1' : '0');
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var nx = parseFloat(x.replace(/,/g, '')), ny = parseFloat(y.replace(/,/g, ''));
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.body.setAttribute('data-ready', '1');
})();
"""


def render_report(report: ReportInput) -> str:
    """The whole report as one HTML document."""
    facts = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in report.facts)
    gov = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in report.governance)
    params = "".join(
        f"<tr><td>{_e(n)}</td><td>{_e(v)}</td><td>{_e(d)}</td></tr>" for n, v, d in report.parameters
    )
    budget = "".join(
        f"<tr><td>{_e(a)}</td><td>{_e(b)}</td><td>{_e(c)}</td><td>{_e(d)}</td></tr>"
        for a, b, c, d in report.budget_rows
    )
    parts = []
    for fig in report.figures:
        words = "".join(f'<p class="words">{_e(w)}</p>' for w in fig.words)
        caption = f"<p>{_e(fig.output.caption)}</p>" if fig.output.caption else ""
        parts.append(
            f'<section class="output" id="out-{_e(fig.output.id)}" data-kind="{_e(fig.output.kind)}">'
            f"<h2>{_e(fig.output.title)}</h2>{caption}{fig.body}{words}</section>"
        )
    refused = "".join(
        f'<li class="refused"><b>{_e(p)}</b> · {_e(a)}: {_e(m)}</li>' for p, a, m in report.refusals
    )
    refusal_html = f"<h2>Refusals</h2><ul>{refused}</ul>" if refused else ""
    files = "".join(f'<li><a href="{_e(f)}">{_e(f)}</a></li>' for f in report.files)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(report.title)}</title><style>{_CSS}</style></head>
<body><div id="tip"></div><main>
<h1>{_e(report.title)}</h1><p class="sub">{_e(report.subtitle)}</p>
<p>{_e(report.summary)}</p>
<dl>{facts}</dl>
<h2>Governance</h2><dl>{gov}</dl>
<h2>Parameters</h2><table><thead><tr><th>parameter</th><th>value</th><th>meaning</th></tr></thead><tbody>{params}</tbody></table>
<h2>Privacy budget</h2>
<p class="note">Every number below was released by the partners' own nodes with differentially private noise
(OpenDP); no row of partner data left a partner. Each analysis's cost was shown before it ran and debited
from each partner's ledger before anything was released.</p>
<table><thead><tr><th>partner</th><th>planned (rho)</th><th>debited (rho)</th><th>epsilon at delta 1e-6</th></tr></thead><tbody>{budget}</tbody></table>
{"".join(parts)}
{refusal_html}
<h2>Files</h2><ul>{files}</ul>
</main><script>{_SCRIPT}</script></body></html>
"""
