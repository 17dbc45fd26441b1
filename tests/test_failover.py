"""A clustered broker: `mqtt.hosts`, and failover between its nodes with nothing lost.

The cluster is three real nats-server processes (`tests/cluster.py`); the subscriber is
mosquitto_sub with a persistent session on a node that survives; a node is lost to
SIGKILL, as to a power cut. NATS speaks MQTT 3.1.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import MqttConfig, load_config
from agent.control import fetch_status
from agent.errors import AgentError, ConfigError
from agent.journal import Journal
from agent.mqtt import Incoming, MqttLink, Rotation
from agent.outbox import Outbox
from agent.status import MqttStatus, StatusSnapshot

from .brokers import Subscriber, until
from .cluster import NatsCluster
from .conftest import REPO
from .fleet_nodes import Pump
from .test_chaos import AgentProcess

NODE = "gw1"
NOT_AN_ENDPOINT = 'not a broker endpoint: expected "host", "host:port" or "[ipv6]:port"'


def test_hosts_become_endpoints_in_order_with_the_port_rule() -> None:
    config = MqttConfig.model_validate(
        {"hosts": ["a", "b:1884", "[::1]:1885", "[fd00::7]"], "port": 2883}
    )
    assert config.endpoints == (("a", 2883), ("b", 1884), ("::1", 1885), ("fd00::7", 2883))
    assert MqttConfig.model_validate({"hosts": ["a"], "tls": {}}).endpoints == (("a", 8883),)
    assert MqttConfig.model_validate({"host": "h"}).endpoints == (("h", 1883),)
    assert str(Rotation(config)) == "a:2883"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('hosts = ["::1"]', f"mqtt.hosts.0: Value error, '::1' is {NOT_AN_ENDPOINT}"),
        (
            'hosts = ["a", "mqtt://b"]',
            f"mqtt.hosts.1: Value error, 'mqtt://b' is {NOT_AN_ENDPOINT}",
        ),
        ('hosts = ["a:x"]', f"'a:x' is {NOT_AN_ENDPOINT}"),
        ('hosts = ["[b]:1883"]', f"'[b]:1883' is {NOT_AN_ENDPOINT}"),
        ('hosts = ["a:65536"]', "mqtt.hosts.0: Value error, 'a:65536': the port must be 1 to"),
        ('hosts = ["a", "a:1883"]', "mqtt.hosts: the endpoint 'a:1883' is used twice"),
        ('host = "localhost"\nhosts = ["b"]', "set mqtt.host (one broker) or mqtt.hosts"),
        ('hosts = ["b"]\nembedded = true\nprotocol = "3.1.1"', "hosts needs embedded = false"),
    ],
)
def test_bad_hosts_are_errors_naming_the_entry(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"[mqtt]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_rotation_tries_every_endpoint_before_it_backs_off() -> None:
    config = MqttConfig.model_validate(
        {"hosts": ["a", "b", "c"], "reconnect_min_s": 1, "reconnect_max_s": 3}
    )
    rotation = Rotation(config)
    tried, pauses = [], []
    for _ in range(9):
        tried.append(str(rotation))
        pauses.append(rotation.next())
    assert tried == ["a:1883", "b:1883", "c:1883"] * 3
    assert pauses[0:2] == pauses[3:5] == pauses[6:8] == [0.0, 0.0]
    assert 0.5 <= pauses[2] <= 1  # a round failed: reconnect_min_s, with jitter
    assert 1 <= pauses[5] <= 2
    assert 1.5 <= pauses[8] <= 3  # reconnect_max_s, with jitter
    rotation.connected()  # on a: the first connection is no failover
    assert rotation.failovers == 0
    # Lost at once: a failure like the others, so the next endpoint is tried at once.
    assert rotation.next() == 0.0
    rotation.connected()
    assert (str(rotation), rotation.failovers) == ("b:1883", 1)


def cluster_config(cluster: NatsCluster) -> MqttConfig:
    return MqttConfig.model_validate(
        {"hosts": cluster.endpoints, "protocol": "3.1.1",
         "reconnect_min_s": 0.05, "reconnect_max_s": 0.5}
    )  # fmt: skip


def first_deliveries(seen: list[int]) -> list[int]:
    """Each number at its first arrival; a later arrival is a redelivery."""
    return list(dict.fromkeys(seen))


@pytest.mark.mosquitto  # mosquitto_sub is the independent subscriber
def test_the_link_fails_over_when_its_node_dies_and_loses_nothing(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    n = 1500
    endpoints = nats_cluster.endpoints
    topic = f"edge/{NODE}/seq"

    async def produce(outbox: Outbox) -> None:
        for i in range(n):
            await outbox.put(topic, str(i))
            await asyncio.sleep(0.002)  # a stream of readings, not one burst

    async def command_arrives(arrived: asyncio.Event) -> None:
        """A QoS 1 command through a surviving node reaches the link's subscription, made
        again on the new node (until it is, a command has no subscriber and is dropped)."""
        async with asyncio.timeout(30):
            while not arrived.is_set():
                pub = await asyncio.create_subprocess_exec(
                    "mosquitto_pub", "-h", "127.0.0.1", "-p", str(nats_cluster.mqtt_ports[2]),
                    "-t", f"edge/{NODE}/cmd/ping", "-m", "{}", "-q", "1",
                )  # fmt: skip
                await pub.wait()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), 0.5)

    async def scenario() -> list[int]:
        arrived = asyncio.Event()

        async def handler(_: Incoming) -> None:
            arrived.set()

        async with Subscriber(nats_cluster.mqtt_ports[2], topic) as sub:
            with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
                async with MqttLink(cluster_config(nats_cluster), outbox, node_id=NODE) as link:
                    await link.subscribe(f"edge/{NODE}/cmd/+", handler)
                    await link.wait_connected()
                    assert link.status().broker == endpoints[0]
                    producer = asyncio.create_task(produce(outbox))
                    await until(lambda: link.status().published >= n // 5)
                    assert not producer.done(), "the node must die mid-stream"
                    await asyncio.to_thread(nats_cluster.kill, 0)
                    await producer
                    await until(lambda: outbox.stats().depth == 0, 60)
                    status = link.status()
                    assert status.connected
                    assert status.broker in endpoints[1:]
                    assert status.failovers >= 1
                    await command_arrives(arrived)
            await until(lambda: len(set(sub.messages)) == n, 30)
            return [int(payload) for _, payload in sub.messages]

    seen = asyncio.run(scenario())
    assert first_deliveries(seen) == list(range(n))
    print(f"{n} messages, {len(seen) - n} delivered twice")


PUMP_MAP = REPO / "config" / "devices" / "pump.toml"


def write_agent_config(directory: Path, cluster: NatsCluster, pump: int | None) -> Path:
    """One pump polled 20 times a second, its raw readings published; the cluster's
    nodes in `mqtt.hosts`."""
    process_group = PUMP_MAP.read_text().split("[[groups]]")[1]  # one reading per poll
    (directory / "pump.toml").write_text(
        "[[groups]]" + process_group.replace("interval_s = 1.0", "interval_s = 0.05", 1)
    )
    device = (
        f'[[devices]]\nname = "pump-1"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
        f'port = {pump}\nmap = "pump.toml"\n'
    )
    config = directory / "agent.toml"
    config.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "{directory}/state"\n\n'
        '[engine]\nkind = "wasmtime"\n\n'
        f'[mqtt]\nhosts = {json.dumps(cluster.endpoints)}\nprotocol = "3.1.1"\n'
        "reconnect_min_s = 0.1\nreconnect_max_s = 1.0\n\n"
        f'[control]\nsocket = "{directory}/control.sock"\n\n'
        "[pipeline]\nraw_readings = true\n\n" + (device if pump is not None else "")
    )
    return config


@pytest.mark.mosquitto
def test_an_agent_loses_no_reading_when_its_broker_node_dies(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    endpoints = nats_cluster.endpoints
    pump = Pump()
    agent = AgentProcess(write_agent_config(tmp_path, nats_cluster, pump.port))
    socket = tmp_path / "control.sock"

    def status() -> StatusSnapshot | None:
        try:
            return fetch_status(socket, timeout_s=2)
        except AgentError:
            return None

    def mqtt(condition: Callable[[MqttStatus], bool]) -> bool:
        snapshot = status()
        return snapshot is not None and snapshot.mqtt is not None and condition(snapshot.mqtt)

    async def scenario() -> tuple[int, int, list[tuple[str, str]]]:
        topic = f"edge/{NODE}/devices/pump-1"
        async with Subscriber(nats_cluster.mqtt_ports[2], topic) as sub:
            agent.start()
            await until(lambda: mqtt(lambda m: m.connected and m.published > 20), 30)
            snapshot = status()
            assert snapshot is not None
            assert snapshot.mqtt is not None
            assert snapshot.mqtt.broker == endpoints[0]
            published = snapshot.mqtt.published
            await asyncio.to_thread(nats_cluster.kill, 0)
            # Readings polled during the failover wait in the outbox, then flow again.
            await until(
                lambda: mqtt(
                    lambda m: m.connected and m.failovers > 0 and m.published > published + 40
                ),
                30,
            )
            # What remains is to deliver what was polled: a run without the device.
            agent.kill(signal.SIGTERM)
            pump.stop()
            write_agent_config(tmp_path, nats_cluster, None)
            agent.start()
            await until(lambda: mqtt(lambda m: m.connected and m.outbox_depth == 0), 30)
            agent.kill(signal.SIGTERM)
            with Journal.open(tmp_path / "state" / "journal.sqlite") as journal:
                polled = journal.next_seqs()["pump-1"]
            await until(lambda: len(set(sub.messages)) >= polled, 20)
            return published, polled, sub.messages

    try:
        before_kill, polled, messages = asyncio.run(scenario())
    finally:
        if pump.proc.poll() is None:
            pump.stop()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
        agent.close()
    seqs = [int(json.loads(payload)["seq"]) for _, payload in messages]
    assert before_kill > 20
    assert polled > before_kill + 40  # readings on both sides of the node's death
    assert first_deliveries(seqs) == list(range(polled))
    print(f"{polled} readings, {len(seqs) - polled} delivered twice")
