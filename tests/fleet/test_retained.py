"""The operator's broker session: a retained read that ends when the broker's burst does,
live updates after it, and the first broker of a cluster that answers."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.config import MqttConfig
from agent.errors import BrokerRefused, BrokerUnreachable
from agent.mqtt import BrokerSession
from tests.brokers import Mosquitto, free_port, refusing_broker


def config(*ports: int) -> MqttConfig:
    return MqttConfig(hosts=[f"127.0.0.1:{p}" for p in ports])


def test_a_retained_read_returns_every_retained_message_and_nothing_else(
    mosquitto: Mosquitto,
) -> None:
    async def scenario() -> None:
        async with BrokerSession(config(mosquitto.port)) as writer:
            for i in range(300):
                await writer.publish(f"edge/n{i:03d}/report", f"report {i}".encode())
            await writer.publish("edge/n000/report", b"newer")
            await writer.publish("edge/n001/report", b"")  # cleared
            await writer.publish("edge/n002/report", b"not kept", retain=False)
            await writer.publish("edge/n002/status", b"online")
        started = time.monotonic()
        async with BrokerSession(config(mosquitto.port)) as reader:
            retained = await reader.read_retained(["edge/+/report", "edge/n002/status"])
        assert time.monotonic() - started < 5
        assert len(retained) == 300  # 299 reports (one was cleared) and one status
        assert retained["edge/n000/report"] == b"newer"
        assert "edge/n001/report" not in retained
        assert retained["edge/n002/report"] == b"report 2"
        assert retained["edge/n002/status"] == b"online"
        assert not any("/fleet/probe/" in topic for topic in retained)

    asyncio.run(scenario())


def test_watch_gives_the_retained_state_then_what_changes(mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        async with (
            BrokerSession(config(mosquitto.port)) as writer,
            BrokerSession(config(mosquitto.port)) as reader,
        ):
            await writer.publish("edge/a/status", b"online")
            seen: list[tuple[str, bytes]] = []
            watching = reader.watch(["edge/+/status"])
            seen.append(await anext(watching))
            await writer.publish("edge/b/status", b"offline")
            seen.append(await asyncio.wait_for(anext(watching), 10))
            await watching.aclose()
            assert seen == [("edge/a/status", b"online"), ("edge/b/status", b"offline")]

    asyncio.run(scenario())


def test_the_first_broker_of_a_cluster_that_answers_is_used(mosquitto: Mosquitto) -> None:
    dead = free_port()

    async def scenario() -> None:
        async with BrokerSession(config(dead, mosquitto.port)) as session:
            assert session.broker == f"127.0.0.1:{mosquitto.port}"
            await session.publish("edge/x/status", b"online")
            assert await session.read_retained(["edge/x/status"]) == {"edge/x/status": b"online"}
        with pytest.raises(BrokerUnreachable, match="no broker accepted the connection") as caught:
            async with BrokerSession(config(dead, free_port())):
                pass
        assert f"127.0.0.1:{dead}: " in str(caught.value)

    asyncio.run(scenario())


def test_a_refused_subscription_is_an_error_not_an_empty_fleet() -> None:
    """A read the broker's ACL refuses would otherwise come back empty, as if there were
    no nodes: it fails, naming the filter."""

    async def scenario() -> None:
        async with refusing_broker(["edge/fleet/#", "edge/+/status"]) as port:
            cfg = MqttConfig(hosts=[f"127.0.0.1:{port}"], protocol="3.1.1")
            async with BrokerSession(cfg) as session:
                await session.publish("edge/n1/status", b"online")
                assert await session.read_retained(["edge/+/status"]) == {
                    "edge/n1/status": b"online"
                }
                with pytest.raises(BrokerRefused) as caught:
                    await session.read_retained(["edge/+/status", "edge/+/report"])
        assert str(caught.value) == (
            f"127.0.0.1:{port}: subscribe: the broker refused the subscription to edge/+/report"
        )

    asyncio.run(scenario())
