"""A real clustered MQTT broker for tests: three nats-server nodes on loopback, with
JetStream (which holds MQTT sessions, QoS 1 messages and retained messages, replicated
on every node) and an MQTT listener each.

A pytest plugin (`pytest_plugins` in conftest): the `nats_cluster` fixture is a started
cluster that answers MQTT on every node. NATS speaks MQTT 3.1.1 only, so configs for it
say `protocol = "3.1.1"`; README, "A clustered broker", lists what else it refuses.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from .brokers import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
READY_TOPIC = "edge-test/ready"


class NatsCluster:
    """`size` nats-server processes forming one cluster; node `i` keeps its ports and
    its JetStream store across `stop(i)` and `restart(i)`."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.names = [f"n{i + 1}" for i in range(size)]
        self.mqtt_ports = [free_port() for _ in range(size)]
        route_ports = [free_port() for _ in range(size)]
        self.http_ports = [free_port() for _ in range(size)]
        """NATS's monitoring, for `/healthz`."""
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self._configs: list[Path] = []
        for i, name in enumerate(self.names):
            routes = ", ".join(
                f"nats-route://127.0.0.1:{port}" for j, port in enumerate(route_ports) if j != i
            )
            config = workdir / f"{name}.conf"
            config.write_text(
                f"server_name: {name}\n"
                "listen: 127.0.0.1:-1\n"  # NATS clients: none here, so any free port
                f"http: 127.0.0.1:{self.http_ports[i]}\n"
                f'log_file: "{workdir / name}.log"\n'
                f'jetstream {{ store_dir: "{workdir / name}" }}\n'
                f"cluster {{ name: edge-test, listen: 127.0.0.1:{route_ports[i]}, "
                f"no_advertise: true, routes: [{routes}] }}\n"
                f"mqtt {{ listen: 127.0.0.1:{self.mqtt_ports[i]}, stream_replicas: {size} }}\n"
            )
            self._configs.append(config)

    @property
    def endpoints(self) -> list[str]:
        """Every node's MQTT listener, `127.0.0.1:port`, for `mqtt.hosts`."""
        return [f"127.0.0.1:{port}" for port in self.mqtt_ports]

    def running(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Start every node that is not running; return once each answers MQTT."""
        for i in range(len(self.names)):
            if not self.running(i):
                self._spawn(i)
        self.wait_ready(timeout)

    def restart(self, i: int, timeout: float = 60) -> None:
        """Start node `i` again (after `stop` or `kill`); return once the cluster answers."""
        assert not self.running(i), f"{self.names[i]} is running"
        self._spawn(i)
        self.wait_ready(timeout)

    def stop(self, i: int, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown; SIGKILL: a crash, as a power cut looks to the others."""
        proc = self._procs[i]
        assert proc is not None, f"{self.names[i]} is not running"
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._procs[i] = None

    def kill(self, i: int) -> None:
        self.stop(i, signal.SIGKILL)

    def close(self) -> None:
        for i in range(len(self.names)):
            if self._procs[i] is not None:
                self.stop(i)

    def log(self, i: int) -> str:
        path = self.workdir / f"{self.names[i]}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        """Every running node took a retained QoS 1 message, and every running node
        hands out all of them: MQTT is up, JetStream's MQTT streams exist and have
        leaders (the first connect to a fresh cluster creates them, in ~2 s; a node's
        crash leaves streams without a leader for ~5 s) and the nodes see each other.

        JetStream's health comes first: an MQTT CONNECT that arrives before it holds
        that node's read loop for its 4 s JetStream timeout, and then fails."""
        deadline = time.monotonic() + timeout
        nodes = [i for i in range(len(self.names)) if self.running(i)]
        token = uuid.uuid4().hex
        topics = {i: f"{READY_TOPIC}/{self.names[i]}" for i in nodes}
        for i in nodes:
            self._until(deadline, i, partial(_healthy, self.http_ports[i]))
        for i in nodes:
            self._until(deadline, i, partial(_publish, self.mqtt_ports[i], topics[i], token))
        for i in nodes:
            retained = partial(_retained, self.mqtt_ports[i], token, set(topics.values()))
            self._until(deadline, i, retained)

    def _until(self, deadline: float, i: int, attempt: Callable[[], bool]) -> None:
        while True:
            proc = self._procs[i]
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"{self.names[i]} exited: {self.log(i)[-3000:]}")
            if attempt():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.names[i]} not ready: {self.log(i)[-3000:]}")
            time.sleep(0.1)

    def _spawn(self, i: int) -> None:
        self._procs[i] = subprocess.Popen(
            [NATS_SERVER, "-c", str(self._configs[i])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


_WAIT_S = 5.0
"""For one step of one readiness attempt (a JetStream leader election takes seconds)."""
_RETAINED_S = 1.0
"""For the retained messages, which a node sends with its SUBACK: a node that has not
stored the newest yet hands out an older one, and the next attempt asks again."""


def _healthy(port: int) -> bool:
    """NATS's own readiness: JetStream has its leaders (`/healthz`, 503 until then)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return answer.status == 200
    except OSError:  # refused, or an HTTPError: 503
        return False


def _client(port: int) -> Client | None:
    """A connected MQTT 3.1.1 client with its network loop running, or None."""
    connected = threading.Event()

    def on_connect(
        _c: Client, _u: object, _f: ConnectFlags, reason: ReasonCode, _p: object
    ) -> None:
        if not reason.is_failure:
            connected.set()

    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edge-test-{uuid.uuid4().hex[:12]}",
        protocol=MQTTv311,
    )
    client.on_connect = on_connect
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except OSError:
        return None
    client.loop_start()
    if connected.wait(_WAIT_S):
        return client
    _close(client)
    return None


def _close(client: Client) -> None:
    client.disconnect()
    client.loop_stop()


def _publish(port: int, topic: str, token: str) -> bool:
    client = _client(port)
    if client is None:
        return False
    try:
        info = client.publish(topic, token, qos=1, retain=True)
        info.wait_for_publish(_WAIT_S)
        return info.is_published()
    except (RuntimeError, ValueError):
        return False  # the connection was lost before the publish went out
    finally:
        _close(client)


def _retained(port: int, token: str, topics: set[str]) -> bool:
    """Whether this node hands out `token` as the retained message of every topic."""
    client = _client(port)
    if client is None:
        return False
    seen: set[str] = set()
    complete = threading.Event()

    def on_message(_c: Client, _u: object, message: MQTTMessage) -> None:
        if message.payload.decode() == token:
            seen.add(message.topic)
        if seen >= topics:
            complete.set()

    client.on_message = on_message
    try:
        client.subscribe(f"{READY_TOPIC}/+", qos=0)  # no JetStream consumer to wait for
        return complete.wait(_RETAINED_S)
    finally:
        _close(client)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
