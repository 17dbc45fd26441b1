"""The `[[devices]]` section: Modbus devices, their connections and their register maps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from agent.config._fields import NAME_PATTERN, ConfigPath
from agent.config._registers import RegisterMap, load_register_map
from agent.errors import ConfigError
from agent.validation import StrictModel


class SerialConfig(StrictModel):
    port: str = Field(min_length=1)
    """The serial device, e.g. /dev/ttyUSB0."""
    baudrate: int = Field(19200, ge=300, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class Connection(StrictModel):
    """A Modbus connection: one socket or serial line, with its lock and its pacing.

    Devices whose connections have the same `key` share one, so the rest must match.
    """

    transport: Literal["tcp", "rtu", "rtu-tcp"]
    host: str
    """The host, or for `rtu` the serial port."""
    port: int
    serial: SerialConfig | None
    timeout_s: float
    reconnect_max_s: float
    connect_pause_s: float
    request_pause_s: float

    @property
    def name(self) -> str:
        """How logs and errors name it: `host:port` or the serial port."""
        return self.host if self.serial is not None else f"{self.host}:{self.port}"

    @property
    def key(self) -> tuple[str, str, int]:
        if self.serial is not None:
            return ("serial", self.serial.port, 0)
        return ("tcp", self.host, self.port)


class DeviceConfig(StrictModel):
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
    _connection: Connection = PrivateAttr()

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
        shared = {k: getattr(self, k) for k in Connection.model_fields if k != "host"}
        host = self.serial.port if self.serial is not None else self.host or ""
        self._connection = Connection(host=host, **shared)
        return self

    @property
    def register_map(self) -> RegisterMap:
        return self._map

    @property
    def connection(self) -> Connection:
        return self._connection
