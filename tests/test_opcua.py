"""OPC UA devices against asyncua's own server on loopback: subscriptions with deadbands,
Basic256Sha256 with certificates made here, writes read back, a server restart, config
errors, `check`, and a whole agent publishing an OPC UA device's readings to mosquitto.

Nothing is mocked: the server is a real OPC UA server in this process, the client the
agent's adapter, the broker mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.check._checks import check_opcua_device
from agent.config import OpcuaDeviceConfig, load_config, load_node_map
from agent.errors import ConfigError, OpcuaConnectionError, OpcuaStatusError, WriteRefused
from agent.opcua import OpcuaPool
from agent.reading import Reading
from agent.runtime import Agent

from .brokers import Mosquitto, Subscriber, free_port, until
from .conftest import DIST, REPO
from .test_agent import NODE, ROOT, command

pytestmark = pytest.mark.opcua

NAMESPACE = "urn:edge-agent:test:boiler"
POINTS = {  # name: (initial value, variant type)
    "Temperature": (20.0, ua.VariantType.Double),
    "Pressure": (1.5, ua.VariantType.Float),
    "Running": (True, ua.VariantType.Boolean),
    "Setpoint": (50.0, ua.VariantType.Double),
    "Count": (0, ua.VariantType.UInt16),
}
NODE_MAP = """
publishing_interval_s = 0.05
sampling_interval_s = 0.02

[[points]]
name = "temperature"
node = "ns=2;s=Boiler.Temperature"
type = "float64"
unit = "degC"
deadband = 1.0

[[points]]
name = "pressure"
node = "ns=2;s=Boiler.Pressure"
type = "float32"
unit = "bar"

[[points]]
name = "running"
node = "ns=2;s=Boiler.Running"
type = "bool"

[[points]]
name = "setpoint"
node = "ns=2;s=Boiler.Setpoint"
type = "float64"
unit = "degC"
writable = true
min = 20.0
max = 90.0

[[points]]
name = "count"
node = "ns=2;s=Boiler.Count"
type = "uint16"
writable = true
"""


SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


@dataclass(frozen=True)
class Certs:
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class BoilerServer:
    """asyncua's server with a boiler's variables under ns=2; `stop` and `start` again
    keep the port, like a device that reboots."""

    def __init__(
        self, port: int, certs: Certs | None = None, *, trusted: Path | None = None
    ) -> None:
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/boiler/"
        self.certs = certs
        self.trusted = trusted
        """A folder of the only client certificates the server accepts; any, unless set."""
        self.nodes: dict[str, Node] = {}
        self._server: Server | None = None

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        if self.certs is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            await server.load_certificate(str(self.certs.server_cert))
            await server.load_private_key(str(self.certs.server_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        if self.trusted is not None:
            store = TrustStore([self.trusted], [])
            await store.load()
            only = CertificateValidatorOptions.TRUSTED_VALIDATION
            server.set_certificate_validator(
                CertificateValidator(only | CertificateValidatorOptions.PEER_CLIENT, store)
            )
        index = await server.register_namespace(NAMESPACE)
        assert index == 2
        boiler = await server.nodes.objects.add_object(ua.NodeId("Boiler", index), "Boiler")
        for name, (value, kind) in POINTS.items():
            node = await boiler.add_variable(ua.NodeId(f"Boiler.{name}", index), name, value, kind)
            await node.set_writable()
            self.nodes[name] = node
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def set(self, name: str, value: object) -> None:
        await self.nodes[name].write_value(ua.Variant(value, POINTS[name][1]))

    async def __aenter__(self) -> BoilerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def device_config(
    tmp_path: Path,
    endpoint: str,
    *,
    name: str = "boiler",
    node_map: str = NODE_MAP,
    **extra: object,
) -> OpcuaDeviceConfig:
    (tmp_path / f"{name}.toml").write_text(node_map)
    doc = {"name": name, "transport": "opcua", "endpoint": endpoint, "map": f"{name}.toml"}
    context = {"base_dir": tmp_path}
    return OpcuaDeviceConfig.model_validate({**doc, **extra}, context=context)


class Collected:
    """The pool's readings, as the agent's pipeline would get them."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def __call__(self, reading: Reading) -> None:
        self.readings.append(reading)

    def of(self, point: str) -> list[object]:
        return [r.values[point].value for r in self.readings if point in r.values]


