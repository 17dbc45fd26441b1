"""Whether the operator's tool counts a node as online."""

from __future__ import annotations

import json

from agent.fleet import Report
from agent.fleet._view import FleetView


def report(node: str, ts: float) -> bytes:
    return Report(node=node, ts=ts, agent="0.1.0", healthy=True).payload()


def status(state: str, ts: float) -> bytes:
    return json.dumps({"state": state, "version": "0.1.0", "ts": ts}).encode()


def test_online_is_the_status_or_a_report_newer_than_an_offline_status() -> None:
    view = FleetView("edge")
    view.update("edge/a/status", status("online", 100.0))
    view.update("edge/b/status", status("offline", 100.0))
    view.update("edge/b/report", report("b", 90.0))  # its last report, before it died
    view.update("edge/c/status", status("offline", 100.0))
    view.update("edge/c/report", report("c", 130.0))  # alive again; its `online` was lost
    view.update("edge/d/report", report("d", 130.0))  # no status kept by the broker
    view.update("edge/e/status", status("offline", 100.0))
    online = {name: node.online for name, node in view.nodes.items()}
    assert online == {"a": True, "b": False, "c": True, "d": True, "e": False}
