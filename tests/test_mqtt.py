"""The MQTT link with the durable outbox against a real mosquitto (and the embedded broker).

The subscriber is mosquitto_sub, not our code. Delivery is at least once: after a
lost connection the link resends what was unacknowledged, so a subscriber may see a
message twice; `check_stream` requires every accepted message and first deliveries in
order, and `repeats_by_origin` tells the link's resends from the broker's own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.errors import BrokerUnreachable
from agent.mqtt import EmbeddedBroker, Incoming, MqttLink, new_client, probe_broker
from agent.mqtt._client import refused
from agent.outbox import Outbox

from .brokers import (
    BROKER_INFLIGHT,
    Mosquitto,
    Pki,
    Subscriber,
    enforces_inflight_window,
    until,
)
from .conftest import REPO

pytestmark = pytest.mark.arm64

NODE = "gw1"


def mqtt_config(port: int, protocol: str = "5", **extra: Any) -> MqttConfig:
    return MqttConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "protocol": protocol,
         "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, **extra}
    )  # fmt: skip


def seqs(messages: list[tuple[str, str]], topic: str = f"edge/{NODE}/seq") -> list[int]:
    return [int(payload) for t, payload in messages if t == topic]


def check_stream(seen: list[int], accepted: set[int]) -> int:
    """Every accepted number arrived and first deliveries are in order; returns how many
    deliveries were repeats."""
    delivered: set[int] = set()
    last = -1
    for s in seen:
        if s in delivered:
            continue  # a redelivery: see `repeats_by_origin`
        assert s > last, f"{s} arrived out of order after {last}"
        delivered.add(s)
        last = s
    assert not accepted - delivered, f"lost: {sorted(accepted - delivered)[:10]}"
    return len(seen) - len(delivered)


async def drained(outbox: Outbox, seconds: float = 20) -> None:
    await until(lambda: outbox.stats().depth == 0, seconds)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_every_message_arrives_once_in_order(
    mosquitto: Mosquitto, tmp_path: Path, protocol: str
) -> None:
    n = 2000

    async def scenario() -> None:
        async with Subscriber(mosquitto, f"edge/{NODE}/#") as sub:
            with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
                link = MqttLink(mqtt_config(mosquitto.port, protocol), outbox, node_id=NODE)
                async with link:
                    for i in range(n):  # MQTT orders per topic and QoS: one topic each
                        topic = f"edge/{NODE}/seq" if i % 2 else f"edge/{NODE}/raw"
                        await outbox.put(topic, str(i), qos=i % 2)
                    await drained(outbox)
                    state = link.status()
                    assert (state.connected, state.published, state.outbox_depth) == (
                        True, n, 0,
                    )  # fmt: skip
            await sub.wait_for(n + 2)  # the data plus the online and offline status
        assert seqs(sub.messages) == list(range(1, n, 2))
        assert seqs(sub.messages, f"edge/{NODE}/raw") == list(range(0, n, 2))

    asyncio.run(scenario())


def repeats_by_origin(sub: Subscriber, topic: str = f"edge/{NODE}/seq") -> tuple[int, int]:
    """(repeats the publisher sent again, repeats the broker sent again): a publisher's
    resend reaches the subscriber as a new message, the broker's own resend with DUP."""
    delivered: set[str] = set()
    by_publisher = by_broker = 0
    for (t, payload), dup in zip(sub.messages, sub.dup, strict=True):
        if t != topic:
            continue
        if payload in delivered:
            by_broker += dup
            by_publisher += not dup
        delivered.add(payload)
    return by_publisher, by_broker


async def reconnected(link: MqttLink, reconnects: int) -> None:
    """Wait until the link has made its `reconnects`-th reconnection and is connected.

    Not `wait_connected()`: right after a broker restart the link may not yet have
    noticed that the old connection died, and that would return at once on it; the
    next stop would then overlap this reconnection.
    """
    await until(lambda: link.status().reconnects >= reconnects and link.status().connected, 10)


