"""The demo's live terminal view, built from what arrives at the broker.

It knows the topic layout (`devices/<device>` for raw readings, the modules' own
topics, anything with an `anomaly` flag or under `alerts/`, and the Sparkplug B
topics of the node's group, `spBv1.0/<group>/<type>/<node>[/<device>]`) and nothing
else: it sees what any MQTT subscriber of the node would see. Sparkplug payloads are
protobuf: the view shows their type, device and size, not their metrics.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent._json import parse_json

_RECENT_ALERTS = 8


@dataclass
class _Topic:
    count: int = 0
    last: Any = None
    at: float = 0.0


@dataclass
class DemoView:
    """Collects the node's messages; `render()` draws the current picture."""

    root: str
    """`<prefix>/<node>`: the part of every topic the view leaves out."""
    started: float = field(default_factory=time.monotonic)
    readings: dict[str, _Topic] = field(default_factory=dict)
    outputs: dict[str, _Topic] = field(default_factory=dict)
    alerts: deque[tuple[str, Any]] = field(default_factory=lambda: deque(maxlen=_RECENT_ALERTS))
    status: str = "connecting"
    total: int = 0
    sparkplug_root: str | None = None
    """`spBv1.0/<group>` when the node speaks Sparkplug B; None when it does not."""
    sparkplug: dict[str, _Topic] = field(default_factory=dict)
    """By `<type> <device or node>`: the count and the last payload's size in bytes."""

    def plain(self, topic: str, payload: bytes) -> str:
        """A message as `--plain` prints it after its topic: JSON as it is, Sparkplug's
        protobuf as its size."""
        if self._sparkplug_key(topic) is not None:
            return f"[Sparkplug B, {len(payload)} bytes]"
        return payload.decode("utf-8", "replace")

    def _sparkplug_key(self, topic: str) -> str | None:
        if self.sparkplug_root is None or not topic.startswith(self.sparkplug_root + "/"):
            return None
        kind, _, rest = topic[len(self.sparkplug_root) + 1 :].partition("/")
        return f"{kind} {rest.replace('/', ' / ')}"

    def update(self, topic: str, payload: bytes) -> None:
        if (key := self._sparkplug_key(topic)) is not None:
            entry = self.sparkplug.setdefault(key, _Topic())
            entry.count += 1
            entry.last = len(payload)
            entry.at = time.monotonic()
            return
        if not topic.startswith(self.root + "/"):
            return
        relative = topic[len(self.root) + 1 :]
        try:
            body: Any = parse_json(payload)
        except ValueError:
            body = payload.decode("utf-8", "replace")
        if relative == "status":
            self.status = body.get("state", "?") if isinstance(body, dict) else str(body)
            return
        self.total += 1
        if relative.startswith("alerts/"):
            self.alerts.appendleft((relative, body))
        table = self.readings if relative.startswith("devices/") else self.outputs
        entry = table.setdefault(relative, _Topic())
        entry.count += 1
        entry.at = time.monotonic()
        if table is self.readings and isinstance(entry.last, dict) and isinstance(body, dict):
            # A device's register groups arrive as separate readings: keep every value.
            body = {**body, "values": {**entry.last.get("values", {}), **body.get("values", {})}}
        entry.last = body

    def render(self) -> RenderableType:
        uptime = time.monotonic() - self.started
        header = Text.assemble(
            ("edge-agent demo  ", "bold"),
            (f"{self.root}  ", "cyan"),
            (f"agent {self.status}  ", "green" if self.status == "online" else "yellow"),
            f"{self.total} messages in {uptime:.0f} s   Ctrl-C stops",
        )
        parts: list[RenderableType] = [header, self._readings(), self._outputs()]
        if self.sparkplug_root is not None:
            parts.append(self._sparkplug())
        return Group(*parts, self._alerts())

    def _readings(self) -> Table:
        table = Table(title="Device readings (raw)", expand=True, title_justify="left")
        table.add_column("device")
        table.add_column("seq", justify="right")
        table.add_column("values")
        for topic, entry in sorted(self.readings.items()):
            doc = entry.last if isinstance(entry.last, dict) else {}
            shown = _values(doc.get("values"))
            table.add_row(topic.removeprefix("devices/"), str(doc.get("seq", "")), shown)
        return table

    def _outputs(self) -> Table:
        table = Table(title="Module outputs", expand=True, title_justify="left")
        table.add_column("topic")
        table.add_column("count", justify="right")
        table.add_column("latest")
        for topic, entry in sorted(self.outputs.items()):
            if topic.startswith("alerts/"):
                continue
            table.add_row(topic, str(entry.count), _summary(entry.last))
        return table

    def _sparkplug(self) -> Table:
        title = f"Sparkplug B ({self.sparkplug_root}/#)"
        table = Table(title=title, expand=True, title_justify="left")
        table.add_column("message")
        table.add_column("count", justify="right")
        table.add_column("last size", justify="right")
        for key, entry in sorted(self.sparkplug.items()):
            table.add_row(key, str(entry.count), f"{entry.last} B")
        return table

    def _alerts(self) -> Panel:
        if not self.alerts:
            return Panel("no anomaly alert yet", title="Anomalies", title_align="left")
        lines = [f"{topic}: {_summary(body)}" for topic, body in self.alerts]
        return Panel("\n".join(lines), title="Anomalies", title_align="left", style="red")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1000 else f"{value:.2f}"
    return str(value)


def _summary(body: Any) -> str:
    """One line per message: the scores and statistics matter, not the envelope."""
    if not isinstance(body, dict):
        return str(body)[:120]
    who = f"{body.get('device', '?')} #{body.get('seq', '?')}: "
    if "score" in body:
        score = _number(body["score"])
        if "anomaly" in body:
            return f"{who}score {score} {'ANOMALY' if body['anomaly'] else 'normal'}"
        return f"{who}score {score} reached the threshold {_number(body.get('threshold'))}"
    if isinstance(body.get("channels"), dict):
        return who + "; ".join(
            f"{name} mean {_number(s.get('mean'))} std {_number(s.get('std'))}"
            for name, s in body["channels"].items()
            if isinstance(s, dict)
        )
    if isinstance(body.get("values"), dict):
        return who + _values(body["values"])
    return json.dumps(body)[:120]


def _values(values: Any) -> str:
    """`name value unit` per value, with the quality when it is not good."""
    if not isinstance(values, dict):
        return ""
    return "  ".join(
        f"{name} {_number(v.get('value'))}{' ' + v['unit'] if v.get('unit') else ''}"
        + ("" if v.get("quality", "good") == "good" else f" ({v['quality']})")
        for name, v in values.items()
        if isinstance(v, dict)
    )