async def wait(condition: Callable[[], bool], seconds: float = 10) -> None:
    await until(condition, seconds)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


@pytest.fixture
def port() -> int:
    return free_port()


def test_data_changes_become_readings_and_the_deadband_holds_small_ones(
    tmp_path: Path, port: int
) -> None:
    async def scenario() -> None:
        async with BoilerServer(port) as server:
            config = device_config(tmp_path, server.endpoint)
            got = Collected()
            async with OpcuaPool.create([config], got, seqs={"boiler": 41}) as pool:
                await wait(lambda: len(got.readings) >= 1)
                first = got.readings[0]
                # The first publish carries every point's current value, in one reading.
                assert first.device == "boiler"
                assert first.seq == 41
                assert {k: v.value for k, v in first.values.items()} == {
                    "temperature": 20.0,
                    "pressure": 1.5,
                    "running": True,
                    "setpoint": 50.0,
                    "count": 0,
                }
                assert first.values["temperature"].unit == "degC"
                assert first.values["temperature"].quality == "good"
                for value in (20.3, 20.6, 25.0):  # within the 1.0 deadband, then past it
                    await server.set("Temperature", value)
                    await asyncio.sleep(0.15)
                await server.set("Pressure", 2.25)  # no deadband: every change
                await server.set("Running", False)
                await wait(lambda: got.of("running") == [True, False])
                await wait(lambda: got.of("temperature") == [20.0, 25.0])
                assert got.of("pressure") == [1.5, 2.25]
                assert [r.seq for r in got.readings] == list(range(41, 41 + len(got.readings)))
                (status,) = pool.status()
                assert status.name == "boiler"
                assert status.state == "online"
                assert status.polls == len(got.readings)
                assert status.last_error is None

    run(scenario)


def make_certs(directory: Path) -> Certs:
    """Self-signed RSA 2048 application certificates, as Basic256Sha256 wants them: the
    server's in DER, the client's in PEM (the config takes either)."""

    def issue(name: str, uri: str, usage: x509.ObjectIdentifier, encoding: Encoding) -> Path:
        suffix = "pem" if encoding == Encoding.PEM else "der"
        key = generate_private_key()
        names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
        cert = generate_self_signed_app_certificate(key, name, {}, names, [usage])
        path = directory / f"{name}.{suffix}"
        path.write_bytes(cert.public_bytes(encoding))
        (directory / f"{name}-key.pem").write_bytes(dump_private_key_as_pem(key))
        return path

    server = issue("server", "urn:freeopcua:python:server", SERVER_AUTH, Encoding.DER)
    client = issue("client", "urn:edge-agent:test:client", CLIENT_AUTH, Encoding.PEM)
    return Certs(server, directory / "server-key.pem", client, directory / "client-key.pem")


def test_basic256sha256_sign_and_encrypt_with_certificates(tmp_path: Path, port: int) -> None:
    certs = make_certs(tmp_path)

    async def scenario() -> None:
        async with BoilerServer(port, certs) as server:
            secure = device_config(
                tmp_path,
                server.endpoint,
                security_policy="Basic256Sha256",
                security_mode="SignAndEncrypt",
                certificate=str(certs.client_cert),
                private_key=str(certs.client_key),
                server_certificate=str(certs.server_cert),
            )
            assert secure.application_uri == "urn:edge-agent:test:client"
            got = Collected()
            async with OpcuaPool.create([secure], got) as pool:
                await wait(lambda: len(got.readings) >= 1)
                await server.set("Pressure", 3.5)
                await wait(lambda: got.of("pressure") == [1.5, 3.5])
                assert await pool.write("boiler", "setpoint", 61.5) == 61.5
            ok = await check_opcua_device(secure, 5)
            assert ok.verdict == "ok", ok.message
            assert "Basic256Sha256 SignAndEncrypt" in ok.message
            # The server offers no unsecured endpoint: a client without security is refused.
            plain = await check_opcua_device(device_config(tmp_path, server.endpoint), 5)
            assert plain.verdict == "error"
            assert "device 'boiler'" in plain.message
            assert plain.fix is not None

    run(scenario)


