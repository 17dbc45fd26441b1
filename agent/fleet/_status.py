"""`fleet status`: one row per node from its retained status and report.

A row says whether the node is fine (online, healthy, converged), so the command's exit
code needs nothing else. A report that does not parse is a row with its error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.fleet._rollout import FAILED_STATES
from agent.fleet._view import FleetView, NodeView

COLUMNS = (
    "NODE",
    "STATE",
    "GROUPS",
    "MODULES",
    "DESIRED",
    "HEALTH",
    "DEVICES",
    "OUTBOX",
    "LAST SEEN",
)
_REASON_CHARS = 60


@dataclass
class NodeRow:
    node: str
    state: str
    """online, offline, or unknown (no status, or one that does not parse)."""
    ok: bool
    groups: list[str] = field(default_factory=list)
    modules: list[dict[str, Any]] = field(default_factory=list)
    desired: str = "-"
    healthy: bool | None = None
    reasons: list[str] = field(default_factory=list)
    devices_online: int = 0
    devices_total: int = 0
    outbox_depth: int | None = None
    outbox_dropped: int | None = None
    last_seen: float | None = None
    errors: list[str] = field(default_factory=list)

    def cells(self, now: float) -> tuple[str, ...]:
        health = "-" if self.healthy is None else "healthy" if self.healthy else "unhealthy"
        if self.reasons:
            health += ": " + _short("; ".join(self.reasons))
        return (
            self.node,
            self.state,
            ",".join(self.groups) or "-",
            ", ".join(f"{m['name']} {m['version'] or '?'}" for m in self.modules) or "-",
            self.desired,
            health if not self.errors else "error: " + _short("; ".join(self.errors)),
            f"{self.devices_online}/{self.devices_total}",
            "-" if self.outbox_depth is None else str(self.outbox_depth),
            "-" if self.last_seen is None else _age(now - self.last_seen),
        )


def rows(view: FleetView, group: str | None) -> list[NodeRow]:
    """Every node, or those whose report lists `group`, sorted by id."""
    nodes = sorted(view.nodes.values(), key=lambda n: n.node)
    return [_row(n) for n in nodes if group is None or _in_group(n, group)]


def render(table: Sequence[NodeRow], now: float) -> str:
    lines = [COLUMNS, *(row.cells(now) for row in table)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _in_group(node: NodeView, group: str) -> bool:
    return node.report is not None and group in node.report.groups


def _row(node: NodeView) -> NodeRow:
    state = "unknown"
    if node.status is not None:
        state = "online" if node.online else str(node.status["state"])
    errors = [e for e in (node.status_error, node.report_error) if e is not None]
    report = node.report
    if report is None:
        if not errors:
            errors.append("no report")
        return NodeRow(node.node, state, ok=False, errors=errors)
    failed = [w for w in report.desired if w.state in FAILED_STATES]
    pending = [w for w in report.desired if w.state not in FAILED_STATES | {"converged"}]
    if failed or report.desired_errors:
        why = [f"{w.name}: {w.reason or w.state}" for w in failed] + list(report.desired_errors)
        desired = "failed: " + _short("; ".join(why))
    elif pending:
        desired = "converging: " + ", ".join(w.name for w in pending)
    else:
        desired = "converged" if report.desired else "-"
    return NodeRow(
        node.node,
        state,
        ok=state == "online"
        and report.healthy
        and not (failed or pending or report.desired_errors or errors),
        groups=list(report.groups),
        modules=[m.model_dump() for m in report.modules],
        desired=desired,
        healthy=report.healthy,
        reasons=list(report.reasons),
        devices_online=sum(d.state == "online" for d in report.devices),
        devices_total=len(report.devices),
        outbox_depth=report.outbox_depth,
        outbox_dropped=report.outbox_dropped,
        last_seen=report.ts,
        errors=errors,
    )


def _short(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"
