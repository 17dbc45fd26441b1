"""The config schema: frozen pydantic models that refuse unknown keys.

Validation happens once, at load; everything downstream receives these objects and
trusts them. Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from agent.config._devices import DeviceConfig
from agent.config._fields import NAME_PATTERN, ConfigPath, Endpoint, split_endpoint
from agent.config._node import FleetConfig, NodeConfig
from agent.config._opcua import OpcuaDeviceConfig, any_device
from agent.topics import matches
from agent.validation import StrictModel, check_unique
from agent.wasm import Limits, Preopen, WasiSpec


def _resolve_layout_ref(ref: str, info: ValidationInfo) -> str:
    """`oci:DIR...` references name a directory: relative to the config file too."""
    if not ref.startswith("oci:") or ref[4:].startswith("/"):
        return ref
    base = (info.context or {}).get("base_dir")
    return ref if base is None else f"oci:{(Path(base) / ref[4:]).resolve()}"


ModuleRef = Annotated[str, AfterValidator(_resolve_layout_ref)]


class EngineConfig(StrictModel):
    kind: Literal["auto", "wasmedge", "wasmtime"] = "auto"
    wasmedge_lib: ConfigPath | None = None
    """Exact path of libwasmedge.so; otherwise WASMEDGE_LIB and the usual places."""
    aot: bool = True
    """Compile ahead of time on WasmEdge where the library has the compiler."""


class LimitsConfig(StrictModel):
    memory_pages: int = Field(256, ge=1, le=65536)
    deadline_ms: int | None = Field(1000, ge=1, le=600_000)
    fuel: int | None = Field(None, ge=1)
    max_emit_bytes: int = Field(65536, ge=1, le=16 * 1024 * 1024)

    def to_limits(self) -> Limits:
        return Limits(self.memory_pages, self.deadline_ms, self.fuel, self.max_emit_bytes)


class PreopenConfig(StrictModel):
    host: ConfigPath
    guest: str = Field(pattern=r"^/[^\x00:]*$")
    """Absolute path inside the module's WASI filesystem."""
    writable: bool = False


class WasiConfig(StrictModel):
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    dirs: tuple[PreopenConfig, ...] = ()

    def to_spec(self) -> WasiSpec:
        return WasiSpec(
            args=self.args,
            env=tuple(self.env.items()),
            dirs=tuple(Preopen(d.host, d.guest, d.writable) for d in self.dirs),
        )