def test_broker_restarts_lose_and_reorder_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    n = 3000
    max_inflight = 16
    restarts = 5

    async def producer(outbox: Outbox) -> None:
        for i in range(n):
            await outbox.put(f"edge/{NODE}/seq", str(i))
            if i % 20 == 0:
                await asyncio.sleep(0.002)  # a steady stream, over about a second

    async def scenario() -> tuple[int, int]:
        async with Subscriber(mosquitto, f"edge/{NODE}/seq") as sub:
            with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
                config = mqtt_config(mosquitto.port, max_inflight=max_inflight)
                async with MqttLink(config, outbox, node_id=NODE) as link:
                    # A stop during the first CONNECT would cost the connect timeout.
                    await asyncio.wait_for(link.wait_connected(), 10)
                    produce = asyncio.create_task(producer(outbox))
                    for restart in range(1, restarts + 1):
                        await asyncio.sleep(0.1)
                        await asyncio.to_thread(mosquitto.stop)
                        await asyncio.sleep(0.15)  # puts go on while the broker is down
                        await asyncio.to_thread(mosquitto.start)
                        await reconnected(link, restart)
                    await produce
                    await drained(outbox, seconds=30)
                    assert link.status().reconnects >= restarts
            await until(lambda: n - 1 in seqs(sub.messages), 30)
        check_stream(seqs(sub.messages), set(range(n)))
        return repeats_by_origin(sub)

    by_link, by_broker = asyncio.run(scenario())
    # Ours: after each reconnect the link resends what was in flight without a PUBACK,
    # at most its window; anything more would be a resend of what the broker had
    # acknowledged.
    assert by_link <= restarts * max_inflight
    # The broker's: what it had sent the persistent subscriber without getting a PUBACK
    # back when it stopped, sent again with DUP. That is at most its window per stop only
    # where mosquitto keeps to the window; 2.0.11 sends a subscriber's whole backlog at
    # once and then repeats hundreds (see BROKER_INFLIGHT).
    if enforces_inflight_window():
        assert by_broker <= restarts * BROKER_INFLIGHT


