"""The config schema: frozen pydantic models that refuse unknown keys.

Validation happens once, at load; everything downstream receives these objects and
trusts them. Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from agent.errors import ConfigError
from agent.modbus._map import RegisterMap, load_register_map
from agent.wasm import Limits, Preopen, WasiSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is None or path.is_absolute():
        return path
    return (Path(base) / path).resolve()


ConfigPath = Annotated[Path, AfterValidator(_resolve)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Model):
    id: str = Field(default_factory=socket.gethostname, pattern=NAME_PATTERN)
    """The node's name in MQTT topics and status; the host name unless set."""
    state_dir: ConfigPath = Path("/var/lib/edge-agent")
    """Where the agent keeps its store, caches and outbox."""


class EngineConfig(_Model):
    kind: Literal["auto", "wasmedge", "wasmtime"] = "auto"
    wasmedge_lib: ConfigPath | None = None
    """Exact path of libwasmedge.so; otherwise WASMEDGE_LIB and the usual places."""
    aot: bool = True
    """Compile ahead of time on WasmEdge where the library has the compiler."""


class LimitsConfig(_Model):
    memory_pages: int = Field(256, ge=1, le=65536)
    deadline_ms: int | None = Field(1000, ge=1, le=600_000)
    fuel: int | None = Field(None, ge=1)
    max_emit_bytes: int = Field(65536, ge=1, le=16 * 1024 * 1024)

    def to_limits(self) -> Limits:
        return Limits(self.memory_pages, self.deadline_ms, self.fuel, self.max_emit_bytes)


class PreopenConfig(_Model):
    host: ConfigPath
    guest: str = Field(pattern=r"^/[^\x00:]*$")
    """Absolute path inside the module's WASI filesystem."""
    writable: bool = False


class WasiConfig(_Model):
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    dirs: tuple[PreopenConfig, ...] = ()

    def to_spec(self) -> WasiSpec:
        return WasiSpec(
            args=self.args,
            env=tuple(self.env.items()),
            dirs=tuple(Preopen(d.host, d.guest, d.writable) for d in self.dirs),
        )


class ModuleConfig(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    path: ConfigPath
    """A local .wasm file."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Handed to the module once per instance, as JSON (`edge_configure`)."""
    emit: tuple[str, ...] = ("#",)
    """Topic filters (MQTT wildcards) the module may emit to, relative to the node."""
    limits: LimitsConfig | None = None
    """Overrides the agent's default limits for this module."""
    wasi: WasiConfig = WasiConfig()


class SerialConfig(_Model):
    port: str = Field(min_length=1)
    """The serial device, e.g. /dev/ttyUSB0."""
    baudrate: int = Field(19200, ge=300, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class DeviceConfig(_Model):
    """One Modbus device. Devices with the same address share one connection and its lock."""

    name: str = Field(pattern=NAME_PATTERN)
    transport: Literal["tcp", "rtu", "rtu-tcp"]
    """Modbus TCP, RTU over a serial line, or RTU frames over TCP (serial gateways)."""
    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    serial: SerialConfig | None = None
    unit: int = Field(1, ge=0, le=255)
    map: ConfigPath
    """The register map file (`config/devices/*.toml`)."""
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=10)
    retry_backoff_s: float = Field(0.05, ge=0, le=10)
    """First pause before a retry; doubles with each further one."""
    reconnect_max_s: float = Field(10.0, ge=0.01, le=3600)
    """Longest pause between attempts to reopen a lost connection."""
    connect_pause_s: float = Field(0.0, ge=0, le=60)
    request_pause_s: float = Field(0.0, ge=0, le=60)
    single_register_reads: bool = False
    """For devices that only answer reads of one register (or bit) at a time."""
    max_gap: int = Field(8, ge=0, le=124)
    """Unused addresses a merged read may span to save a request."""
    _map: RegisterMap = PrivateAttr()

    @model_validator(mode="after")
    def _check(self) -> DeviceConfig:
        if self.transport == "rtu" and (self.serial is None or self.host is not None):
            raise ValueError("transport 'rtu' needs [devices.serial] and no host")
        if self.transport != "rtu" and (self.host is None or self.serial is not None):
            raise ValueError(f"transport {self.transport!r} needs host (and no serial)")
        try:
            self._map = load_register_map(self.map)
        except ConfigError as err:
            raise ValueError(str(err)) from err
        return self

    @property
    def register_map(self) -> RegisterMap:
        return self._map

    @property
    def connection(self) -> tuple[str, str, int]:
        """What identifies the connection; devices that share it share its lock."""
        if self.serial is not None:
            return ("serial", self.serial.port, 0)
        return ("tcp", self.host or "", self.port)

    def connection_settings(self) -> tuple[object, ...]:
        return (
            self.transport,
            self.serial,
            self.timeout_s,
            self.reconnect_max_s,
            self.connect_pause_s,
            self.request_pause_s,
        )


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"


class AgentConfig(_Model):
    node: NodeConfig = NodeConfig()
    engine: EngineConfig = EngineConfig()
    limits: LimitsConfig = LimitsConfig()
    """Default limits of every module instance."""
    modules: tuple[ModuleConfig, ...] = ()
    logging: LoggingConfig = LoggingConfig()
    devices: tuple[DeviceConfig, ...] = ()

    @model_validator(mode="after")
    def _unique_module_names(self) -> AgentConfig:
        seen: set[str] = set()
        for module in self.modules:
            if module.name in seen:
                raise ValueError(f"module name {module.name!r} is used twice")
            seen.add(module.name)
        return self

    @model_validator(mode="after")
    def _devices_consistent(self) -> AgentConfig:
        names: set[str] = set()
        first: dict[tuple[str, str, int], DeviceConfig] = {}
        units: set[tuple[tuple[str, str, int], int]] = set()
        for device in self.devices:
            if device.name in names:
                raise ValueError(f"device name {device.name!r} is used twice")
            names.add(device.name)
            other = first.setdefault(device.connection, device)
            if other.connection_settings() != device.connection_settings():
                raise ValueError(
                    f"devices {other.name!r} and {device.name!r} share a connection, so "
                    "transport, serial, timeout_s, reconnect_max_s and pauses must match"
                )
            if (device.connection, device.unit) in units:
                raise ValueError(f"device {device.name!r}: unit {device.unit} is used twice")
            units.add((device.connection, device.unit))
        return self

    def limits_for(self, module: ModuleConfig) -> Limits:
        return (module.limits or self.limits).to_limits()