def test_writes_are_read_back_and_bad_ones_refused_before_sending(
    tmp_path: Path, port: int
) -> None:
    async def scenario() -> None:
        async with BoilerServer(port) as server:
            got = Collected()
            config = device_config(tmp_path, server.endpoint)
            async with OpcuaPool.create([config], got) as pool:
                await wait(lambda: len(got.readings) >= 1)
                assert await pool.write("boiler", "setpoint", 72) == 72.0
                assert await server.nodes["Setpoint"].read_value() == 72.0
                assert await pool.write("boiler", "count", 7.0) == 7
                assert await server.nodes["Count"].read_value() == 7
                await wait(lambda: got.of("count") == [0, 7])
                refusals = [
                    ("nowhere", "setpoint", 1, "no such device"),
                    ("boiler", "flow", 1, "no point 'flow'"),
                    ("boiler", "temperature", 1, "not writable"),
                    ("boiler", "setpoint", 95, r"outside \[20.0, 90.0\]"),
                    ("boiler", "setpoint", True, "takes a finite number"),
                    ("boiler", "count", 1.5, "whole number"),
                    ("boiler", "count", 70000, "does not fit uint16"),
                ]
                for device, point, value, message in refusals:
                    with pytest.raises(WriteRefused, match=message):
                        await pool.write(device, point, value)
                assert await server.nodes["Setpoint"].read_value() == 72.0

    run(scenario)


def test_a_server_that_does_not_trust_the_client_certificate_is_named_in_status_and_check(
    tmp_path: Path, port: int
) -> None:
    certs = make_certs(tmp_path)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    other = make_certs(trusted)  # the only client the server trusts: not ours
    for path in (other.server_cert, other.server_key, other.client_key):
        path.unlink()

    async def scenario() -> None:
        async with BoilerServer(port, certs, trusted=trusted):
            secure = device_config(
                tmp_path,
                f"opc.tcp://127.0.0.1:{port}/boiler/",
                security_policy="Basic256Sha256",
                certificate=str(certs.client_cert),
                private_key=str(certs.client_key),
                server_certificate=str(certs.server_cert),
                reconnect_max_s=0.2,
            )
            got = Collected()
            async with OpcuaPool.create([secure], got) as pool:
                await wait(lambda: pool.status()[0].state == "offline")
                (status,) = pool.status()
                assert status.last_error is not None
                assert "BadCertificateUntrusted" in status.last_error
                assert "the server does not accept this client's certificate" in status.last_error
                assert got.readings == []
            refused = await check_opcua_device(secure, 5)
            assert refused.verdict == "error"
            assert refused.message.startswith("device 'boiler': cannot connect to opc.tcp://")
            assert "BadCertificateUntrusted" in refused.message
            assert "does not accept this client's certificate" in refused.message
            assert refused.fix is not None
            assert "have the server trust devices.certificate" in refused.fix

    run(scenario)


