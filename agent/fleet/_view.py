"""What the operator knows of the fleet: the retained statuses, reports and documents.

Fed `(topic, payload)` pairs in broker order, from one retained read or a live
subscription; a payload that does not parse is kept as its error, never raised, so one
bad node cannot hide the others. It must not publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent._json import parse_json
from agent.config import RESERVED_NODE_IDS
from agent.errors import DesiredStateError
from agent.fleet._documents import (
    DesiredDocument,
    Report,
    parse_desired,
    parse_report,
)


@dataclass
class NodeView:
    node: str
    status: dict[str, Any] | None = None
    status_error: str | None = None
    report: Report | None = None
    report_error: str | None = None

    @property
    def online(self) -> bool:
        """The link's retained status says online (its will says offline when it dies),
        or a report came after the status: a clustered broker that loses a node can lose
        the `online` a node published on connecting to another, not its later reports."""
        status = self.status
        if status is not None and status.get("state") == "online":
            return True
        if self.report is None:
            return False
        since = status.get("ts") if status is not None else None
        return not isinstance(since, int | float) or self.report.ts > since

    @property
    def empty(self) -> bool:
        return self.status is None and self.status_error is None and not self.has_report

    @property
    def has_report(self) -> bool:
        return self.report is not None or self.report_error is not None


class FleetView:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: dict[str, NodeView] = {}
        self.rollouts: dict[str, bytes] = {}
        """The retained rollout payload by group."""
        self._desired: dict[str, DesiredDocument] = {}
        self._desired_errors: dict[str, str] = {}

    def update(self, topic: str, payload: bytes) -> None:
        """Take one retained or live message; an empty payload clears its topic."""
        if not topic.startswith(self.prefix + "/"):
            return
        levels = topic.removeprefix(self.prefix + "/").split("/")
        if len(levels) == 3 and levels[0] == "group" and levels[2] == "rollout":
            self._set(self.rollouts, levels[1], payload)
        elif levels[-1] == "desired" and len(levels) in (2, 3):
            self._take_desired(topic, payload)
        elif (
            len(levels) == 2
            and levels[0] not in RESERVED_NODE_IDS
            and levels[1] in ("status", "report")
        ):
            self._take_node(levels[0], levels[1], topic, payload)

    def desired(self, topic: str) -> DesiredDocument | None:
        """The document retained on `topic`, None when there is none; DesiredStateError
        when what is there does not parse."""
        if topic in self._desired_errors:
            raise DesiredStateError(self._desired_errors[topic])
        return self._desired.get(topic)

    def members(self, group: str) -> list[str]:
        """Nodes whose report lists `group`, sorted by id."""
        return sorted(
            n
            for n, view in self.nodes.items()
            if view.report is not None and group in view.report.groups
        )

    def _take_desired(self, topic: str, payload: bytes) -> None:
        self._desired.pop(topic, None)
        self._desired_errors.pop(topic, None)
        try:
            document = parse_desired(topic, payload, None)
        except DesiredStateError as err:
            self._desired_errors[topic] = str(err)
            return
        if document is not None:
            self._desired[topic] = document

    def _take_node(self, node: str, kind: str, topic: str, payload: bytes) -> None:
        view = self.nodes.setdefault(node, NodeView(node))
        if kind == "status":
            view.status, view.status_error = _status(topic, payload)
        elif kind == "report":
            view.report, view.report_error = None, None
            if payload:
                try:
                    view.report = parse_report(topic, payload)
                except DesiredStateError as err:
                    view.report_error = str(err)
        if view.empty:
            del self.nodes[node]

    @staticmethod
    def _set(table: dict[str, bytes], key: str, payload: bytes) -> None:
        if payload:
            table[key] = payload
        else:
            table.pop(key, None)


def _status(topic: str, payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    if not payload:
        return None, None
    try:
        status = parse_json(payload)
    except ValueError as err:
        return None, f"{topic}: not JSON: {err}"
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        return None, f'{topic}: expected {{"state": "online"|"offline", ...}}'
    return status, None
