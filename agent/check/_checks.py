"""The checks of `edge-agent check`: one function per check, each returning a verdict.

A check looks and never changes anything: it creates no directory, publishes nothing,
sends no Modbus request and pulls no module. Network checks are bounded by a timeout and
run concurrently, so the whole report takes about one timeout when peers are down. A
check that fails in an unexpected way becomes an error line, never a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.commands import load_public_keys
from agent.config import (
    AgentConfig,
    DeviceConfig,
    ModuleConfig,
    OpcuaDeviceConfig,
    SupplyConfig,
    load_config,
)
from agent.errors import (
    BrokerUnreachable,
    ConfigError,
    KeyFileError,
    ModbusError,
    OpcuaError,
    OpcuaStatusError,
    RegistryError,
    SupplyError,
)
from agent.modbus import probe_device
from agent.mqtt import probe_brokers
from agent.supply import load_public_key, parse_reference, registry_client
from agent.wasm import EngineFound, find_engines

Verdict = Literal["ok", "warning", "error"]

DEFAULT_TIMEOUT_S = 3.0

_INSTALL_WASMEDGE = (
    "install WasmEdge 0.14 to 0.17 and set engine.wasmedge_lib or WASMEDGE_LIB if it is "
    "not in a usual place"
)


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: what was checked, the verdict, and for a problem what
    was wrong (`message`) and what to do (`fix`)."""

    name: str
    verdict: Verdict
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "message": self.message,
            "fix": self.fix,
        }


def _ok(name: str, message: str) -> CheckResult:
    return CheckResult(name, "ok", message)


def _warning(name: str, message: str, fix: str) -> CheckResult:
    return CheckResult(name, "warning", message, fix)


def _error(name: str, message: str, fix: str) -> CheckResult:
    return CheckResult(name, "error", message, fix)


# The config


def check_config(path: Path) -> tuple[CheckResult, AgentConfig | None]:
    """Loads the config as `run` would; the error names the file and the key."""
    try:
        config = load_config(path)
    except ConfigError as err:
        fix = "correct the file or key named; config/agent.toml documents every key"
        return _error("config", str(err), fix), None
    summary = (
        f"{path} is valid (node {config.node.id!r}; devices: {len(config.devices)}, "
        f"modules: {len(config.modules)})"
    )
    return _ok("config", summary), config


# Engines


def check_engine_choice(config: AgentConfig, found: tuple[EngineFound, EngineFound]) -> CheckResult:
    """Which engine the agent would run on, and why."""
    wasmedge, wasmtime = found
    kind = config.engine.kind
    if kind == "wasmtime":
        return _ok("engine", f"wasmtime {wasmtime.version} (engine.kind = 'wasmtime')")
    if wasmedge.absent is not None:
        if kind == "wasmedge":
            return _error(
                "engine",
                f"engine.kind = 'wasmedge' but WasmEdge is not usable: {wasmedge.absent}",
                f"{_INSTALL_WASMEDGE}, or set engine.kind = 'auto' to fall back to wasmtime",
            )
        return _ok("engine", f"auto picks wasmtime {wasmtime.version}: WasmEdge is not usable")
    mode = "aot" if wasmedge.compiler and config.engine.aot else "interpreter"
    why = "engine.kind = 'wasmedge'" if kind == "wasmedge" else "auto: its library was found"
    return _ok("engine", f"wasmedge {wasmedge.version}, {mode} ({why})")


def check_wasmedge(config: AgentConfig, wasmedge: EngineFound) -> CheckResult:
    """The WasmEdge library: where, which version, and whether it can compile AOT."""
    name = "engine wasmedge"
    if wasmedge.absent is not None:
        if config.engine.kind == "wasmtime":
            return _ok(name, f"not used (engine.kind = 'wasmtime'); {wasmedge.absent}")
        return CheckResult(
            name,
            "error" if config.engine.kind == "wasmedge" else "warning",
            wasmedge.absent,
            f"{_INSTALL_WASMEDGE} (modules then run AOT-compiled), or set "
            "engine.kind = 'wasmtime' to choose wasmtime on purpose",
        )
    found = f"{wasmedge.version} at {wasmedge.library}"
    if wasmedge.compiler:
        return _ok(name, f"{found}; AOT compiler available")
    if not config.engine.aot:
        return _ok(name, f"{found}; no AOT compiler, and engine.aot = false")
    return _warning(
        name,
        f"{found} has no AOT compiler (built without LLVM): modules run interpreted, "
        "several times slower",
        "install a WasmEdge release built with LLVM, or set engine.aot = false to accept "
        "the interpreter",
    )