def test_an_unknown_node_id_is_named_in_status_and_the_other_points_go_on(
    tmp_path: Path, port: int
) -> None:
    """The server knows no such node: it refuses that monitored item at subscribe time.
    The device stays online with the others and says which point and node failed; a
    device none of whose nodes the server knows is offline, saying so."""
    unknown = '[[points]]\nname = "flow"\nnode = "ns=2;s=Boiler.Flow"\ntype = "float64"\n'
    ghost_map = '[[points]]\nname = "level"\nnode = "ns=2;i=99999"\ntype = "float64"\n'

    async def scenario() -> None:
        async with BoilerServer(port) as server:
            node_map = f"{NODE_MAP}\n{unknown}writable = true\n"
            boiler = device_config(tmp_path, server.endpoint, node_map=node_map)
            ghost = device_config(
                tmp_path, server.endpoint, name="ghost", node_map=ghost_map, reconnect_max_s=0.2
            )
            got = Collected()
            async with OpcuaPool.create([boiler, ghost], got) as pool:
                await wait(lambda: any(r.device == "boiler" for r in got.readings))
                await server.set("Pressure", 2.5)
                await wait(lambda: got.of("pressure") == [1.5, 2.5])
                assert all("flow" not in r.values for r in got.readings)
                status = {s.name: s for s in pool.status()}
                assert status["boiler"].state == "online"
                assert status["boiler"].last_error == (
                    "cannot monitor flow (ns=2;s=Boiler.Flow): BadNodeIdUnknown "
                    "(The node id refers to a node that does not exist in the server "
                    "address space): the server has no such node"
                )
                assert status["boiler"].errors == 1
                await wait(lambda: pool.status()[1].state == "offline")
                last = pool.status()[1].last_error
                assert last is not None
                assert "cannot monitor level (ns=2;i=99999): BadNodeIdUnknown" in last
                assert not any(r.device == "ghost" for r in got.readings)
                with pytest.raises(
                    WriteRefused, match=r"cannot monitor flow \(ns=2;s=Boiler\.Flow"
                ):
                    await pool.write("boiler", "flow", 1.0)

    run(scenario)


def test_a_type_mismatch_on_write_is_refused_by_the_server_and_named(
    tmp_path: Path, port: int
) -> None:
    """The node map says float64 where the server's variable is a UInt16: the value
    passes the map's checks, the server refuses it, nothing is written."""
    mistyped = NODE_MAP.replace(
        'node = "ns=2;s=Boiler.Count"\ntype = "uint16"',
        'node = "ns=2;s=Boiler.Count"\ntype = "float64"',
    )
    assert mistyped != NODE_MAP

    async def scenario() -> None:
        async with BoilerServer(port) as server:
            config = device_config(tmp_path, server.endpoint, node_map=mistyped)
            got = Collected()
            async with OpcuaPool.create([config], got) as pool:
                await wait(lambda: len(got.readings) >= 1)
                with pytest.raises(
                    OpcuaStatusError, match="cannot write count as float64: BadTypeMismatch"
                ) as caught:
                    await pool.write("boiler", "count", 2.5)
                assert caught.value.code == "BadTypeMismatch"
                assert await server.nodes["Count"].read_value() == 0
                assert pool.status()[0].state == "online"
                assert await pool.write("boiler", "setpoint", 33.0) == 33.0  # the rest works

    run(scenario)