def test_sigkilled_publisher_loses_nothing_after_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.sqlite"

    async def publisher(first: int, count: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.outbox_publisher", str(db), str(mosquitto.port),
            "5", NODE, str(first), str(count),
            cwd=REPO, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def scenario() -> None:
        accepted: set[int] = set()
        async with Subscriber(mosquitto, f"edge/{NODE}/#") as sub:
            first = await publisher(0, 5000)
            assert first.stdout is not None
            while len(accepted) < 1500:
                accepted.add(int(await first.stdout.readline()))
            first.send_signal(signal.SIGKILL)
            await first.wait()
            await until(  # the broker publishes the last will
                lambda: any(
                    t.endswith("/status") and json.loads(p)["state"] == "offline"
                    for t, p in sub.messages
                )
            )
            # A put in progress at the kill may or may not have committed: skip its number.
            resume = max(accepted) + 2
            second = await publisher(resume, 1000)
            out, _ = await asyncio.wait_for(second.communicate(), 30)
            lines = out.decode().split()
            assert lines[-1] == "drained"
            accepted |= {int(x) for x in lines[:-1]}
            await until(lambda: resume + 999 in seqs(sub.messages))
        check_stream(seqs(sub.messages), accepted)

    asyncio.run(scenario())


def test_drain_rate_caps_the_backlog_and_new_data_follows_in_order(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> float:
        async with Subscriber(mosquitto, f"edge/{NODE}/seq") as sub:
            with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
                for i in range(60):  # a backlog from while the broker was unreachable
                    await outbox.put(f"edge/{NODE}/seq", str(i))
                link = MqttLink(mqtt_config(mosquitto.port), outbox, node_id=NODE, drain_rate=200)
                async with link:
                    started = time.monotonic()
                    for i in range(60, 80):
                        await outbox.put(f"edge/{NODE}/seq", str(i))
                    await drained(outbox)
                    elapsed = time.monotonic() - started
            await sub.wait_for(80)
        assert seqs(sub.messages) == list(range(80))
        return elapsed

    # 80 messages at 200/s, of which at most a 10-message burst goes at once.
    assert asyncio.run(scenario()) >= (80 - 10) / 200 * 0.9


def test_status_is_retained_online_then_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async def status_now() -> dict[str, Any]:
        async with Subscriber(mosquitto, f"edge/{NODE}/status") as late:  # sees the retained
            (_, payload), *_ = await late.wait_for(1)
            return dict(json.loads(payload))

    async def scenario() -> None:
        with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
            engine = {"kind": "wasmtime", "version": "50.0.1"}
            config = mqtt_config(mosquitto.port)
            async with MqttLink(config, outbox, node_id=NODE, engine=engine) as link:
                await asyncio.wait_for(link.wait_connected(), 10)
                online = await status_now()
            offline = await status_now()
        assert online["state"] == "online"
        assert online["engine"] == engine
        assert set(online) == {"state", "version", "engine", "ts"}
        assert offline["state"] == "offline"
        assert offline["ts"] >= online["ts"]

    asyncio.run(scenario())


@pytest.mark.mosquitto
def test_mutual_tls_with_password(tmp_path: Path, pki: Pki) -> None:
    broker = Mosquitto(tmp_path, pki=pki, passwords={"node": "s3cret"})
    broker.start()
    (tmp_path / "password").write_text("s3cret\n")
    tls = {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
    tls_args = ("--cafile", str(pki.ca), "--cert", str(pki.client_cert),
                "--key", str(pki.client_key), "-u", "node", "-P", "s3cret")  # fmt: skip

    async def deliver(config: MqttConfig) -> list[int]:
        async with Subscriber(broker, f"edge/{NODE}/seq", *tls_args) as sub:
            with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
                async with MqttLink(config, outbox, node_id=NODE):
                    for i in range(10):
                        await outbox.put(f"edge/{NODE}/seq", str(i))
                    await drained(outbox, seconds=10)
            return seqs(await sub.wait_for(10))

    async def refused(config: MqttConfig) -> str | None:
        with Outbox.open(tmp_path / "refused.sqlite") as outbox:
            async with MqttLink(config, outbox, node_id=NODE) as link:
                await until(lambda: link.status().last_error is not None)
                state = link.status()
        assert not state.connected
        return state.last_error

    try:
        good = mqtt_config(
            broker.port, tls=tls, username="node", password_file=str(tmp_path / "password")
        )
        assert asyncio.run(deliver(good)) == list(range(10))
        wrong = mqtt_config(broker.port, tls=tls, username="node", password="wrong")
        assert asyncio.run(refused(wrong))
        no_client_cert = mqtt_config(
            broker.port, tls={"ca": str(pki.ca)}, username="node", connect_timeout_s=1
        )
        assert asyncio.run(refused(no_client_cert))
    finally:
        broker.stop()


def test_subscriptions_get_requests_and_reply_with_correlation(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    got: list[Incoming] = []

    async def scenario() -> bytes:
        with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
            async with MqttLink(mqtt_config(mosquitto.port), outbox, node_id=NODE) as link:

                async def handler(request: Incoming) -> None:
                    got.append(request)
                    await link.reply(request, b'{"status":"ok"}', fallback_topic="unused")

                await link.subscribe(f"edge/{NODE}/cmd/+", handler)
                await asyncio.wait_for(link.wait_connected(), 10)
                rr = await asyncio.create_subprocess_exec(
                    "mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port),
                    "-t", f"edge/{NODE}/cmd/status", "-e", f"edge/{NODE}/cmd/status/response",
                    "-m", '{"id": 1}', "-D", "publish", "correlation-data", "c-42", "-W", "10",
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, _ = await rr.communicate()
                return out

    assert asyncio.run(scenario()).strip() == b'{"status":"ok"}'
    (request,) = got
    assert request.topic == f"edge/{NODE}/cmd/status"
    assert json.loads(request.payload) == {"id": 1}
    assert request.response_topic == f"edge/{NODE}/cmd/status/response"
    assert request.correlation_data == b"c-42"


def test_embedded_broker_round_trips(tmp_path: Path) -> None:
    async def scenario() -> list[bytes]:
        got: list[bytes] = []
        arrived = asyncio.Event()

        async def handler(message: Incoming) -> None:
            got.append(message.payload)
            if len(got) == 20:
                arrived.set()

        async with EmbeddedBroker() as broker:
            config = mqtt_config(broker.port, "3.1.1", embedded=True)
            with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
                async with MqttLink(config, outbox, node_id=NODE) as link:
                    await link.subscribe(f"edge/{NODE}/seq", handler)
                    await asyncio.wait_for(link.wait_connected(), 10)
                    for i in range(20):
                        await outbox.put(f"edge/{NODE}/seq", str(i))
                    await asyncio.wait_for(arrived.wait(), 10)
        return got

    assert asyncio.run(scenario()) == [str(i).encode() for i in range(20)]


def test_config_refuses_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"MQTT 3\.1\.1 only"):
        MqttConfig.model_validate({"embedded": True})
    with pytest.raises(ValueError, match="loopback only"):
        MqttConfig.model_validate({"embedded": True, "protocol": "3.1.1", "host": "10.0.0.1"})
    with pytest.raises(ValueError, match="cannot load the TLS files"):
        MqttConfig.model_validate({"tls": {"ca": str(tmp_path / "missing.pem")}})
    with pytest.raises(ValueError, match="go together"):
        MqttConfig.model_validate({"tls": {"cert": str(tmp_path / "c.pem")}})
    with pytest.raises(ValueError, match="not both"):
        MqttConfig.model_validate({"password": "a", "password_file": str(tmp_path / "p")})
    routes = MqttConfig.model_validate({"qos": 1, "routes": {"raw/#": 0}})
    assert (routes.qos_for("raw/pump1"), routes.qos_for("stats/pump1")) == (0, 1)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_peer_that_hangs_up_before_connack_fails_the_connect_at_once(protocol: str) -> None:
    """Not MQTT on that port, or TLS expected: the link must say so and retry on its
    backoff, not wait out its connect timeout; and it must not keep the socket."""

    async def scenario() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # the CONNECT has begun
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = mqtt_config(port, protocol, connect_timeout_s=5)
        gc.disable()  # a leaked socket must show, not be collected
        try:
            fds = len(os.listdir("/proc/self/fd"))
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(aiomqtt.MqttError, match="closed the connection before"):
                    async with new_client(config, "hang-up-test"):
                        pass
                assert time.monotonic() - started < 1.0
            assert len(os.listdir("/proc/self/fd")) == fds
            with pytest.raises(BrokerUnreachable, match="before its CONNACK") as caught:
                await probe_broker(config, 5)
            assert caught.value.kind == "refused"
        finally:
            gc.enable()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_a_suback_refuses_by_failure_code_and_a_short_one_refuses_all() -> None:
    """0x80 (3.1.1) or a reason code from 0x80 (5) refuses its filter; a SUBACK that
    does not answer every filter is a broken broker's, and trusts none of them."""
    denied = ReasonCode(PacketTypes.SUBACK, "Not authorized")
    granted = ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")
    assert refused(["a", "b", "c"], [1, 0x80, 0]) == ["b"]
    assert refused(["a", "b"], [granted, denied]) == ["b"]
    assert refused(["a", "b"], [1]) == ["a", "b"]


def test_a_connection_dropped_right_after_connack_fails_the_connect_and_logs_nothing() -> None:
    """aiomqtt drops the error of a connection lost while it finishes connecting: the
    client said connected with no connection, and asyncio logged "Future exception was
    never retrieved" (seen in agent logs after a cluster's broker node died)."""
    reported: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context["message"]))

        dropped = asyncio.Event()

        async def accept_then_drop(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await reader.read(1024)  # the CONNECT
            writer.write(b"\x20\x02\x00\x00")  # CONNACK: accepted
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            dropped.set()

        server = await asyncio.start_server(accept_then_drop, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            # Whether the close reaches the client before its connect returns (nearly
            # always: CONNACK and close come in one read) or after, nothing is logged.
            try:
                async with new_client(mqtt_config(port, "3.1.1"), "dropped-test"):
                    await dropped.wait()
            except aiomqtt.MqttError as err:
                assert "right after its CONNACK" in str(err)  # noqa: PT017
            await dropped.wait()
            gc.collect()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert [m for m in reported if "never retrieved" in m] == []