class ModuleConfig(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    ref: ModuleRef | None = None
    """A signed module in a registry or OCI layout (`host/repo:tag`, `...@sha256:...`,
    `oci:DIR:TAG`): pulled, verified and kept up to date by the supply."""
    path: ConfigPath | None = None
    """A local .wasm file, unsigned: `module run`, or the daemon with
    `supply.allow_unsigned_paths`. The other keys override a signed module's manifest."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Handed to the module once per instance, as JSON (`edge_configure`)."""
    emit: tuple[str, ...] = ("#",)
    """Topic filters (MQTT wildcards) the module may emit to, relative to the node."""
    limits: LimitsConfig | None = None
    """Overrides the agent's default limits for this module."""
    wasi: WasiConfig = WasiConfig()
    devices: tuple[str, ...] = ()
    """Devices whose readings the module takes; empty means every device."""
    after: str | None = None
    """Take the reading documents another module emits instead of devices' readings."""
    models: dict[Annotated[str, Field(pattern=NAME_PATTERN)], ConfigPath] = Field(
        default_factory=dict
    )
    """TFLite models preloaded for WASI-NN `load_by_name`: name -> file."""

    @model_validator(mode="after")
    def _one_source(self) -> ModuleConfig:
        if (self.ref is None) == (self.path is None):
            raise ValueError(f"module {self.name!r} needs either ref (signed) or path, not both")
        return self


class PipelineConfig(StrictModel):
    raw_readings: bool = False
    """Also publish every device reading as is, on `<prefix>/<node>/devices/<device>`."""
    queue_size: int = Field(1000, ge=1, le=1_000_000)
    """Readings queued per module before its devices wait for it (backpressure)."""


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"


class RegistryConfig(StrictModel):
    host: str = Field(pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
    """`host[:port]` as it appears in module references."""
    insecure: bool = False
    """Plain HTTP instead of HTTPS; for loopback test registries only."""
    ca: ConfigPath | None = None
    """PEM CA bundle to trust for this registry instead of the system's."""
    username: str | None = None
    password_file: ConfigPath | None = None
    """File holding the password (basic auth, or to get a bearer token)."""


class PolicyConfig(StrictModel):
    """What a module's manifest may ask for; anything beyond is refused at pull."""

    emit: tuple[str, ...] = ("#",)
    """Topic filters a module's `capabilities.emit` must fall within."""
    models: bool = True
    """Whether modules may ship and load models."""
    max_model_bytes: int = Field(64 * 1024 * 1024, ge=0)
    max_layer_bytes: int = Field(128 * 1024 * 1024, ge=1)
    """Any one blob of a package (its code, a model, its config): one pinned larger is
    refused before it is requested, and none is read past the size that pins it."""
    wasi_dirs: tuple[str, ...] = ()
    """Guest paths a module may ask to have preopened."""
    wasi_writable: bool = False
    wasi_env: tuple[str, ...] = ()
    """Environment variable names a module may ask for."""
    max_memory_pages: int = Field(1024, ge=1, le=65536)
    max_deadline_ms: int = Field(10_000, ge=1)


class RolloutConfig(StrictModel):
    invocations: int = Field(20, ge=1)
    """How many invocations of a new version the guard watches."""
    max_faults: int = Field(2, ge=0)
    """Faults (trap, missed deadline) tolerated among them; one more rolls back."""


class SupplyConfig(StrictModel):
    allow_unsigned_paths: bool = False
    """Let the daemon run `[[modules]]` given by `path`, which no key signed: development only."""
    trusted_keys: tuple[ConfigPath, ...] = ()
    """cosign.pub files; a module signed by any of them is trusted (for key rotation)."""
    registries: tuple[RegistryConfig, ...] = ()
    policy: PolicyConfig = PolicyConfig()
    rollout: RolloutConfig = RolloutConfig()
    retry_attempts: int = Field(4, ge=1)
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(60.0, gt=0)


class ControlConfig(StrictModel):
    socket: ConfigPath = Path("/run/edge-agent/control.sock")
    """The local control socket `edge-agent status` asks; in systemd's RuntimeDirectory."""


class CommandsConfig(StrictModel):
    enabled: bool = True
    allow: tuple[str, ...] | None = None
    """Command names this node accepts; every command when unset."""
    max_payload_bytes: int = Field(65536, ge=64, le=16 * 1024 * 1024)
    rate_per_s: float = Field(5.0, gt=0)
    """Sustained commands per second; `burst` more may arrive at once."""
    burst: int = Field(20, ge=1)
    dedupe_size: int = Field(256, ge=1, le=100_000)
    """Recent responses kept so a duplicate id is answered again, not run again."""
    require_signature: bool = False
    trusted_keys: tuple[ConfigPath, ...] = ()
    """PEM ECDSA P-256 public keys (like cosign.pub) that may sign commands."""
    max_skew_s: int = Field(300, ge=1, le=86400)
    """How far a signed command's timestamp may be from this node's clock."""

    @model_validator(mode="after")
    def _keys_when_signing(self) -> CommandsConfig:
        if self.require_signature and not self.trusted_keys:
            raise ValueError("require_signature = true needs at least one trusted_keys entry")
        return self


def _listen_address(value: str | None) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {value!r}")
    return value


class MetricsConfig(StrictModel):
    listen: Annotated[str | None, AfterValidator(_listen_address)] = None
    """`HOST:PORT` of the Prometheus endpoint (GET /metrics); off unless set."""


TOPIC_LEVEL_PATTERN = r"^[^+#/\x00]+(/[^+#/\x00]+)*$"
"""A topic without wildcards or empty levels."""
SPARKPLUG_ID_PATTERN = r"^[^+#/\x00]+$"
"""A Sparkplug group, edge node or host id: one topic level, no wildcards."""


class TlsConfig(StrictModel):
    """TLS to the broker; the SSL context is built once, at load, so bad files fail there."""

    ca: ConfigPath | None = None
    """CA bundle that signs the broker's certificate; the system trust store unless set."""
    cert: ConfigPath | None = None
    """Client certificate (PEM) for mutual TLS; needs `key`."""
    key: ConfigPath | None = None
    insecure: bool = False
    """Skip verifying the broker's certificate and host name. Never in production."""
    _context: ssl.SSLContext = PrivateAttr()

    @model_validator(mode="after")
    def _build_context(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together (mutual TLS needs both)")
        try:
            context = ssl.create_default_context(cafile=self.ca)
            if self.cert is not None:
                context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"cannot load the TLS files ({err}); expected PEM files") from err
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._context = context
        return self

    @property
    def context(self) -> ssl.SSLContext:
        return self._context


class MqttConfig(StrictModel):
    host: str = "localhost"
    port: int | None = Field(None, ge=1, le=65535)
    """1883, or 8883 with TLS, unless set."""
    hosts: tuple[Endpoint, ...] = ()
    """The nodes of a clustered broker, `host`, `host:port` or `[ipv6]:port` (the port as
    for `host` unless given), tried in turn; excludes `host`."""
    protocol: Literal["3.1.1", "5"] = "5"
    tls: TlsConfig | None = None
    username: str | None = None
    password: str | None = None
    password_file: ConfigPath | None = None
    """Read once at load; its first line is the password. Excludes `password`."""
    keepalive: int = Field(30, ge=5, le=65535)
    client_id: str | None = Field(None, min_length=1, max_length=128)
    """The node id unless set."""
    topic_prefix: str = Field("edge", pattern=TOPIC_LEVEL_PATTERN)
    qos: Literal[0, 1] = 1
    """QoS of every published route not listed in `routes`."""
    routes: dict[str, Literal[0, 1]] = Field(default_factory=dict)
    """QoS by topic filter relative to `<prefix>/<node>/`; the first match in file order."""
    max_inflight: int = Field(32, ge=1, le=65535)
    """QoS 1 messages sent and not yet acknowledged, at most."""
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    """How long to wait for the broker's CONNACK (a TLS handshake refused late shows here)."""
    reconnect_min_s: float = Field(0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    embedded: bool = False
    """Run the embedded broker (amqtt, MQTT 3.1.1 only) on `host`:`port`, a loopback
    address: for the demo, when no external broker is configured."""
    _password: str | None = PrivateAttr(None)
    _endpoints: tuple[tuple[str, int], ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set mqtt.password or mqtt.password_file, not both")
        if self.hosts and "host" in self.model_fields_set:
            raise ValueError("set mqtt.host (one broker) or mqtt.hosts (a cluster), not both")
        if self.hosts and self.embedded:
            raise ValueError("the embedded broker is one broker: mqtt.hosts needs embedded = false")
        self._endpoints = tuple(split_endpoint(entry, self.broker_port) for entry in self.hosts)
        check_unique((f"{h}:{p}" for h, p in self._endpoints), "mqtt.hosts: the endpoint")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("mqtt.reconnect_max_s must be at least mqtt.reconnect_min_s")
        if self.embedded and self.protocol != "3.1.1":
            raise ValueError('the embedded broker (amqtt) speaks MQTT 3.1.1 only: use "3.1.1"')
        if self.embedded and not _is_loopback(self.host):
            raise ValueError(f"the embedded broker listens on loopback only, not {self.host!r}")
        self._password = self.password
        if self.password_file is not None:
            try:
                lines = self.password_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"cannot read mqtt.password_file: {err}") from err
            self._password = lines[0] if lines else ""
        return self

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.tls is not None else 1883)

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """The brokers to connect to, in order: `hosts`, or `host` and `broker_port`."""
        return self._endpoints or ((self.host, self.broker_port),)

    @property
    def secret(self) -> str | None:
        """The password, from `password` or `password_file`."""
        return self._password

    def qos_for(self, relative_topic: str) -> int:
        for topic_filter, qos in self.routes.items():
            if matches(relative_topic, topic_filter):
                return qos
        return self.qos


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OutboxConfig(StrictModel):
    path: ConfigPath | None = None
    """The SQLite file; `outbox.sqlite` in `node.state_dir` unless set."""
    max_messages: int = Field(1_000_000, ge=1)
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_age_s: float | None = Field(7 * 24 * 3600.0, gt=0)
    """Older messages are dropped (oldest first, counted); never unless set."""
    drain_rate: float | None = Field(None, gt=0)
    """Messages per second published at most, backlog and new data alike; unlimited unless set."""
    synchronous: Literal["normal", "full"] = "normal"
    """normal: survives a crash or SIGKILL of the agent; full: also power loss (fsync)."""


class SparkplugConfig(StrictModel):
    """Sparkplug B northbound, beside the JSON topics: the agent is the edge node, its
    devices are Sparkplug devices (`spBv1.0/<group_id>/...`), on a session of its own."""

    enabled: bool = False
    group_id: str = Field("edge", pattern=SPARKPLUG_ID_PATTERN)
    edge_node_id: str | None = Field(None, pattern=SPARKPLUG_ID_PATTERN)
    """The node id unless set."""
    primary_host_id: str | None = Field(None, pattern=SPARKPLUG_ID_PATTERN)
    """When set, births wait until `spBv1.0/STATE/<id>` says online, and a host that
    goes offline ends the session (NDEATH); its return starts a new one."""
    data_qos: Literal[0, 1] = 0
    """QoS of DDATA: Sparkplug requires 0; 1 makes the last hop at least once too."""


class JournalConfig(StrictModel):
    path: ConfigPath | None = None
    """The SQLite file; `journal.sqlite` in `node.state_dir` unless set."""
    max_readings: int = Field(100_000, ge=1)
    """Readings kept for modules that have not taken them yet; past it the oldest are
    dropped (counted). Fill time: this over the node's readings per second."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)


class AgentConfig(StrictModel):
    node: NodeConfig = NodeConfig()
    engine: EngineConfig = EngineConfig()
    limits: LimitsConfig = LimitsConfig()
    """Default limits of every module instance."""
    modules: tuple[ModuleConfig, ...] = ()
    pipeline: PipelineConfig = PipelineConfig()
    logging: LoggingConfig = LoggingConfig()
    supply: SupplyConfig = SupplyConfig()
    control: ControlConfig = ControlConfig()
    commands: CommandsConfig = CommandsConfig()
    metrics: MetricsConfig = MetricsConfig()
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    journal: JournalConfig = JournalConfig()
    sparkplug: SparkplugConfig = SparkplugConfig()
    fleet: FleetConfig = FleetConfig()
    devices: tuple[
        Annotated[DeviceConfig | OpcuaDeviceConfig, PlainValidator(any_device)], ...
    ] = ()
    """Modbus devices, and OPC UA servers (`transport = "opcua"`)."""

    @model_validator(mode="after")
    def _unique_module_names(self) -> AgentConfig:
        check_unique((m.name for m in self.modules), "module name")
        seen = {m.name for m in self.modules}
        for module in self.modules:
            if module.after is not None and module.after not in seen:
                raise ValueError(
                    f"module {module.name!r}: after = {module.after!r} names no module "
                    f"(modules: {sorted(seen)})"
                )
        after = {m.name: m.after for m in self.modules}
        for name in after:
            chain = [name]
            while (parent := after[chain[-1]]) is not None:
                if parent in chain:
                    raise ValueError(f"modules feed each other in a loop: {' -> '.join(chain)}")
                chain.append(parent)
        return self

    @model_validator(mode="after")
    def _devices_consistent(self) -> AgentConfig:
        check_unique((d.name for d in self.devices), "device name")
        first: dict[tuple[str, str, int], DeviceConfig] = {}
        units: set[tuple[tuple[str, str, int], int]] = set()
        for device in self.modbus_devices:
            key = device.connection.key
            other = first.setdefault(key, device)
            if other.connection != device.connection:
                raise ValueError(
                    f"devices {other.name!r} and {device.name!r} share a connection, so "
                    "transport, serial, timeout_s, reconnect_max_s and pauses must match"
                )
            if (key, device.unit) in units:
                raise ValueError(f"device {device.name!r}: unit {device.unit} is used twice")
            units.add((key, device.unit))
        return self

    @property
    def modbus_devices(self) -> tuple[DeviceConfig, ...]:
        return tuple(d for d in self.devices if isinstance(d, DeviceConfig))

    @property
    def opcua_devices(self) -> tuple[OpcuaDeviceConfig, ...]:
        return tuple(d for d in self.devices if isinstance(d, OpcuaDeviceConfig))

    def limits_for(self, module: ModuleConfig) -> Limits:
        return (module.limits or self.limits).to_limits()

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.node.state_dir / "outbox.sqlite"

    @property
    def journal_path(self) -> Path:
        return self.journal.path or self.node.state_dir / "journal.sqlite"
