"""OPC UA devices: the `[[devices]]` entries with `transport = "opcua"` and their node maps.

A node map (`config/devices/*.toml`) names the server's variables the agent subscribes
to, like a register map names registers: which node, its point name in readings, unit,
type, whether it may be written, and how the server samples and filters it. This module
knows the shape and rules of both, and loads the certificates once, at load, so a
missing or unreadable file fails there. It does no I/O on the network and must not
import asyncua: loading the config stays free of the OPC UA library.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
    load_pem_private_key,
)
from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, model_validator
from pydantic_core import InitErrorDetails

from agent.config._devices import DeviceConfig
from agent.config._fields import NAME_PATTERN, ConfigPath
from agent.config._registers import NUMERIC_TYPES, ValueType
from agent.errors import ConfigError
from agent.validation import StrictModel, check_unique, read_toml, validated

NodeType = ValueType
SecurityPolicy = Literal["None", "Basic256Sha256"]
SecurityMode = Literal["Sign", "SignAndEncrypt"]
MODBUS_TRANSPORTS = ("tcp", "rtu", "rtu-tcp")

_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
_NODE_ID = re.compile(r"^(ns=\d{1,5};|nsu=[^;]+;)?(i=\d{1,10}|s=.+|g=[0-9A-Fa-f-]{36}|b=.+)$")


class NodeSpec(StrictModel):
    name: str = Field(pattern=_NAME)
    """The value's name in readings and in `write`."""
    node: str
    """The variable's node id: `ns=2;s=Pump.Temperature`, `ns=3;i=1001`, `nsu=URI;s=...`."""
    type: NodeType
    unit: str | None = None
    writable: bool = False
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    """Accepted range of a written value."""
    sampling_interval_s: float | None = Field(None, ge=0, le=86400)
    """How often the server samples the variable; the map's default unless set."""
    deadband: float | None = Field(None, ge=0, allow_inf_nan=False)
    """A change smaller than this is not reported (numeric types only)."""
    deadband_type: Literal["absolute", "percent"] = "absolute"
    """`percent` is of the variable's EURange, which the server must know."""

    @model_validator(mode="after")
    def _consistent(self) -> NodeSpec:
        if not _NODE_ID.match(self.node):
            raise ValueError(
                f"node {self.node!r} is not a node id: expected ns=N;s=NAME, ns=N;i=NUMBER, "
                "ns=N;g=GUID or ns=N;b=BASE64"
            )
        numeric = self.type in NUMERIC_TYPES
        if self.deadband is not None and not numeric:
            raise ValueError(f"deadband applies to numeric types, not {self.type!r}")
        if self.deadband_type == "percent" and (self.deadband or 0) > 100:
            raise ValueError(f"a percent deadband is at most 100 (got {self.deadband})")
        if (self.min is not None or self.max is not None) and not (self.writable and numeric):
            raise ValueError("min and max apply to writable numeric points")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class NodeMap(StrictModel):
    description: str = ""
    publishing_interval_s: float = Field(1.0, ge=0.01, le=3600)
    """How often the server sends the changes it has (one reading per batch)."""
    sampling_interval_s: float = Field(0.5, ge=0, le=86400)
    """Default sampling interval of the points; 0 asks the server for its fastest."""
    points: tuple[NodeSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> NodeMap:
        check_unique((p.name for p in self.points), "point name")
        check_unique((p.node for p in self.points), "node")
        return self

    def point(self, name: str) -> NodeSpec | None:
        return next((p for p in self.points if p.name == name), None)

    def sampling_s(self, point: NodeSpec) -> float:
        return (
            self.sampling_interval_s
            if point.sampling_interval_s is None
            else (point.sampling_interval_s)
        )


def load_node_map(path: Path) -> NodeMap:
    """Read and validate a node map; errors name the file, the key and what was expected."""
    return validated(NodeMap, read_toml(path, "node map"), path)


class OpcuaDeviceConfig(StrictModel):
    """One OPC UA server (or one device behind it): a session with its subscription."""

    name: str = Field(pattern=NAME_PATTERN)
    transport: Literal["opcua"]
    endpoint: str
    """`opc.tcp://HOST[:PORT][/PATH]`; the port is 4840 unless given."""
    map: ConfigPath
    """The node map file (`config/devices/*.toml`)."""
    security_policy: SecurityPolicy = "None"
    security_mode: SecurityMode | None = None
    """With Basic256Sha256: `SignAndEncrypt` unless set."""
    certificate: ConfigPath | None = None
    """This client's certificate (PEM or DER); its URI names the client to the server."""
    private_key: ConfigPath | None = None
    """The certificate's private key (PEM or DER, not encrypted)."""
    server_certificate: ConfigPath | None = None
    """The server's certificate, trusted: the session is refused with any other."""
    username: str | None = Field(None, min_length=1)
    password: str | None = None
    timeout_s: float = Field(4.0, gt=0, le=60)
    """Each request's answer, and the connect, must come within this."""
    reconnect_max_s: float = Field(10.0, ge=0.01, le=3600)
    """Longest pause between attempts to reconnect a lost session."""
    _map: NodeMap = PrivateAttr()
    _application_uri: str | None = PrivateAttr(None)
    _der: tuple[bytes, bytes, bytes] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> OpcuaDeviceConfig:
        _check_endpoint(self.endpoint)
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        files = {
            "certificate": self.certificate,
            "private_key": self.private_key,
            "server_certificate": self.server_certificate,
        }
        if self.security_policy == "None":
            given = [k for k, v in files.items() if v is not None]
            if self.security_mode is not None or given:
                keys = ", ".join(["security_mode", *given] if self.security_mode else given)
                raise ValueError(f'{keys} apply only with security_policy = "Basic256Sha256"')
        else:
            missing = [k for k, v in files.items() if v is None]
            if missing:
                raise ValueError(
                    f"security_policy {self.security_policy!r} needs {', '.join(missing)} "
                    "(PEM or DER files)"
                )
            client = _load_certificate("certificate", self.certificate)
            server = _load_certificate("server_certificate", self.server_certificate)
            key = _load_private_key("private_key", self.private_key)
            self._application_uri = _application_uri(client)
            self._der = (client, key, server)
        try:
            self._map = load_node_map(self.map)
        except ConfigError as err:
            raise ValueError(str(err)) from err
        return self

    @property
    def node_map(self) -> NodeMap:
        return self._map

    @property
    def mode(self) -> SecurityMode | None:
        """The message security mode in force; None without security."""
        if self.security_policy == "None":
            return None
        return self.security_mode or "SignAndEncrypt"

    @property
    def security_der(self) -> tuple[bytes, bytes, bytes] | None:
        """Client certificate, its private key (PKCS#8) and the server's certificate,
        DER-encoded, as loaded and checked at load; None without security."""
        return self._der

    @property
    def application_uri(self) -> str | None:
        """The URI the client certificate names (its subjectAltName), if any."""
        return self._application_uri


def _check_endpoint(endpoint: str) -> None:
    expected = "expected opc.tcp://HOST[:PORT][/PATH]"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"endpoint {endpoint!r}: {err}; {expected}") from err
    if parts.scheme != "opc.tcp" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"endpoint {endpoint!r} is not an OPC UA TCP address; {expected}")
    if port == 0:
        raise ValueError(f"endpoint {endpoint!r}: port 0; {expected}")