def test_a_server_restart_loses_no_subscription(tmp_path: Path, port: int) -> None:
    async def scenario() -> None:
        server = BoilerServer(port)
        await server.start()
        got = Collected()
        config = device_config(tmp_path, server.endpoint, reconnect_max_s=0.5)
        async with OpcuaPool.create([config], got) as pool:
            await wait(lambda: len(got.readings) >= 1)
            await server.stop()
            await wait(lambda: pool.status()[0].state == "offline")
            status = pool.status()[0]
            assert status.last_error
            with pytest.raises(OpcuaConnectionError, match="offline"):
                await pool.write("boiler", "setpoint", 30)
            await server.start()  # a new server process: it knows no subscription
            await wait(lambda: pool.status()[0].state == "online")
            await wait(lambda: len(got.readings) >= 2)  # the new subscription's first values
            await server.set("Pressure", 4.0)
            await server.set("Temperature", 30.0)
            await wait(lambda: got.of("pressure")[-1:] == [4.0])
            await wait(lambda: got.of("temperature")[-1:] == [30.0])
            seqs = [r.seq for r in got.readings]
            assert seqs == list(range(len(seqs)))  # one numbering across the restart
            assert pool.status()[0].errors >= 1
        await server.stop()

    run(scenario)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (
            'endpoint = "http://127.0.0.1:4840/"',
            r"devices\.0: Value error, endpoint 'http://127.0.0.1:4840/' is not an OPC UA "
            r"TCP address; expected opc.tcp://HOST\[:PORT\]\[/PATH\]",
        ),
        ('endpoint = "opc.tcp://host:99999"', "endpoint 'opc.tcp://host:99999': Port out of range"),
        (
            'endpoint = "opc.tcp://h:4840"\nsecurity_policy = "Aes256"',
            "devices.0.security_policy: Input should be 'None' or 'Basic256Sha256'",
        ),
        (
            'endpoint = "opc.tcp://h:4840"\nsecurity_policy = "Basic256Sha256"\n'
            'certificate = "client.pem"\nprivate_key = "client.key"',
            "security_policy 'Basic256Sha256' needs server_certificate",
        ),
        (
            'endpoint = "opc.tcp://h:4840"\nsecurity_policy = "Basic256Sha256"\n'
            'certificate = "missing.pem"\nprivate_key = "k"\nserver_certificate = "s"',
            r"certificate: cannot read .*missing\.pem: No such file or directory",
        ),
        (
            'endpoint = "opc.tcp://h:4840"\nsecurity_policy = "Basic256Sha256"\n'
            'certificate = "boiler.toml"\nprivate_key = "k"\nserver_certificate = "s"',
            r"certificate: .*boiler\.toml is not an X\.509 certificate \(PEM or DER\)",
        ),
        (
            'endpoint = "opc.tcp://h:4840"\nsecurity_mode = "Sign"',
            'security_mode apply only with security_policy = "Basic256Sha256"',
        ),
        ('endpoint = "opc.tcp://h:4840"\nusername = "op"', "username and password go together"),
        ('endpoint = "opc.tcp://h:4840"\nport = 4840', "devices.0.port: unknown key"),
        ("", "devices.0.endpoint: Field required"),
    ],
)
def test_bad_opcua_devices_are_refused_naming_file_and_key(
    tmp_path: Path, device: str, message: str
) -> None:
    (tmp_path / "boiler.toml").write_text(NODE_MAP)
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[[devices]]\nname = "boiler"\ntransport = "opcua"\nmap = "boiler.toml"\n{device}\n'
    )
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("node_map", "message"),
    [
        ('node = "Boiler.Temperature"', "is not a node id: expected ns=N;s=NAME"),
        ('node = "ns=2;s=T"\ndeadband = 1.0\ntype = "bool"', "deadband applies to numeric"),
        ('node = "ns=2;s=T"\ntype = "int128"', r"points\.0\.type: Input should be 'bool'"),
    ],
)
def test_bad_node_maps_name_the_map_file(tmp_path: Path, node_map: str, message: str) -> None:
    point = f'[[points]]\nname = "t"\n{node_map}\n'
    if "type =" not in node_map:
        point += 'type = "float64"\n'
    (tmp_path / "bad.toml").write_text(point)
    path = tmp_path / "agent.toml"
    path.write_text(
        '[[devices]]\nname = "b"\ntransport = "opcua"\nendpoint = "opc.tcp://h"\nmap = "bad.toml"\n'
    )
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert f"{tmp_path / 'bad.toml'}: " in str(caught.value)