def check_wasmtime(wasmtime: EngineFound) -> CheckResult:
    return _ok("engine wasmtime", f"wasmtime {wasmtime.version}")


# Directories and keys


def check_state_dir(config: AgentConfig) -> CheckResult:
    return _writable_dir("state dir", config.node.state_dir, "node.state_dir")


def check_outbox_dir(config: AgentConfig) -> CheckResult:
    return _writable_dir("outbox dir", config.outbox_path.parent, "outbox.path")


def check_control_dir(config: AgentConfig) -> CheckResult:
    return _writable_dir("control socket", config.control.socket.parent, "control.socket")


def _writable_dir(name: str, path: Path, key: str) -> CheckResult:
    """`path` is a directory this user may write, or one it may create."""
    try:
        ancestor = path
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as err:
        return _error(name, f"cannot look at {path}: {err}", f"check the permissions of {key}")
    if ancestor != path:
        return _creatable(name, path, ancestor, key)
    if not path.is_dir():
        return _error(name, f"{path} is not a directory", f"point {key} at a directory")
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".edge-agent-check-"):
            pass
    except OSError as err:
        return _error(
            name,
            f"{path} is not writable by {_user()}: {err.strerror or err}",
            f"give the agent's user write access to {path}, or point {key} elsewhere",
        )
    return _ok(name, f"{path} is writable by {_user()}")