def _read(key: str, path: Path | None) -> bytes:
    assert path is not None  # the caller checked
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"{key}: cannot read {path}: {err.strerror or err}") from err


def _load_certificate(key: str, path: Path | None) -> bytes:
    """The certificate at `path` (PEM or DER), DER-encoded."""
    data = _read(key, path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)
    except ValueError as err:
        raise ValueError(f"{key}: {path} is not an X.509 certificate (PEM or DER)") from err


def _load_private_key(key: str, path: Path | None) -> bytes:
    """The private key at `path` (PEM or DER), as DER PKCS#8."""
    data = _read(key, path)
    try:
        load = load_pem_private_key if b"-----BEGIN" in data else load_der_private_key
        private = load(data, password=None)
        return private.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{key}: {path} is not an unencrypted private key (PEM or DER): {err}"
        ) from err


def _application_uri(der: bytes) -> str | None:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def any_device(value: Any, info: ValidationInfo) -> DeviceConfig | OpcuaDeviceConfig:
    """One `[[devices]]` entry, as the model its `transport` names.

    Not a pydantic discriminated union: that puts the tag into every error's key path
    (`devices.0.tcp.host`), and the file has no such key.
    """
    transport = value.get("transport") if isinstance(value, dict) else None
    if transport == "opcua":
        return OpcuaDeviceConfig.model_validate(value, context=info.context)
    if isinstance(value, dict) and transport not in MODBUS_TRANSPORTS:
        expected = "'tcp', 'rtu', 'rtu-tcp' or 'opcua'"
        error: InitErrorDetails = {
            "type": "literal_error",
            "loc": ("transport",),
            "input": transport,
            "ctx": {"expected": expected},
        }
        if transport is None:
            error = {"type": "missing", "loc": ("transport",), "input": value}
        raise ValidationError.from_exception_data("device", [error])
    return DeviceConfig.model_validate(value, context=info.context)
