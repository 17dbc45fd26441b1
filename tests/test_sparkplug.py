"""Sparkplug B end to end: the agent as a process, a simulated Modbus device, mosquitto,
and mosquitto's own clients as the host application.

The payloads are decoded with classes built here from `sparkplug_b.proto` (compiled at
test time into a descriptor set of its own), never with the agent's generated module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from agent.config import MqttConfig, load_config
from agent.control import fetch_status
from agent.errors import AgentError
from agent.journal import Journal
from agent.mqtt import BrokerSession
from agent.mqtt import watch as mqtt_watch
from agent.reading import Reading, Value
from agent.sim import DeviceImage, SimServer
from agent.sparkplug import CONSUMER, datatype_of
from tests.brokers import Mosquitto, Subscriber, free_port, refusing_broker, until
from tests.conftest import REPO

GROUP = "plant"
NODE = "gw-1"
HOST = "scada"
PROTO = REPO / "agent" / "sparkplug" / "sparkplug_b.proto"

MAP = """
[[groups]]
name = "fast"
interval_s = 0.01
registers = [
  {name = "running", table = "coil", address = 0, type = "bool", writable = true},
  {name = "speed", table = "holding", address = 0, type = "int16", writable = true},
  {name = "count", table = "holding", address = 1, type = "uint16"},
  {name = "total", table = "holding", address = 2, type = "int32"},
  {name = "flow", table = "holding", address = 4, type = "float32", unit = "m3/h"},
  {name = "energy", table = "holding", address = 6, type = "float64"},
  {name = "label", table = "holding", address = 10, type = "string", length = 2},
  {name = "temp", table = "input", address = 0, type = "int16", scale = 0.1},
]
"""
EXPECTED_TYPES = {
    "running": "Boolean",
    "speed": "Int16",
    "count": "UInt16",
    "total": "Int32",
    "flow": "Float",
    "energy": "Double",
    "label": "String",
    "temp": "Double",
}


class Schema:
    """Payload and DataType from the .proto, in a descriptor pool of their own."""

    def __init__(self, workdir: Path) -> None:
        from grpc_tools import protoc  # noqa: PLC0415  (dev-only tool)

        out = workdir / "sparkplug.desc"
        args = ["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", PROTO.name]
        assert protoc.main(args) == 0
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
        pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            pool.Add(file)
        self.payload = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload")
        )
        self.types = {
            v.name: v.number
            for v in pool.FindEnumTypeByName("org.eclipse.tahu.protobuf.DataType").values
        }

    def decode(self, hex_payload: str) -> Any:
        return self.payload.FromString(bytes.fromhex(hex_payload))

    def encode(self, **fields: Any) -> bytes:
        return bytes(self.payload(**fields).SerializeToString())


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Schema:
    return Schema(tmp_path_factory.mktemp("schema"))


@dataclass
class Node:
    config: Path
    image: DeviceImage
    device_port: int
    broker: Mosquitto

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "agent", "--log-level", "info", "run", "--config"]
        with (self.config.parent / "agent.log").open("ab") as log:
            return subprocess.Popen([*command, str(self.config)], env=env, stderr=log)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Subscriber]:
        """The device served, a subscriber to the group, the agent started; on exit
        the agent stops cleanly (SIGTERM, exit code 0)."""
        async with (
            SimServer({1: self.image}, port=self.device_port),
            Subscriber(self.broker, f"spBv1.0/{GROUP}/#", "-F", "%t %x") as sub,
        ):
            agent = self.start()
            try:
                yield sub
            finally:
                agent.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(agent.wait, 30) == 0

    def topic(self, kind: str, device: str | None = None) -> str:
        return f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if device else "")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        path = self.config.parent / "message.bin"
        path.write_bytes(payload)
        args = ["mosquitto_pub", "-p", str(self.broker.port), "-t", topic, "-f", str(path)]
        pub = await asyncio.create_subprocess_exec(*args, *(["-r"] if retain else []))
        assert await pub.wait() == 0


def make_node(
    tmp_path: Path,
    broker: Mosquitto,
    *,
    primary_host: bool = False,
    extra: str = "",
    extra_sections: str = "",
) -> Node:
    (tmp_path / "fast.toml").write_text(MAP)
    image = DeviceImage(size=32)
    image.set("holding", 10, [ord("o") << 8 | ord("k"), 0])
    image.set("input", 0, [215])
    counter = iter(range(1 << 30))
    # Every read sees a new count: each poll changes a value, so each makes a DDATA.
    image.before_read = lambda: image.set("holding", 1, [next(counter) % 65536])
    port = free_port()
    host = f'primary_host_id = "{HOST}"' if primary_host else ""
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[node]
id = "{NODE}"
state_dir = "state"

[engine]
kind = "wasmtime"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[control]
socket = "control.sock"

[commands]
enabled = false

[sparkplug]
enabled = true
group_id = "{GROUP}"
{host}
{extra}

{extra_sections}
[[devices]]
name = "pump"
transport = "tcp"
host = "127.0.0.1"
port = {port}
map = "fast.toml"
timeout_s = 0.2
retries = 0
reconnect_max_s = 0.2
"""
    )
    return Node(config, image, port, broker)