def _creatable(name: str, path: Path, ancestor: Path, key: str) -> CheckResult:
    """`path` does not exist; `ancestor` is the nearest part of it that does."""
    if not ancestor.is_dir():
        return _error(
            name,
            f"cannot create {path}: {ancestor} is not a directory",
            f"point {key} at a directory path",
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return _error(
            name,
            f"cannot create {path}: {ancestor} is not writable by {_user()}",
            f"create {path} for the agent's user (the systemd unit's directories do), "
            f"or point {key} elsewhere",
        )
    return _ok(name, f"{path} does not exist yet; {_user()} can create it")


def _user() -> str:
    try:
        return repr(getpass.getuser())
    except (KeyError, OSError):  # no passwd entry (a container)
        return f"uid {os.geteuid()}"


def check_trusted_keys(config: AgentConfig) -> CheckResult:
    """`supply.trusted_keys`: each readable and an ECDSA P-256 public key."""
    name = "trusted keys"
    paths = config.supply.trusted_keys
    if not paths:
        return _warning(
            name,
            "supply.trusted_keys is empty: no signed module can run on this node",
            "add the cosign.pub of the key that signs your modules to supply.trusted_keys",
        )
    problems = []
    for path in paths:
        try:
            load_public_key(path)
        except KeyFileError as err:
            problems.append(str(err))
    if problems:
        return _error(
            name,
            "; ".join(problems),
            "install the PEM public key (cosign.pub, ECDSA P-256) at that path, readable "
            "by the agent's user, or correct supply.trusted_keys",
        )
    return _ok(name, f"{len(paths)} ECDSA P-256 key(s): {', '.join(str(p) for p in paths)}")


def check_command_keys(config: AgentConfig) -> CheckResult:
    """`commands.trusted_keys`, which verify signed MQTT commands."""
    name = "command keys"
    paths = config.commands.trusted_keys
    try:
        load_public_keys(paths)
    except ConfigError as err:
        return _error(
            name, str(err), "install the PEM public key there, or correct commands.trusted_keys"
        )
    return _ok(name, f"{len(paths)} ECDSA P-256 key(s)")


# Modules


def check_module(config: AgentConfig, module: ModuleConfig) -> CheckResult:
    """A module's `ref` parses (and an OCI layout is there); a `path` may run."""
    name = f"module {module.name}"
    if module.path is not None:
        if not config.supply.allow_unsigned_paths:
            return _error(
                name,
                f"path = {str(module.path)!r} is a local file no trusted key signed; the "
                "agent refuses it",
                "give the module as ref (a signed package), or set "
                "supply.allow_unsigned_paths = true for development",
            )
        if not module.path.is_file():
            return _error(name, f"{module.path}: no such file", "build the module or fix path")
        return _ok(name, f"{module.path} (unsigned, allowed by supply.allow_unsigned_paths)")
    ref = module.ref or ""
    try:
        parsed = parse_reference(ref)
    except SupplyError as err:
        return _error(
            name,
            str(err),
            "write ref as REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST] or oci:DIR[:TAG]",
        )
    if parsed.layout is not None and not (parsed.layout / "index.json").is_file():
        return _error(
            name,
            f"{parsed.layout} is not an OCI layout (no index.json)",
            "package and sign the module into that directory, or correct ref",
        )
    return _ok(name, ref)


# Peers


async def check_mqtt(config: AgentConfig, timeout_s: float) -> CheckResult:
    """A real CONNECT to each broker endpoint with the configured protocol, TLS and
    credentials; one that answers is enough to run, a cluster node that does not is a
    warning (the agent fails over to the others)."""
    mqtt = config.mqtt
    if mqtt.embedded:
        return _ok(
            "mqtt", f"embedded broker: the agent starts it on {mqtt.host}:{mqtt.broker_port}"
        )
    results = await probe_brokers(mqtt, timeout_s)
    up = [broker for broker, err in results if err is None]
    problems = [err for _, err in results if err is not None]
    fix = "" if not problems else _BROKER_FIXES[problems[0].kind]
    if mqtt.hosts:
        fix = fix.replace("mqtt.host and mqtt.port", "mqtt.hosts")
    if not up:
        return _error("mqtt", "; ".join(map(_broker_problem, problems)), fix)
    who = f"user {mqtt.username!r}" if mqtt.username else "anonymous"
    tls = "TLS" if mqtt.tls is not None else "no TLS"
    accepted = f"{' and '.join(up)} accepted an MQTT {mqtt.protocol} CONNECT ({tls}, {who})"
    if not problems:
        return _ok("mqtt", accepted)
    message = "; ".join([accepted, *map(_broker_problem, problems)])
    return _warning("mqtt", message, f"the agent uses the others meanwhile; {fix}")


def _broker_problem(err: BrokerUnreachable) -> str:
    if err.kind == "auth":
        return f"broker {err.broker}: authentication failed: {err.reason}"
    return f"broker {err.broker}: {err.reason}"


_BROKER_FIXES = {
    "unreachable": "start the broker, or correct mqtt.host and mqtt.port",
    "timeout": "check that mqtt.host and mqtt.port reach the broker (a firewall that drops "
    "packets looks like this) and whether it expects TLS (mqtt.tls)",
    "tls": "check mqtt.tls.ca (the CA that signed the broker's certificate), the host name "
    "the certificate names, and mqtt.tls.cert and key where the broker wants a client "
    "certificate",
    "auth": "check mqtt.username and mqtt.password (or password_file) against the broker's "
    "accounts",
    "refused": "see the broker's log for why it refused this client; one that hangs up "
    "before its CONNACK may also expect TLS (mqtt.tls), or mqtt.port may not be MQTT",
}


async def check_device(device: DeviceConfig, timeout_s: float) -> CheckResult:
    """The device's connection opens: TCP connect, or the serial port opens."""
    name = f"device {device.name}"
    try:
        await probe_device(device, timeout_s)
    except ModbusError as err:
        if device.serial is not None:
            fix = (
                "check the adapter and devices.serial.port, and that the agent's user is in "
                "the group dialout"
            )
        else:
            fix = (
                f"check that the device is powered and on the network, and devices.host and "
                f"port ({device.host}:{device.port})"
            )
        return _error(name, str(err), fix)
    where = device.serial.port if device.serial is not None else f"{device.host}:{device.port}"
    return _ok(name, f"{where} ({device.transport}) opens")


async def check_opcua_device(device: OpcuaDeviceConfig, timeout_s: float) -> CheckResult:
    """A session opens with the device's security and user, and the server says its state."""
    name = f"device {device.name}"
    security = device.security_policy + (f" {device.mode}" if device.mode else "")
    try:
        async with asyncio.timeout(timeout_s):
            # Imported here: asyncua (about 20 MB) only for nodes with OPC UA devices.
            from agent.opcua import probe as probe_opcua  # noqa: PLC0415

            state = await probe_opcua(device)
    except TimeoutError:
        return _error(name, f"no session with {device.endpoint} within {timeout_s:g} s", _NO_OPCUA)
    except OpcuaError as err:
        code = err.code if isinstance(err, OpcuaStatusError) else ""
        fix = next((f for prefix, f in _OPCUA_FIXES if code.startswith(prefix)), _NO_OPCUA)
        return _error(name, str(err), fix)
    return _ok(name, f"{device.endpoint} ({security}): session open, server {state}")


_NO_OPCUA = "check that the server runs and that devices.endpoint (host, port, path) reaches it"
_OPCUA_FIXES = (
    ("BadIdentityToken", "check devices.username and password against the server's users"),
    ("BadUserAccess", "check devices.username and password against the server's users"),
    (
        "BadSecurity",
        "check that the server offers devices.security_policy and security_mode, and that "
        "devices.server_certificate is the server's",
    ),
    (
        "BadCertificate",
        "have the server trust devices.certificate (copy it into the server's trusted "
        "folder), and check that it has not expired",
    ),
)


async def check_registry(host: str, supply: SupplyConfig, timeout_s: float) -> CheckResult:
    """`GET /v2/` answers 200 or 401: an OCI registry is there."""
    name = f"registry {host}"
    fix = (
        "check the host:port, DNS and firewall; for a private CA set ca, for a plain-HTTP "
        "registry insecure = true, in its supply.registries entry"
    )
    try:
        client = registry_client(host, supply)
    except RegistryError as err:
        return _error(name, str(err), "correct the registry's entry in supply.registries")
    try:
        status = await client.ping(timeout_s)
    except RegistryError as err:
        return _error(name, str(err), fix)
    finally:
        await client.aclose()
    if status not in (200, 401):
        return _error(
            name,
            f"GET /v2/ answered HTTP {status}: not an OCI registry API",
            "correct the registry host in supply.registries and the module refs",
        )
    return _ok(name, f"GET /v2/ answered HTTP {status}")


# All of them


async def run_checks(path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[CheckResult]:
    """Every check for the config at `path`, in report order; only the config's when it
    does not load."""
    config_result, config = check_config(path)
    if config is None:
        return [config_result]
    found = await asyncio.to_thread(find_engines, config.engine.wasmedge_lib)
    jobs: list[tuple[str, Awaitable[CheckResult]]] = [
        ("engine", asyncio.to_thread(check_engine_choice, config, found)),
        ("engine wasmedge", asyncio.to_thread(check_wasmedge, config, found[0])),
        ("engine wasmtime", asyncio.to_thread(check_wasmtime, found[1])),
        ("state dir", asyncio.to_thread(check_state_dir, config)),
    ]
    if config.outbox.path is not None:
        jobs.append(("outbox dir", asyncio.to_thread(check_outbox_dir, config)))
    jobs += [
        ("control socket", asyncio.to_thread(check_control_dir, config)),
        ("trusted keys", asyncio.to_thread(check_trusted_keys, config)),
    ]
    if config.commands.trusted_keys:
        jobs.append(("command keys", asyncio.to_thread(check_command_keys, config)))
    jobs.append(("mqtt", check_mqtt(config, timeout_s)))
    jobs += [(f"device {d.name}", check_device(d, timeout_s)) for d in config.modbus_devices]
    jobs += [(f"device {d.name}", check_opcua_device(d, timeout_s)) for d in config.opcua_devices]
    jobs += [(f"registry {h}", check_registry(h, config.supply, timeout_s)) for h in _hosts(config)]
    jobs += [
        (f"module {m.name}", asyncio.to_thread(check_module, config, m)) for m in config.modules
    ]
    results = await asyncio.gather(*(_bounded(name, job, timeout_s) for name, job in jobs))
    return [config_result, *results]


def _hosts(config: AgentConfig) -> list[str]:
    """The configured registries, then those module refs name without an entry."""
    hosts = [r.host for r in config.supply.registries]
    for module in config.modules:
        try:
            registry = parse_reference(module.ref).registry if module.ref else None
        except SupplyError:
            continue  # the module's own check reports it
        if registry is not None and registry not in hosts:
            hosts.append(registry)
    return hosts


async def _bounded(name: str, job: Awaitable[CheckResult], timeout_s: float) -> CheckResult:
    # Checks bound their own waits; this margin catches one that does not.
    bound = timeout_s + 2
    try:
        async with asyncio.timeout(bound):
            return await job
    except TimeoutError:
        return _error(name, f"no result within {bound:g} s", "check this by hand")
    except Exception as err:  # a report with one failed check beats a traceback
        return _error(name, f"the check failed: {type(err).__name__}: {err}", "report this")
