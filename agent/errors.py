"""The agent's exception hierarchy.

Every failure the agent reports derives from `AgentError`, so callers that keep the
daemon alive catch one type. Foreign errors (an engine's trap, a library's exception)
are converted where they enter the agent, always with `raise ... from err`.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error edge-agent raises on purpose."""


class ConfigError(AgentError):
    """A config file is missing, unreadable or invalid; the message names file and key."""


class EngineUnavailable(AgentError):
    """The requested Wasm engine cannot be used here (library absent, wrong version)."""


class ModuleError(AgentError):
    """A module failed; `module` names it so logs and status can say which."""

    def __init__(self, module: str, message: str) -> None:
        super().__init__(f"module {module!r}: {message}")
        self.module = module
        self.reason = message


class InvalidModule(ModuleError):
    """The bytes are not a valid WebAssembly module, or not one this ABI can run."""


class MissingImport(InvalidModule):
    """The module imports something the agent does not provide to it."""


class ModuleTrap(ModuleError):
    """The module trapped (unreachable, out-of-bounds access, division by zero, ...)."""


class StackExhausted(ModuleTrap):
    """The module recursed past the engine's call stack limit."""


class ModuleTimeout(ModuleError, TimeoutError):
    """A call ran past its deadline and was interrupted."""


class FuelExhausted(ModuleError):
    """A call used up its instruction budget."""


class MemoryLimitExceeded(ModuleError):
    """The module needed more linear memory than its page cap allows."""


class ModuleExit(ModuleError):
    """The module called WASI `proc_exit`; a reactor must never do that mid-call."""

    def __init__(self, module: str, code: int) -> None:
        super().__init__(module, f"called proc_exit({code})")
        self.code = code


class CallFailed(ModuleError):
    """An entry point returned a non-zero error code of the module's own."""

    def __init__(self, module: str, function: str, code: int) -> None:
        super().__init__(module, f"{function} returned error code {code}")
        self.function = function
        self.code = code


class EmitRejected(ModuleError):
    """An emit broke a rule: bad or forbidden topic, oversized payload, bad pointer."""


class ModelError(AgentError):
    """An inference model cannot be used: unreadable, too large, or not a model we run."""


class SupplyError(AgentError):
    """A module could not be packaged, fetched, verified, installed or activated."""


class PackageError(SupplyError):
    """A module directory or OCI layout is invalid; the message names the file and key."""


class KeyFileError(SupplyError):
    """A key file is unreadable, in an unknown format, or the password is wrong."""


class RegistryError(SupplyError):
    """A registry refused a request (auth, not found, bad request)."""


class ArtifactNotFound(RegistryError):
    """The repository has no manifest or blob under that tag or digest."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached even after retries; the node keeps what it has."""


class DigestMismatch(SupplyError):
    """Content did not match the digest or size that pins it; `digest` names which."""

    def __init__(self, digest: str, message: str) -> None:
        super().__init__(f"{digest}: {message}")
        self.digest = digest


class SignatureError(SupplyError):
    """No signature by a trusted key covers the artifact's manifest digest."""


class PolicyViolation(SupplyError):
    """The module asks for a capability or limit that local policy forbids."""


class DowngradeRefused(SupplyError):
    """The version is not newer than the running one and no downgrade was allowed."""


class SmokeTestFailed(SupplyError):
    """The staged version failed its smoke test; the running version stays."""


class ControlError(AgentError):
    """The control socket could not be served or gave an answer that makes no sense."""


class AgentNotRunning(ControlError):
    """Nothing listens on the control socket: the agent is not running there."""


class CommandRejected(AgentError):
    """An MQTT command was refused before any handler ran; `code` says why, for the reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = message


class DesiredStateError(AgentError):
    """A desired-state document was refused (malformed, unsigned, older than one applied)."""


class RolloutError(AgentError):
    """A fleet rollout cannot start, go on or be resumed; the message says why."""


class CommandFailed(AgentError):
    """A command handler could not do what was asked; the message goes into the reply."""


class OutboxError(AgentError):
    """The durable outbox cannot be opened or written (in use, corrupt, disk full)."""


class JournalError(AgentError):
    """The reading journal cannot be opened or written (in use, corrupt, disk full)."""


class MqttUnavailable(AgentError):
    """A direct publish needs a broker connection and there is none right now."""


class BrokerUnreachable(AgentError):
    """A connection attempt to the broker failed; `kind` says how: `unreachable`
    (refused, no route), `timeout`, `tls`, `auth` (bad credentials, not authorised) or
    `refused` (any other CONNACK refusal)."""

    def __init__(self, broker: str, kind: str, message: str) -> None:
        super().__init__(f"{broker}: {message}")
        self.broker = broker
        self.kind = kind
        self.reason = message


class BrokerRefused(AgentError):
    """The broker is there and refused a request: a SUBSCRIBE its ACL denies, or a filter
    it cannot serve. Connecting again would not help."""


class DeviceError(AgentError):
    """A device request failed, whatever the protocol; `where` names the device (or the
    connection) it was for, `reason` what went wrong."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.reason = message


class ModbusError(DeviceError):
    """A Modbus request failed."""


class ModbusTimeout(ModbusError, TimeoutError):
    """The device did not answer within its timeout."""


class ModbusConnectionError(ModbusError, ConnectionError):
    """The connection to the device (TCP or serial port) is down or cannot be opened."""


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception code (illegal address, busy, ...)."""

    def __init__(self, where: str, code: int) -> None:
        super().__init__(where, f"exception code {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")
        self.code = code


class WriteRefused(DeviceError):
    """A write was refused before it reached the device: not writable, out of range, bad
    type; over Modbus and OPC UA alike."""


class ReadbackMismatch(DeviceError):
    """What was read back after a write differs from what was written."""


class OpcuaError(DeviceError):
    """An OPC UA request or session failed."""


class OpcuaTimeout(OpcuaError, TimeoutError):
    """The server did not answer within the device's timeout."""


class OpcuaConnectionError(OpcuaError, ConnectionError):
    """No session: the server is unreachable, hung up, or refused the secure channel."""


class OpcuaStatusError(OpcuaError):
    """The server answered with a bad status code; `code` is its name (BadNotWritable, ...)."""

    def __init__(self, where: str, code: str, message: str) -> None:
        super().__init__(where, message)
        self.code = code


EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
"""Modbus exception codes, as the protocol specification names them."""