def sparkplug_messages(sub: Subscriber, schema: Schema) -> Iterator[tuple[str, Any]]:
    for topic, hex_payload in sub.messages:
        if not topic.startswith("spBv1.0/STATE/"):
            yield topic, schema.decode(hex_payload)


def metric(payload: Any, name: str) -> Any:
    return next(m for m in payload.metrics if m.name == name)


def test_the_sparkplug_session_births_data_commands_and_deaths(
    tmp_path: Path, mosquitto: Mosquitto, schema: Schema
) -> None:
    node = make_node(tmp_path, mosquitto)

    async def scenario() -> list[tuple[str, Any]]:
        sim = SimServer({1: node.image}, port=node.device_port)
        await sim.start()
        async with Subscriber(mosquitto, "spBv1.0/#", "-F", "%t %x") as sub:

            def seen(kind: str, device: str | None = None) -> list[Any]:
                want = node.topic(kind, device)
                return [p for t, p in sparkplug_messages(sub, schema) if t == want]

            agent = node.start()
            try:
                await until(lambda: len(seen("DDATA", "pump")) >= 300, 30)

                # Rebirth on NCMD, by name.
                rebirth = {"name": "Node Control/Rebirth", "boolean_value": True}
                await node.publish(node.topic("NCMD"), schema.encode(metrics=[rebirth]))
                await until(lambda: len(seen("NBIRTH")) == 2 and len(seen("DBIRTH", "pump")) == 2)

                # DCMD by alias: a write that reaches the device, read back as DDATA.
                speed = next(m for m in seen("DBIRTH", "pump")[0].metrics if m.name == "speed")
                write = {"alias": speed.alias, "int_value": (-42) & 0xFFFFFFFF}
                await node.publish(node.topic("DCMD", "pump"), schema.encode(metrics=[write]))
                await until(lambda: node.image.tables["holding"][0] == (-42) & 0xFFFF)

                def echoed() -> bool:
                    return any(
                        m.alias == speed.alias and m.int_value == (-42) & 0xFFFFFFFF
                        for p in seen("DDATA", "pump")
                        for m in p.metrics
                    )

                await until(echoed)

                # The device goes away, and comes back.
                await sim.stop()
                await until(lambda: len(seen("DDEATH", "pump")) == 1)
                await sim.start()
                await until(lambda: len(seen("DBIRTH", "pump")) == 3)

                # Killed: the broker sends the will, NDEATH with this session's bdSeq.
                agent.send_signal(signal.SIGKILL)
                agent.wait(10)
                await until(lambda: len(seen("NDEATH")) == 1)

                # The next session has the next bdSeq; a clean stop sends its NDEATH itself.
                agent = node.start()
                await until(lambda: len(seen("NBIRTH")) == 3)
                agent.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(agent.wait, 30) == 0
                await until(lambda: len(seen("NDEATH")) == 2)
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait(10)
                await sim.stop()
            return list(sparkplug_messages(sub, schema))

    check_session(node, schema, asyncio.run(scenario()))


