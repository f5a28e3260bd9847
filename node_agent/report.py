"""The transparency report: one self-contained HTML page for the data protection officer.

What left the site, to whom and when (from the verified audit log), the privacy budget spent and
remaining per population, and the cumulative epsilon over time as an inline SVG chart. No
script, no external asset: the page can be mailed or archived as is.
"""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import UTC, datetime

from node_agent.agent import NodeAgent
from privacy.budget import DISPLAY_DELTA, Rho

__all__ = ["transparency_report"]

_COLOURS = ["#1b6ca8", "#d1495b", "#66a182", "#edae49", "#5c4d7d", "#2e4057"]
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
th{background:#f3f3f3}code{font-size:.85em}.refused{color:#a33}
"""


def _epsilon(rho: float) -> float:
    return Rho(rho).epsilon(DISPLAY_DELTA) if rho > 0 else 0.0


def _chart(series: dict[str, list[tuple[float, float]]], caps: dict[str, float]) -> str:
    """Cumulative epsilon per population against time, with each cap as a dashed line."""
    width, height, pad = 720, 300, 50
    points = [p for s in series.values() for p in s]
    if not points:
        return "<p>No budget has been spent yet.</p>"
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    t1 = t1 if t1 > t0 else t0 + 1
    top = max([e for _, e in points] + [_epsilon(c) for c in caps.values()]) * 1.1 or 1.0

    def x(t: float) -> float:
        return pad + (t - t0) / (t1 - t0) * (width - 2 * pad)

    def y(e: float) -> float:
        return height - pad - e / top * (height - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="cumulative epsilon per population">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#444"/>',
        f'<text x="{pad}" y="{pad - 10}" font-size="12">epsilon (delta {DISPLAY_DELTA:g})</text>',
        f'<text x="{pad}" y="{height - 15}" font-size="11">{_day(t0)}</text>',
        f'<text x="{width - pad}" y="{height - 15}" font-size="11" text-anchor="end">{_day(t1)}</text>',
    ]
    for i, (population, steps) in enumerate(sorted(series.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(e):.1f}" for t, e in steps)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        cap = _epsilon(caps.get(population, 0.0))
        parts.append(
            f'<line x1="{pad}" y1="{y(cap):.1f}" x2="{width - pad}" y2="{y(cap):.1f}" '
            f'stroke="{colour}" stroke-dasharray="6 4"/>'
        )
        parts.append(
            f'<text x="{width - pad + 4}" y="{y(cap):.1f}" font-size="11" fill="{colour}">'
            f"{html.escape(population)} cap</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def transparency_report(agent: NodeAgent) -> str:
    """The report as one HTML document (the audit log is verified first).

    Raises:
        DataError: the audit log or ledger is damaged (the report is not written).
    """
    entries, head = agent.audit.verify()
    config = agent.config
    caps = dict(config.policy.total_rho_cap)
    cumulative: dict[str, float] = defaultdict(float)
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for entry in agent.ledger.entries():
        cumulative[entry.population] += entry.rho
        series[entry.population].append((entry.created, _epsilon(cumulative[entry.population])))
    budget_rows = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{_epsilon(agent.ledger.spent(p, agent.period_start()).value):.3g}</td>"
        f"<td>{agent.remaining(p).value:.4g}</td><td>{caps[p]:g}</td><td>{_epsilon(caps[p]):.3g}</td></tr>"
        for p in sorted(caps)
    )
    decisions = "".join(
        f'<tr class="{"refused" if e.decision in ("refused", "denied") else ""}">'
        f"<td>{html.escape(e.time)}</td><td>{html.escape(e.decision)}</td>"
        f"<td>{html.escape(e.requester)}</td><td><code>{html.escape(e.request_id)}</code></td>"
        f"<td>{e.cost_rho:.4g}</td><td>{_epsilon(e.cost_rho):.3g}</td>"
        f"<td>{html.escape(e.reason)}</td><td><code>{e.payload_sha256[:16]}</code></td></tr>"
        for e in reversed(agent.audit.entries())
    )
    renewal = config.policy.renewal
    period = (
        f"Caps renew every {renewal.every_days} days from {renewal.start}; the current period began "
        f"{_day(agent.period_start())}."
        if renewal
        else "Caps never renew."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Transparency report: {html.escape(config.partner)}</title><style>{_STYLE}</style></head>
<body>
<h1>Transparency report: {html.escape(config.partner)}</h1>
<p>Generated {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}. Only differentially private
aggregates leave this node. The audit log holds {entries} entries; its hash chain was verified
(head <code>{head[:16]}</code>).</p>
<h2>Privacy budget</h2>
<p>{period} Epsilon is shown at delta {DISPLAY_DELTA:g}, converted from zCDP rho by OpenDP.</p>
<table><tr><th>population</th><th>epsilon spent this period</th><th>rho remaining</th>
<th>rho cap</th><th>epsilon cap</th></tr>{budget_rows}</table>
<h2>Cumulative epsilon</h2>
{_chart(series, caps)}
<h2>Every decision, newest first</h2>
<table><tr><th>time (UTC)</th><th>decision</th><th>to</th><th>request</th><th>rho</th>
<th>epsilon</th><th>reason</th><th>payload sha256</th></tr>{decisions}</table>
</body></html>
"""
