"""An optional Prometheus endpoint: GET /metrics renders the status snapshot as text.

A minimal HTTP/1.0-style responder (one request per connection, then close) is enough
for a scraper and avoids a dependency; the figures come only from the snapshot, so the
endpoint can never disagree with `edge-agent status`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent._oneshot import OneShotServer
from agent.errors import AgentError
from agent.status import SnapshotProvider, StatusSnapshot

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEADER_BYTES = 8192


class MetricsServer(OneShotServer):
    """`async with MetricsServer("127.0.0.1:9464", provider) as m:` serves until exit."""

    def __init__(self, listen: str, provider: SnapshotProvider, *, timeout_s: float = 5.0) -> None:
        super().__init__(timeout_s)
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._provider = provider

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        if self._server is None:
            raise AgentError("the metrics server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> MetricsServer:
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_HEADER_BYTES
            )
        except OSError as err:
            raise AgentError(f"cannot serve metrics on {self._host}:{self._port}: {err}") from err
        log.info("metrics: http://%s:%d/metrics", self._host, self.port)
        return self

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        return await reader.readuntil(b"\r\n\r\n")

    def _answer(self, request: bytes) -> bytes:
        method, _, rest = request.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET":
            return _http(405, "method not allowed\n", extra="Allow: GET\r\n")
        if path != b"/metrics":
            return _http(404, "not found; try /metrics\n")
        try:
            snapshot = self._provider()
        except Exception:
            log.exception("metrics: the status provider failed")
            return _http(500, "the agent could not build its status\n")
        return _http(200, render_metrics(snapshot), content_type=CONTENT_TYPE)


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


def _http(code: int, body: str, *, content_type: str = "text/plain", extra: str = "") -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode() + data


def render_metrics(snapshot: StatusSnapshot) -> str:
    """The snapshot in Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for family in _families(snapshot):
        lines.extend(family.lines())
    return "".join(f"{line}\n" for line in lines)


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float | None]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float | None) -> None:
        self.samples.append((labels, value))

    def lines(self) -> Iterator[str]:
        present = [(labels, value) for labels, value in self.samples if value is not None]
        if not present:
            return
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in present:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            yield f"{self.name}{{{text}}} {value!r}" if text else f"{self.name} {value!r}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _refused(sparkplug: Any) -> int:
    """A function, as a lambda would put its table row past the line length."""
    return int(sparkplug.commands_refused)


# (metric suffix, type, help, value from the part's status) per part of the snapshot.
_MQTT = [
    ("mqtt_connected", "gauge", "1 when connected to the broker.", lambda m: m.connected),
    ("outbox_messages", "gauge", "Messages waiting in the outbox.", lambda m: m.outbox_depth),
    (
        "outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest waiting message.",
        lambda m: m.oldest_age_s,
    ),
    ("outbox_dropped_total", "counter", "Messages dropped by a full outbox.", lambda m: m.dropped),
    ("mqtt_reconnects_total", "counter", "Reconnections to the broker.", lambda m: m.reconnects),
    (
        "mqtt_failovers_total",
        "counter",
        "Connections made to another broker node than the one before.",
        lambda m: m.failovers,
    ),
]
_JOURNAL = [
    ("journal_readings", "gauge", "Readings not yet taken by every module.", lambda j: j.depth),
    ("journal_bytes", "gauge", "Bytes of those readings.", lambda j: j.bytes),
    ("journal_dropped_total", "counter", "Readings dropped by the bounds.", lambda j: j.dropped),
]
_SPARKPLUG = [
    ("sparkplug_connected", "gauge", "1 when the Sparkplug session is up.", lambda s: s.connected),
    ("sparkplug_bd_seq", "gauge", "bdSeq of the last births.", lambda s: s.bd_seq),
    ("sparkplug_births_total", "counter", "Node births sent.", lambda s: s.births),
    ("sparkplug_commands_refused_total", "counter", "NCMDs and DCMDs refused.", _refused),
]
_DEVICES = [
    ("device_up", "gauge", "1 when the device answers.", lambda d: d.state == "online"),
    ("device_polls_total", "counter", "Successful polls.", lambda d: d.polls),
    ("device_errors_total", "counter", "Failed polls.", lambda d: d.errors),
    ("device_last_poll_timestamp_seconds", "gauge", "Last good poll.", lambda d: d.last_poll),
    ("device_poll_interval_seconds", "gauge", "Poll interval.", lambda d: d.poll_interval_s),
]
_MODULES = [
    ("module_up", "gauge", "1 when the module is running.", lambda m: m.state == "running"),
    ("module_invocations_total", "counter", "Calls into the module.", lambda m: m.invocations),
    ("module_errors_total", "counter", "Calls that failed.", lambda m: m.errors),
    ("module_memory_bytes", "gauge", "Linear memory size.", lambda m: _pages(m.memory_pages)),
    ("module_fuel_used_total", "counter", "Instructions used (fuel).", lambda m: m.fuel_used),
]


def _pages(pages: int | None) -> int | None:
    return None if pages is None else pages * 65536


def _table(
    specs: list[tuple[str, str, str, Callable[[Any], Any]]],
    parts: Iterable[tuple[dict[str, str], Any]],
) -> list[_Family]:
    families = [_Family(f"edge_agent_{name}", kind, text) for name, kind, text, _ in specs]
    for labels, part in parts:
        for family, (*_, value) in zip(families, specs, strict=True):
            raw = value(part)
            family.add(labels, None if raw is None else float(raw))
    return families


def _families(s: StatusSnapshot) -> list[_Family]:
    a = s.agent
    info = _Family("edge_agent_info", "gauge", "Agent build and engine.")
    info.add(
        {
            "version": a.version,
            "node": a.node_id,
            "engine": a.engine.name,
            "engine_version": a.engine.version,
            "engine_mode": a.engine.mode,
        },
        1.0,
    )
    uptime = _Family("edge_agent_uptime_seconds", "gauge", "Seconds since start.")
    uptime.add({}, a.uptime_s)
    healthy = _Family("edge_agent_healthy", "gauge", "1 when edge-agent status would exit 0.")
    healthy.add({}, float(s.health.healthy))
    latency = _Family("edge_agent_module_latency_seconds", "gauge", "Latency of recent calls.")
    for m in s.modules:
        for quantile, ms in (("0.5", m.p50_ms), ("0.99", m.p99_ms)):
            latency.add({"module": m.name, "quantile": quantile}, None if ms is None else ms / 1000)
    models = _Family("edge_agent_model_size_bytes", "gauge", "Size of a loaded model.")
    for model in s.models:
        models.add({"model": model.name, "digest": model.digest}, float(model.size))
    mqtt = [] if s.mqtt is None else [({"broker": s.mqtt.broker}, s.mqtt)]
    return [
        info,
        uptime,
        healthy,
        *_table(_MQTT, mqtt),
        *_table(_JOURNAL, [] if s.journal is None else [({}, s.journal)]),
        *_table(_SPARKPLUG, [] if s.sparkplug is None else [({}, s.sparkplug)]),
        *_table(_DEVICES, [({"device": d.name}, d) for d in s.devices]),
        *_table(_MODULES, [({"module": m.name}, m) for m in s.modules]),
        latency,
        models,
    ]