def test_an_unknown_transport_lists_opcua_among_the_expected(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[[devices]]\nname = "a"\ntransport = "udp"\nmap = "m.toml"\n')
    with pytest.raises(ConfigError, match=r"devices\.0\.transport: Input should be 'tcp', 'rtu', "):
        load_config(path)
    with pytest.raises(ConfigError, match="'rtu-tcp' or 'opcua'"):
        load_config(path)


def test_check_opens_a_session_or_says_why_not(tmp_path: Path, port: int) -> None:
    async def scenario() -> None:
        down = await check_opcua_device(
            device_config(tmp_path, f"opc.tcp://127.0.0.1:{port}/boiler/"), 3
        )
        assert down.verdict == "error"
        assert down.message.startswith("device 'boiler': cannot connect to opc.tcp://127.0.0.1")
        assert down.fix is not None
        assert "devices.endpoint" in down.fix
        async with BoilerServer(port) as server:
            up = await check_opcua_device(device_config(tmp_path, server.endpoint), 3)
            assert up.verdict == "ok", up.message
            assert up.message == f"{server.endpoint} (None): session open, server Running"

    run(scenario)


def test_an_agent_publishes_an_opcua_device_through_a_module(
    tmp_path: Path, port: int, mosquitto: Mosquitto
) -> None:
    (tmp_path / "boiler.toml").write_text(NODE_MAP)
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "state"\n\n'
        '[engine]\nkind = "wasmtime"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n\n'
        '[control]\nsocket = "control.sock"\n\n'
        "[pipeline]\nraw_readings = true\n\n"
        "[supply]\nallow_unsigned_paths = true\n\n"
        '[[devices]]\nname = "boiler"\ntransport = "opcua"\n'
        f'endpoint = "opc.tcp://127.0.0.1:{port}/boiler/"\nmap = "boiler.toml"\n\n'
        f'[[modules]]\nname = "scale"\npath = "{DIST}/scale.wasm"\n'
        '[modules.config]\ntopic = "scaled"\n'
        '[modules.config.channels.temperature]\nto = "degF"\n'
    )

    def docs(sub: Subscriber, topic: str) -> list[dict[str, object]]:
        return [json.loads(p) for t, p in sub.messages if t == f"{ROOT}/{topic}"]

    async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]], object]:
        stop = asyncio.Event()
        agent = Agent(load_config(config_path), config_path=config_path)
        async with BoilerServer(port) as server, Subscriber(mosquitto, f"{ROOT}/#") as sub:
            task = asyncio.create_task(agent.run(stop))
            await until(lambda: len(docs(sub, "scaled")) >= 1)
            await server.set("Temperature", 100.0)
            await until(lambda: len(docs(sub, "scaled")) >= 2)
            reply = await command(
                mosquitto, "device.write", {"device": "boiler", "point": "setpoint", "value": 40}
            )
            status = agent.snapshot()
            stop.set()
            await task
            return docs(sub, "devices/boiler"), docs(sub, "scaled"), (reply, status)

    raw, scaled, (reply, status) = asyncio.run(scenario())
    assert [d["seq"] for d in raw[:2]] == [0, 1]
    temps = [d["values"]["temperature"] for d in scaled[:2]]  # type: ignore[index]
    assert [t["value"] for t in temps] == [pytest.approx(68.0), pytest.approx(212.0)]
    assert all(t["unit"] == "degF" for t in temps)
    assert reply["status"] == "ok", reply  # type: ignore[index]
    assert reply["data"] == {"device": "boiler", "point": "setpoint", "value": 40.0}  # type: ignore[index]
    (device,) = status.devices  # type: ignore[attr-defined]
    assert device.name == "boiler"
    assert device.state == "online"


def test_the_shipped_node_map_loads() -> None:
    boiler = load_node_map(REPO / "config" / "devices" / "boiler-opcua.toml")
    pressure = boiler.point("pressure")
    assert pressure is not None
    assert pressure.deadband_type == "percent"
    assert boiler.sampling_s(pressure) == 0.1
    setpoint = boiler.point("setpoint")
    assert setpoint is not None
    assert setpoint.writable
    assert boiler.sampling_s(setpoint) == boiler.sampling_interval_s


def test_loading_the_config_does_not_import_asyncua(tmp_path: Path) -> None:
    (tmp_path / "boiler.toml").write_text(NODE_MAP)
    path = tmp_path / "agent.toml"
    path.write_text(
        '[[devices]]\nname = "b"\ntransport = "opcua"\nendpoint = "opc.tcp://h"\n'
        'map = "boiler.toml"\n'
    )
    script = (
        "import sys; from pathlib import Path; from agent.config import load_config; "
        f"load_config(Path({str(path)!r})); assert 'asyncua' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