def check_session(node: Node, schema: Schema, messages: list[tuple[str, Any]]) -> None:
    types = schema.types
    births = [p for t, p in messages if t == node.topic("NBIRTH")]
    deaths = [p for t, p in messages if t == node.topic("NDEATH")]
    assert [metric(p, "bdSeq").long_value for p in births] == [0, 0, 1]  # a rebirth keeps it
    assert [metric(p, "bdSeq").long_value for p in deaths] == [0, 1]
    assert all(metric(p, "bdSeq").datatype == types["Int64"] for p in births + deaths)
    rebirth = metric(births[0], "Node Control/Rebirth")
    assert (rebirth.datatype, rebirth.boolean_value) == (types["Boolean"], False)

    dbirth = next(p for t, p in messages if t == node.topic("DBIRTH", "pump"))
    by_name = {m.name: m for m in dbirth.metrics}
    assert {n: m.datatype for n, m in by_name.items()} == {
        n: types[t] for n, t in EXPECTED_TYPES.items()
    }
    aliases = [m.alias for m in dbirth.metrics]
    assert len(set(aliases)) == len(aliases)
    assert rebirth.alias not in aliases  # unique across the edge node
    assert by_name["label"].string_value == "ok"
    assert by_name["temp"].double_value == pytest.approx(21.5)
    assert by_name["running"].boolean_value is False

    # Each session's messages: seq 0 in the NBIRTH, then one more each, 255 wraps to 0.
    first_session: list[Any] = []
    for topic, payload in messages:
        if topic.split("/")[2] in ("NCMD", "DCMD"):
            continue  # the test's own commands
        if topic == node.topic("NBIRTH") and first_session:
            break
        first_session.append(payload)
    seqs = [p.seq for p in first_session]
    assert seqs == [i % 256 for i in range(len(seqs))]
    assert len(seqs) > 256
    # DDATA speaks by alias only, with the births' datatypes.
    ddata = [p for t, p in messages if t == node.topic("DDATA", "pump")]
    assert all(not m.HasField("name") and m.alias in aliases for p in ddata for m in p.metrics)
    count = next(m for m in dbirth.metrics if m.name == "count")
    assert any(m.alias == count.alias and m.HasField("int_value") for m in ddata[0].metrics)


