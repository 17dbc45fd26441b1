"""The status snapshot: what a running agent reports about itself, and whether it is healthy.

The runtime builds a `StatusSnapshot` on demand from its components; the control socket,
the `status` MQTT command and the Prometheus endpoint all serve that one object, so the
three never disagree. This module only describes and judges state: it gathers nothing.

Parsing ignores unknown keys so an older `edge-agent status` can read a newer agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from agent.wasm import Engine

DeviceState = Literal["starting", "online", "offline"]
ModuleState = Literal["loading", "running", "failed", "stopped"]


class _Status(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class EngineStatus(_Status):
    name: str
    version: str
    mode: str
    """How code runs: `cranelift`, `aot` or `interpreter`."""

    @classmethod
    def of(cls, engine: Engine) -> EngineStatus:
        return cls(name=engine.name, version=engine.version, mode=engine.mode)


class AgentStatus(_Status):
    version: str
    node_id: str
    pid: int
    started_at: float
    """Unix time the agent started."""
    uptime_s: float = Field(ge=0)
    engine: EngineStatus


class JournalStatus(_Status):
    depth: int = Field(ge=0)
    """Readings on disk that some module has not taken yet."""
    bytes: int = Field(ge=0)
    dropped: int = Field(0, ge=0)
    """Readings dropped by the journal's bounds before every module had them."""


class MqttStatus(_Status):
    broker: str
    """`host:port` of the broker connected to, or being tried (one of `mqtt.hosts`)."""
    connected: bool
    outbox_depth: int = Field(0, ge=0)
    """Messages stored on disk, waiting for the broker."""
    oldest_age_s: float | None = None
    """Age of the oldest message in the outbox; None when it is empty."""
    dropped: int = Field(0, ge=0)
    """Messages the outbox discarded because it was full."""
    reconnects: int = Field(0, ge=0)
    failovers: int = Field(0, ge=0)
    """Connections made to another node of a clustered broker than the one before."""
    published: int = Field(0, ge=0)
    """Messages the broker acknowledged since the agent started."""
    last_error: str | None = None


class SparkplugStatus(_Status):
    connected: bool
    """Whether the Sparkplug session's own broker connection is up."""
    bd_seq: int = Field(0, ge=0)
    """The bdSeq of the current (or last) session's births."""
    births: int = Field(0, ge=0)
    """Node births (NBIRTH and the DBIRTHs) sent since the agent started."""
    commands_refused: int = Field(0, ge=0)
    """NCMDs and DCMDs refused whole since the agent started."""
    last_error: str | None = None


class DeviceStatus(_Status):
    name: str
    state: DeviceState
    poll_interval_s: float = Field(gt=0)
    last_poll: float | None = None
    """Unix time of the last completed poll, successful or not."""
    polls: int = Field(0, ge=0)
    errors: int = Field(0, ge=0)
    """Failed requests since start (after retries)."""
    skipped: int = Field(0, ge=0)
    """Polls skipped because the previous one of the same group was still running."""
    last_error: str | None = None


class ModuleStatus(_Status):
    name: str
    version: str | None = None
    digest: str | None = None
    state: ModuleState
    invocations: int = Field(0, ge=0)
    errors: int = Field(0, ge=0)
    last_error: str | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    memory_pages: int | None = None
    fuel_used: int | None = None
    """Instructions used by all calls; None where fuel is not metered."""


class ModelStatus(_Status):
    name: str
    size: int = Field(ge=0)
    """Bytes."""
    digest: str


@dataclass(frozen=True)
class Health:
    healthy: bool
    reasons: tuple[str, ...]
    """Why it is unhealthy, one line per problem; empty when healthy."""


class StatusSnapshot(_Status):
    agent: AgentStatus
    mqtt: MqttStatus | None = None
    """None when the agent has no broker configured."""
    journal: JournalStatus | None = None
    sparkplug: SparkplugStatus | None = None
    """None when Sparkplug B is not enabled."""
    devices: tuple[DeviceStatus, ...] = ()
    modules: tuple[ModuleStatus, ...] = ()
    models: tuple[ModelStatus, ...] = ()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def health(self) -> Health:
        return judge(self)


SnapshotProvider = Callable[[], StatusSnapshot]
"""Builds the current snapshot; the runtime injects one into every status consumer."""


def judge(snapshot: StatusSnapshot) -> Health:
    """Unhealthy when MQTT is disconnected, a device is offline or a module has failed."""
    reasons: list[str] = []
    mqtt = snapshot.mqtt
    if mqtt is not None and not mqtt.connected:
        why = f": {mqtt.last_error}" if mqtt.last_error else ""
        reasons.append(f"MQTT disconnected from {mqtt.broker}{why}")
    for device in snapshot.devices:
        if device.state == "offline":
            why = f": {device.last_error}" if device.last_error else ""
            reasons.append(f"device {device.name!r} offline{why}")
    for module in snapshot.modules:
        if module.state == "failed":
            why = f": {module.last_error}" if module.last_error else ""
            reasons.append(f"module {module.name!r} failed{why}")
    return Health(healthy=not reasons, reasons=tuple(reasons))
