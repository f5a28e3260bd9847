"""The fleet view: each registered partner's connection (from the SuperLink) beside what the
coordinator last heard from it (from the run store): version, protocol, last reply, last refusal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from coordinator.service.store import PartnerSeenRow
from coordinator.service.views import iso

if TYPE_CHECKING:
    from coordinator.deploy.flower import RegisteredNode

__all__ = ["fleet", "fleet_lines"]


def fleet(nodes: Sequence[RegisteredNode], seen: dict[str, PartnerSeenRow]) -> list[dict[str, object]]:
    """One entry per registered node, by name."""
    out: list[dict[str, object]] = []
    for node in sorted(nodes, key=lambda n: (n.name, n.node_id)):
        heard = seen.get(node.name)
        out.append(
            {
                "node_id": node.node_id,
                "name": node.name,
                "status": node.status,
                "connected_at": node.last_activated_at or None,
                "online_until": iso(node.online_until or None),
                "version": heard.node_version if heard else None,
                "protocol": heard.protocol if heard else None,
                "last_reply": iso(heard.last_reply_at) if heard else None,
                "last_run": heard.last_run if heard else None,
                "last_refusal": heard.last_refusal if heard else None,
                "last_refusal_at": iso(heard.last_refusal_at) if heard else None,
            }
        )
    return out


def fleet_lines(entries: list[dict[str, object]]) -> list[str]:
    """The fleet as `oda coordinator nodes` prints it."""
    lines = [f"{len(entries)} node(s)"]
    for e in entries:
        version = f"oda {e['version']} (protocol {e['protocol']})" if e["version"] else "version unknown"
        lines.append(
            f"  {e['node_id']:>20}  {e['name'] or '-':<16} {e['status']:<12} {version}; "
            f"last reply {e['last_reply'] or 'never'}"
        )
        if e["last_refusal"]:
            lines.append(f"  {'':>20}  last refusal {e['last_refusal_at']}: {str(e['last_refusal'])[:160]}")
    return lines