def test_births_wait_for_the_primary_host_and_follow_its_state(
    tmp_path: Path, mosquitto: Mosquitto, schema: Schema
) -> None:
    node = make_node(tmp_path, mosquitto, primary_host=True)
    state_topic = f"spBv1.0/STATE/{HOST}"

    def state(online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": int(time.time() * 1000)}).encode()

    async def scenario() -> list[tuple[str, Any]]:
        await node.publish(state_topic, state(False), retain=True)
        async with node.running() as sub:

            def count(kind: str) -> int:
                return sum(t == node.topic(kind) for t, _ in sub.messages)

            await asyncio.sleep(3)  # started, connected, polling: yet no birth
            assert count("NBIRTH") == 0
            await node.publish(state_topic, state(True), retain=True)
            await until(lambda: count("NBIRTH") == 1)
            await until(lambda: any(t == node.topic("DDATA", "pump") for t, _ in sub.messages))
            await node.publish(state_topic, state(False), retain=True)
            await until(lambda: count("NDEATH") == 1)
            await asyncio.sleep(0.5)
            assert count("NBIRTH") == 1  # a new session waits for the host again
            await node.publish(state_topic, state(True), retain=True)
            await until(lambda: count("NBIRTH") == 2)
        return list(sparkplug_messages(sub, schema))

    messages = asyncio.run(scenario())
    kinds = [t.split("/")[2] for t, _ in messages]
    births = [p for t, p in messages if t == node.topic("NBIRTH")]
    assert [metric(p, "bdSeq").long_value for p in births] == [0, 1]
    death = next(p for t, p in messages if t == node.topic("NDEATH"))
    assert metric(death, "bdSeq").long_value == 0
    # The host's return gets the whole birth sequence again before any data.
    second = kinds.index("NBIRTH", kinds.index("NDEATH"))
    assert kinds[second + 1] == "DBIRTH"


def test_data_stored_while_the_broker_is_down_follows_the_next_births(
    tmp_path: Path, mosquitto: Mosquitto, schema: Schema
) -> None:
    """DDATA polled during an outage is kept on disk, and goes out after the new
    session's NBIRTH and DBIRTH, in order, flagged historical, with the new seq."""
    with mosquitto.config.open("a") as conf:
        conf.write("queue_qos0_messages true\n")  # the test's subscriber sees QoS 0 too
    mosquitto.stop()
    mosquitto.start()
    node = make_node(tmp_path, mosquitto, extra="data_qos = 1")
    ddata = node.topic("DDATA", "pump")

    async def scenario() -> list[tuple[str, Any]]:
        async with node.running() as sub:

            def count(topic: str) -> int:
                return sum(t == topic for t, _ in sub.messages)

            await until(lambda: count(ddata) >= 20)
            mosquitto.stop()
            await asyncio.sleep(1.0)
            mosquitto.start()
            await until(lambda: count(node.topic("NBIRTH")) == 2)
            seen = count(ddata)
            await until(lambda: count(ddata) >= seen + 100)
        return list(sparkplug_messages(sub, schema))

    messages = asyncio.run(scenario())
    second = [t for t, _ in messages].index(node.topic("NBIRTH"), 1)
    session = [(t, p) for t, p in messages[second:] if t != node.topic("NDEATH")]
    assert [t.split("/")[2] for t, _ in session[:2]] == ["NBIRTH", "DBIRTH"]
    assert [p.seq for _, p in session] == [i % 256 for i in range(len(session))]
    flags = [all(m.is_historical for m in p.metrics) for t, p in session[2:] if t == ddata]
    assert any(flags)
    assert flags == sorted(flags, reverse=True)  # the stored ones first, then live data
    alias = next(m.alias for m in session[1][1].metrics if m.name == "count")
    counts = [m.int_value for t, p in messages if t == ddata for m in p.metrics if m.alias == alias]
    assert counts == sorted(counts)  # nothing out of order, across the outage


def test_the_session_fails_over_to_the_next_of_mqtt_hosts(
    tmp_path: Path, mosquitto: Mosquitto, schema: Schema
) -> None:
    """With `mqtt.hosts`, losing the broker moves the session to the next one: a new
    session there, with the next bdSeq, its births and then data."""
    (tmp_path / "second").mkdir()
    second = Mosquitto(tmp_path / "second")
    second.start()
    node = make_node(tmp_path, second)  # its subscriber is on the second broker
    mqtt = f'host = "127.0.0.1"\nport = {second.port}'
    hosts = f'hosts = ["127.0.0.1:{mosquitto.port}", "127.0.0.1:{second.port}"]'
    node.config.write_text(node.config.read_text().replace(mqtt, hosts))
    ddata = node.topic("DDATA", "pump")

    async def scenario() -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        async with (
            Subscriber(mosquitto, f"spBv1.0/{GROUP}/#", "-F", "%t %x") as first,
            node.running() as sub,
        ):
            await until(lambda: any(t == ddata for t, _ in first.messages))
            mosquitto.stop()
            await until(lambda: any(t == ddata for t, _ in sub.messages))
        return list(sparkplug_messages(first, schema)), list(sparkplug_messages(sub, schema))

    try:
        on_first, on_second = asyncio.run(scenario())
    finally:
        second.stop()
    births = [p for t, p in on_first + on_second if t == node.topic("NBIRTH")]
    assert [metric(p, "bdSeq").long_value for p in births] == [0, 1]
    kinds = [t.split("/")[2] for t, _ in on_second]
    assert kinds[:3] == ["NBIRTH", "DBIRTH", "DDATA"]


def test_a_refused_subscription_is_named_in_status_and_no_birth_is_sent(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A broker that refuses the DCMD subscription (an ACL) would leave the node deaf to
    commands without a word: the session ends, names the filter in status, and tries
    again later; no births go out meanwhile."""
    dcmd = f"spBv1.0/{GROUP}/DCMD/{NODE}/+"
    node = make_node(tmp_path, mosquitto)
    socket = load_config(node.config).control.socket

    async def scenario() -> tuple[str | None, list[str]]:
        error: str | None = None
        seen: list[str] = []
        nbirth = f"spBv1.0/{GROUP}/NBIRTH/#"
        probe = f"spBv1.0/{GROUP}/NBIRTH/probe"
        async with refusing_broker(["edge/#", nbirth, f"spBv1.0/{GROUP}/NCMD/#"]) as port:
            mqtt = f'host = "127.0.0.1"\nport = {mosquitto.port}'
            amqtt = f'host = "127.0.0.1"\nport = {port}\nprotocol = "3.1.1"'
            node.config.write_text(node.config.read_text().replace(mqtt, amqtt))

            async def watch(topic_filter: str) -> None:
                config = MqttConfig(port=port, protocol="3.1.1")
                async for topic, _ in mqtt_watch(config, topic_filter):
                    seen.append(topic)

            watchers = [asyncio.create_task(watch(f)) for f in ("edge/#", nbirth)]
            async with SimServer({1: node.image}, port=node.device_port):
                agent = node.start()
                try:
                    deadline = time.monotonic() + 30
                    while error is None and time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
                        with contextlib.suppress(AgentError):
                            status = await asyncio.to_thread(fetch_status, socket)
                            error = status.sparkplug and status.sparkplug.last_error
                    # The NBIRTH watcher hears an NBIRTH topic: it would have heard births.
                    async with BrokerSession(MqttConfig(port=port, protocol="3.1.1")) as s:
                        while probe not in seen and time.monotonic() < deadline:
                            await s.publish(probe, b"probe", retain=False)
                            await asyncio.sleep(0.2)
                finally:
                    agent.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(agent.wait, 30) == 0
                    for watcher in watchers:
                        watcher.cancel()
                    await asyncio.gather(*watchers, return_exceptions=True)
        return error, seen

    error, seen = asyncio.run(scenario())
    assert error == f"the broker refused the subscription to {dcmd}"
    assert {t for t in seen if t.startswith("spBv1.0/")} == {f"spBv1.0/{GROUP}/NBIRTH/probe"}
    assert any(t.startswith("edge/") for t in seen)  # the node's own data went out


def test_readings_journaled_but_not_yet_taken_go_out_as_historical_ddata(
    tmp_path: Path, mosquitto: Mosquitto, schema: Schema
) -> None:
    """Readings in the journal that Sparkplug had not taken (a SIGKILL between the
    pipeline and the node) become DDATA at the next start: after the NBIRTH and DBIRTH,
    flagged historical, with their own timestamps, in journal order."""
    node = make_node(tmp_path, mosquitto)
    config = load_config(node.config)
    config.node.state_dir.mkdir(parents=True)
    missed_ts = [1_700_000_000.0 + i for i in range(3)]

    async def journal_missed() -> None:
        with Journal.open(config.journal_path) as journal:
            journal.attach(CONSUMER)  # its cursor from a run before: the journal keeps them
            for seq, ts in enumerate(missed_ts):
                values = {"speed": Value(1000 + seq), "label": Value("zz"), "temp": Value(9.5)}
                values["flow"] = Value(1.0, quality="bad")
                await journal.append(Reading("pump", ts, seq, values))

    asyncio.run(journal_missed())
    ddata = node.topic("DDATA", "pump")

    async def scenario() -> list[tuple[str, Any]]:
        async with node.running() as sub:
            await until(lambda: sum(t == ddata for t, _ in sub.messages) >= 5)
        return list(sparkplug_messages(sub, schema))

    messages = asyncio.run(scenario())
    kinds = [t.split("/")[2] for t, _ in messages]
    assert kinds[:2] == ["NBIRTH", "DBIRTH"]
    alias = {m.name: m.alias for m in messages[1][1].metrics}
    missed = [p for t, p in messages[2:5] if t == ddata]
    assert [p.timestamp for p in missed] == [int(ts * 1000) for ts in missed_ts]
    assert all(m.is_historical for p in missed for m in p.metrics)
    first = {m.alias: m for m in missed[0].metrics}
    # The values are not known after a restart: the first one carries every good value.
    assert set(first) == {alias["speed"], alias["label"], alias["temp"]}
    assert first[alias["label"]].string_value == "zz"
    assert first[alias["temp"]].double_value == pytest.approx(9.5)
    speeds = [m.int_value for p in missed for m in p.metrics if m.alias == alias["speed"]]
    assert speeds == [1000, 1001, 1002]
    assert [m.alias for p in missed[1:] for m in p.metrics] == [alias["speed"]] * 2
    live = [p for t, p in messages[5:] if t == ddata]
    assert live
    assert not any(m.is_historical for p in live for m in p.metrics)


def test_module_outputs_are_node_metrics_born_before_their_first_ndata(
    tmp_path: Path, mosquitto: Mosquitto, schema: Schema
) -> None:
    module = f"""
[supply]
allow_unsigned_paths = true

[[modules]]
name = "stats"
path = "{REPO}/modules/dist/window-stats.wasm"
config = {{ every = 10, channels = ["temp"] }}
"""
    node = make_node(tmp_path, mosquitto, extra_sections=module)

    async def scenario() -> list[tuple[str, Any]]:
        async with node.running() as sub:
            await until(lambda: sum(t == node.topic("NDATA") for t, _ in sub.messages) >= 3)
        return list(sparkplug_messages(sub, schema))

    messages = asyncio.run(scenario())
    kinds = [t.split("/")[2] for t, _ in messages]
    # The first output brought a new metric: births again (same bdSeq) before its NDATA.
    assert kinds.count("NBIRTH") == 2
    assert kinds.index("NDATA") > kinds.index("NBIRTH", 1)
    births = [p for t, p in messages if t == node.topic("NBIRTH")]
    assert [metric(p, "bdSeq").long_value for p in births] == [0, 0]
    mean = metric(births[1], "stats/pump/channels/temp/mean")
    assert mean.datatype == schema.types["Double"]
    assert mean.double_value == pytest.approx(21.5)
    known = {m.alias for m in births[1].metrics if m.name != "bdSeq"}
    ndata = [p for t, p in messages if t == node.topic("NDATA")]
    assert all(m.alias in known and not m.HasField("name") for p in ndata for m in p.metrics)
    assert any(m.alias == mean.alias for m in ndata[-1].metrics)


def test_bad_commands_write_nothing_and_say_why(
    tmp_path: Path, mosquitto: Mosquitto, schema: Schema
) -> None:
    """Unknown metrics, a read-only point, values of another datatype and payloads that
    are not protobuf: each command is refused whole and logged, the device's registers
    stay as they were, and the agent goes on serving the commands that follow."""
    node = make_node(tmp_path, mosquitto)
    ncmd, dcmd = node.topic("NCMD"), node.topic("DCMD", "pump")
    types = schema.types

    def command(*metrics: dict[str, Any]) -> bytes:
        return schema.encode(metrics=list(metrics))

    async def scenario() -> tuple[dict[str, list[int]], dict[str, list[int]], int, int]:
        async with node.running() as sub:

            def seen(topic: str) -> list[Any]:  # the node's own: the commands do not decode
                return [schema.decode(p) for t, p in sub.messages if t == topic]

            await until(lambda: len(seen(node.topic("DBIRTH", "pump"))) == 1)
            alias = {m.name: m.alias for m in seen(node.topic("DBIRTH", "pump"))[0].metrics}
            before = {table: list(words) for table, words in node.image.tables.items()}
            refused = [
                (ncmd, command({"name": "Node Control/Reboot", "boolean_value": True})),
                (ncmd, b"not a protobuf payload"),
                (dcmd, command({"name": "bogus", "int_value": 1})),
                (dcmd, command({"alias": 999, "int_value": 1})),
                (dcmd, command({"name": "total", "int_value": 123456})),  # read-only
                (dcmd, command({"alias": alias["speed"], "string_value": "fast"})),
                (dcmd, command({"name": "running", "datatype": types["Int32"], "int_value": 1})),
                (dcmd, command({"name": "speed", "int_value": 40000})),  # past Int16
                # A good metric beside a bad one: the command is refused whole.
                (
                    dcmd,
                    command(
                        {"name": "speed", "int_value": 7}, {"name": "running", "double_value": 1.0}
                    ),
                ),
                (dcmd, b"\xff\xfe not protobuf"),
            ]
            for topic, payload in refused:
                await node.publish(topic, payload)
            # A good command after them: it is written, so the ones before were handled.
            await node.publish(dcmd, command({"name": "speed", "int_value": (-42) & 0xFFFFFFFF}))
            await until(lambda: node.image.tables["holding"][0] == (-42) & 0xFFFF)
            after = {table: list(words) for table, words in node.image.tables.items()}
            births = len(seen(node.topic("NBIRTH")))

            def speeds() -> set[int]:
                ddata = seen(node.topic("DDATA", "pump"))
                return {m.int_value for p in ddata for m in p.metrics if m.alias == alias["speed"]}

            await until(lambda: bool(speeds()))  # the value read back follows the write
            socket = load_config(node.config).control.socket
            status = (await asyncio.to_thread(fetch_status, socket)).sparkplug
        assert speeds() == {(-42) & 0xFFFFFFFF}  # the value read back; never the 7 refused
        assert status is not None
        assert (status.connected, status.births) == (True, 1)
        return before, after, births, status.commands_refused

    before, after, births, refused = asyncio.run(scenario())
    assert refused == 10
    for words in (before["holding"], after["holding"]):
        words[0:2] = [0, 0]  # speed, written last; count, which the device counts up
    assert after == before
    assert births == 1  # no rebirth from a refused NCMD
    log = (tmp_path / "agent.log").read_text()
    dcmd_refused = "Sparkplug DCMD for pump refused, nothing written: "
    for line in [
        "Sparkplug NCMD refused: metric 'Node Control/Reboot' is not a node command "
        "(only 'Node Control/Rebirth' is)",
        "Sparkplug NCMD refused: not a Sparkplug B payload",
        f"{dcmd_refused}unknown metric 'bogus'",
        f"{dcmd_refused}unknown metric alias 999",
        f"{dcmd_refused}'total' is read-only",
        f"{dcmd_refused}'speed': carries string_value, not a value of datatype Int16",
        f"{dcmd_refused}'running': declares datatype Int32, the metric is Boolean",
        f"{dcmd_refused}'speed': 40000 is outside the range of Int16",
        f"{dcmd_refused}'running': carries double_value, not a value of datatype Boolean",
        f"{dcmd_refused}not a Sparkplug B payload",
    ]:
        assert line in log


TANK_MAP = """
publishing_interval_s = 0.05
sampling_interval_s = 0.02

[[points]]
name = "level"
node = "ns=2;s=Tank.Level"
type = "float64"
unit = "m"

[[points]]
name = "valve"
node = "ns=2;s=Tank.Valve"
type = "bool"
writable = true
"""


async def tank_server(port: int) -> tuple[Any, Any, Any]:
    """asyncua's server, started, with a Double `Level` (1.5) and a writable Boolean
    `Valve` (false) under ns=2; returns it and the two variables."""
    from asyncua import Server, ua  # noqa: PLC0415  (only this test serves OPC UA)

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/tank/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:edge-agent:test:tank")
    tank = await server.nodes.objects.add_object(ua.NodeId("Tank", ns), "Tank")
    level = await tank.add_variable(
        ua.NodeId("Tank.Level", ns), "Level", 1.5, ua.VariantType.Double
    )
    valve = await tank.add_variable(
        ua.NodeId("Tank.Valve", ns), "Valve", False, ua.VariantType.Boolean
    )
    await valve.set_writable()
    await server.start()
    return server, level, valve


def test_an_opcua_device_is_a_sparkplug_device(
    tmp_path: Path, mosquitto: Mosquitto, schema: Schema
) -> None:
    """An OPC UA server's points as a Sparkplug device: DBIRTH with the node map's
    points and datatypes, DDATA when the server changes a value, a DCMD written to the
    server's variable and read back, DDEATH when the server goes away."""
    from asyncua import ua  # noqa: PLC0415  (only this test serves OPC UA)

    port = free_port()
    (tmp_path / "tank.toml").write_text(TANK_MAP)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "state"\n\n[engine]\nkind = "wasmtime"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n\n'
        '[control]\nsocket = "control.sock"\n\n[commands]\nenabled = false\n\n'
        f'[sparkplug]\nenabled = true\ngroup_id = "{GROUP}"\n\n'
        '[[devices]]\nname = "tank"\ntransport = "opcua"\n'
        f'endpoint = "opc.tcp://127.0.0.1:{port}/tank/"\nmap = "tank.toml"\n'
    )
    node = Node(config, DeviceImage(size=16), 0, mosquitto)  # no Modbus device

    async def scenario() -> tuple[list[tuple[str, Any]], object]:
        server, level, valve = await tank_server(port)
        stopped = False
        async with Subscriber(mosquitto, f"spBv1.0/{GROUP}/#", "-F", "%t %x") as sub:

            def seen(kind: str) -> list[Any]:  # the node's own: the commands are left out
                want = node.topic(kind, "tank")
                return [schema.decode(p) for t, p in sub.messages if t == want]

            def ddata(alias: int) -> list[Any]:
                return [m for p in seen("DDATA") for m in p.metrics if m.alias == alias]

            agent = node.start()
            try:
                await until(lambda: len(seen("DBIRTH")) == 1)
                alias = {m.name: m.alias for m in seen("DBIRTH")[0].metrics}
                await level.write_value(ua.Variant(42.5, ua.VariantType.Double))
                await until(lambda: any(m.double_value == 42.5 for m in ddata(alias["level"])))
                write = {"name": "valve", "boolean_value": True}
                await node.publish(node.topic("DCMD", "tank"), schema.encode(metrics=[write]))
                await until(lambda: any(m.boolean_value for m in ddata(alias["valve"])))
                on_server = await valve.read_value()
                await server.stop()
                stopped = True
                await until(lambda: len(seen("DDEATH")) == 1)
                agent.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(agent.wait, 30) == 0
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait(10)
                if not stopped:
                    await server.stop()
        return list(sparkplug_messages(sub, schema)), on_server

    messages, on_server = asyncio.run(scenario())
    assert on_server is True  # the DCMD reached the server's variable
    births = [p for t, p in messages if t == node.topic("NBIRTH")]
    dbirth = next(p for t, p in messages if t == node.topic("DBIRTH", "tank"))
    by_name = {m.name: m for m in dbirth.metrics}
    assert {n: m.datatype for n, m in by_name.items()} == {
        "level": schema.types["Double"],
        "valve": schema.types["Boolean"],
    }
    assert by_name["level"].double_value == 1.5
    assert by_name["valve"].boolean_value is False
    aliases = {m.alias for m in dbirth.metrics}
    assert len(aliases) == 2
    assert metric(births[0], "Node Control/Rebirth").alias not in aliases
    ddata = [p for t, p in messages if t == node.topic("DDATA", "tank")]
    assert all(not m.HasField("name") and m.alias in aliases for p in ddata for m in p.metrics)


def test_datatypes_follow_the_register_map(tmp_path: Path) -> None:
    (tmp_path / "fast.toml").write_text(MAP)
    (tmp_path / "agent.toml").write_text(
        '[[devices]]\nname = "pump"\ntransport = "tcp"\nhost = "127.0.0.1"\nmap = "fast.toml"\n'
    )
    config = load_config(tmp_path / "agent.toml")
    device = config.devices[0]
    registers = [r for g in device.register_map.groups for r in g.registers]  # type: ignore[union-attr]
    names = {v: k for k, v in Schema(tmp_path).types.items()}
    assert {r.name: names[datatype_of(r)] for r in registers} == EXPECTED_TYPES


def test_the_committed_generated_module_is_what_the_script_makes(tmp_path: Path) -> None:
    subprocess.run(
        [REPO / "scripts" / "make-sparkplug-proto", "--out", str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        committed = (REPO / "agent" / "sparkplug" / name).read_bytes()
        assert (tmp_path / name).read_bytes() == committed, name


def test_an_independent_host_implementation_reads_births_and_data(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """pysparkplug, written apart from this project, decodes what the node sends:
    bdSeq and the rebirth control in NBIRTH, every register with its datatype in
    DBIRTH, and DDATA by alias resolved through that DBIRTH."""
    pysparkplug = pytest.importorskip(
        "pysparkplug", reason="scripts/venv installs pysparkplug (without its paho-mqtt pin)"
    )
    node = make_node(tmp_path, mosquitto)

    async def scenario() -> list[tuple[str, bytes]]:
        async with node.running() as sub:

            def raw(kind: str, device: str | None = None) -> list[bytes]:
                want = node.topic(kind, device)
                return [bytes.fromhex(p) for t, p in sub.messages if t == want]

            await until(lambda: len(raw("DDATA", "pump")) >= 3 and bool(raw("NBIRTH")), 30)
            return [(t, bytes.fromhex(p)) for t, p in sub.messages]

    messages = asyncio.run(scenario())

    def first(kind: str, device: str | None = None) -> bytes:
        return next(p for t, p in messages if t == node.topic(kind, device))

    nbirth = pysparkplug.NBirth.decode(first("NBIRTH"))
    node_metrics = {m.name: m for m in nbirth.metrics}
    assert node_metrics["bdSeq"].datatype == pysparkplug.DataType.INT64
    assert node_metrics["Node Control/Rebirth"].value is False
    dbirth = pysparkplug.DBirth.decode(first("DBIRTH", "pump"))
    types = {m.name: m.datatype.name for m in dbirth.metrics}
    assert types == {name: kind.upper() for name, kind in EXPECTED_TYPES.items()}
    ddata = [
        pysparkplug.DData.decode(p, birth=dbirth)
        for t, p in messages
        if t == node.topic("DDATA", "pump")
    ]
    counts = [m.value for d in ddata for m in d.metrics if m.name == "count"]
    assert len(counts) >= 3
    assert counts == sorted(counts)  # the device's counter, in order
