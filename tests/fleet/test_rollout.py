"""Staged rollouts over simulated nodes on a real broker: the engine and its driver as
`fleet deploy` runs them, without the command line.

The nodes (`simnode.SimNode`) follow their retained desired-state documents and publish
their reports over mosquitto, so every decision the rollout takes comes from real
retained messages, and every document it writes is read back by the nodes.
"""

from __future__ import annotations

import asyncio
import time

from agent.config import MqttConfig
from agent.fleet import (
    FleetView,
    Rollout,
    RolloutDocument,
    RolloutPlan,
    Signer,
    desired_payload,
    desired_topic,
    drive,
    parse_desired,
    parse_rollout,
    rollout_topic,
    watched_topics,
)
from agent.mqtt import BrokerSession
from tests.brokers import Mosquitto, Subscriber, until
from tests.fleet.simnode import (
    REGISTRY,
    Catalog,
    digest_of,
    publish,
    read_retained,
    simulated_fleet,
)

PREFIX = "edge"
GROUP = "pumps"


def plan(ref: str, waves: str = "1,50%,100%", soak: float = 0.3, **extra: float) -> RolloutPlan:
    return RolloutPlan(
        group=GROUP,
        module="scale",
        ref=ref,
        wave_spec=waves,
        soak_s=soak,
        max_failures=int(extra.get("max_failures", 0)),
        wave_timeout_s=extra.get("wave_timeout", 20.0),
    )


async def start(session: BrokerSession, rollout_plan: RolloutPlan) -> Rollout:
    """A new rollout over the group's members, as `fleet deploy` makes it."""
    view = FleetView(PREFIX)
    for item in (await session.read_retained(watched_topics(PREFIX, GROUP))).items():
        view.update(*item)
    return Rollout.start(rollout_plan, view.members(GROUP), PREFIX, now=time.time())


async def deploy(port: int, rollout_plan: RolloutPlan) -> tuple[RolloutDocument, list[str]]:
    lines: list[str] = []
    async with BrokerSession(MqttConfig(host="127.0.0.1", port=port)) as session:
        rollout = await start(session, rollout_plan)
        doc = await drive(session, rollout, Signer(), say=lines.append)
    return doc, lines


async def abort(port: int, stored: RolloutDocument) -> tuple[RolloutDocument, list[str]]:
    """`fleet rollout abort` from a second process: take the stored rollout, put it back."""
    lines: list[str] = []
    async with BrokerSession(MqttConfig(host="127.0.0.1", port=port)) as session:
        rollout = Rollout(stored, PREFIX)
        rollout.abort()
        stored.take(time.time())
        doc = await drive(session, rollout, Signer(), say=lines.append)
    return doc, lines


async def node_documents(port: int) -> dict[str, bytes]:
    return await read_retained(port, [f"{PREFIX}/+/desired"])


async def entries(port: int, topic: str) -> list[dict[str, object]]:
    """The entries of the document retained on `topic`, as written (unset fields left out)."""
    payload = (await read_retained(port, [topic]))[topic]
    document = parse_desired(topic, payload, None)
    assert document is not None
    return [m.model_dump(exclude_none=True) for m in document.modules]


async def retained_rollout(port: int) -> RolloutDocument | None:
    topic = rollout_topic(PREFIX, GROUP)
    payload = (await read_retained(port, [topic])).get(topic)
    return parse_rollout(topic, payload) if payload else None


def test_a_rollout_reaches_every_node_wave_by_wave(mosquitto: Mosquitto) -> None:
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 6, catalog, running={"scale": "1.0"}) as nodes:
            doc, lines = await deploy(mosquitto.port, plan(ref))
            assert doc.phase == "done", lines
            assert doc.waves == (1, 3, 6)
            assert [doc.nodes[n.node].wave for n in nodes] == [0, 1, 1, 2, 2, 2]
            assert all(p.state == "converged" for p in doc.nodes.values())
            assert doc.digest == digest_of("1.1")
            await until(lambda: all(n.version("scale") == "1.1" for n in nodes))
            # Each wave started only after the one before soaked.
            when = {n.node: n.history[-1][0] for n in nodes}
            for earlier, later in ((["n01"], ["n02", "n03"]), (["n02", "n03"], ["n04", "n05"])):
                assert min(when[n] for n in later) - max(when[n] for n in earlier) >= 0.3
            # The group document holds the version, pinned; the node documents are gone.
            assert await entries(mosquitto.port, desired_topic(PREFIX, group=GROUP)) == [
                {"name": "scale", "ref": ref, "digest": digest_of("1.1")}
            ]
            assert await node_documents(mosquitto.port) == {}
            # The nodes converged on the group document once their own were cleared.
            await until(lambda: all(n._wanted[0].source == f"group:{GROUP}" for n in nodes))
        assert [line.split(":")[0] for line in lines if line.startswith("wave")] == [
            "wave 1/3", "wave 1/3", "wave 1/3",  # deploying, converged, soaked
            "wave 2/3", "wave 2/3", "wave 2/3",
            "wave 3/3", "wave 3/3", "wave 3/3",
        ]  # fmt: skip
        assert lines[-1].startswith("done: group pumps runs scale")
        stored = await retained_rollout(mosquitto.port)
        assert stored is not None
        assert stored.phase == "done"

    asyncio.run(scenario())


def test_a_failing_version_halts_in_the_first_wave(mosquitto: Mosquitto) -> None:
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.2")
    catalog.failing.add("1.2")

    async def scenario() -> None:
        async with (
            Subscriber(mosquitto, f"{PREFIX}/+/desired") as documents,
            simulated_fleet(mosquitto.port, 6, catalog, running={"scale": "1.0"}) as nodes,
        ):
            doc, lines = await deploy(mosquitto.port, plan(ref))
            assert doc.phase == "halted"
            assert doc.nodes["n01"].state == "failed"
            assert "smoke test failed: 1.2 trapped" in (doc.nodes["n01"].reason or "")
            assert [p.state for n, p in doc.nodes.items() if n != "n01"] == ["waiting"] * 5
            assert any(line.startswith("halted in wave 1/3") for line in lines)
            # n01 is pinned back to the digest it ran; nobody else ever got a document.
            pinned = await entries(mosquitto.port, desired_topic(PREFIX, node="n01"))
            assert pinned[0]["ref"] == f"{REGISTRY}/scale@{digest_of('1.0')}"
            await until(lambda: nodes[0]._wanted[0].state == "converged")
            assert [n.version("scale") for n in nodes] == ["1.0"] * 6
            await documents.wait_for(2)  # the rollout's entry, then the pin back
            assert {topic for topic, _ in documents.messages} == {f"{PREFIX}/n01/desired"}
            assert f"{PREFIX}/group/{GROUP}/desired" not in await read_retained(
                mosquitto.port, [f"{PREFIX}/group/+/desired"]
            )

    asyncio.run(scenario())


def test_an_offline_node_is_deferred_and_follows_the_group_document(mosquitto: Mosquitto) -> None:
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 6, catalog, running={"scale": "1.0"}) as nodes:
            await nodes[1].go_offline()
            doc, lines = await deploy(mosquitto.port, plan(ref))
            assert doc.phase == "done", lines
            assert doc.nodes["n02"].state == "deferred"
            assert doc.failures == 0
            assert nodes[1].version("scale") == "1.0"
            assert "wave 2/3: deploying" in "\n".join(lines)
            assert "(deferred: n02)" in "\n".join(lines)
            await nodes[1].come_online()
            await until(lambda: nodes[1].version("scale") == "1.1")

    asyncio.run(scenario())


def test_a_node_unhealthy_during_the_soak_halts_and_is_put_back(mosquitto: Mosquitto) -> None:
    catalog = Catalog()
    old = catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")
    previous = {"name": "scale", "ref": old}

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 3, catalog, running={"scale": "1.0"}) as nodes:
            # n01 has a node document of its own: the halt must put it back as it was.
            topic = desired_topic(PREFIX, node="n01")
            meter = {"name": "meter", "ref": catalog.ref("meter", "2.0")}
            await publish(mosquitto.port, topic, desired_payload(topic, 1, [previous, meter]))
            await until(lambda: nodes[0].version("meter") == "2.0")
            driving = asyncio.create_task(deploy(mosquitto.port, plan(ref, soak=30)))
            await until(lambda: nodes[0].version("scale") == "1.1")
            await nodes[0].set_healthy(False)
            doc, _ = await asyncio.wait_for(driving, 20)
            assert doc.phase == "halted"
            assert "during the soak: unhealthy: device 'meter' offline" in (
                doc.nodes["n01"].reason or ""
            )
            assert doc.nodes["n01"].previous is not None
            assert await entries(mosquitto.port, topic) == [previous, meter]
            await until(lambda: nodes[0].version("scale") == "1.0")
            assert nodes[1].version("scale") == "1.0"

    asyncio.run(scenario())


def test_a_halted_first_install_is_put_back_as_absent(mosquitto: Mosquitto) -> None:
    """A node that ran no version before is put back to running none: an `absent` entry,
    rather than the failing version left running."""
    catalog = Catalog()
    ref = catalog.ref("scale", "1.1")

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 3, catalog) as nodes:
            driving = asyncio.create_task(deploy(mosquitto.port, plan(ref, soak=30)))
            await until(lambda: nodes[0].version("scale") == "1.1")
            await nodes[0].set_healthy(False)
            doc, lines = await asyncio.wait_for(driving, 20)
            assert doc.phase == "halted", lines
            assert await entries(mosquitto.port, desired_topic(PREFIX, node="n01")) == [
                {"name": "scale", "absent": True}
            ]
            await until(lambda: nodes[0].version("scale") is None)
            assert [n.version("scale") for n in nodes[1:]] == [None, None]

    asyncio.run(scenario())


def test_a_node_whose_module_is_down_is_put_back_to_that_version_not_absent(
    mosquitto: Mosquitto,
) -> None:
    """A version installed but not running (failed, restarting) at the wave's start is
    still the node's: the halt pins it back rather than removing the module."""
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 2, catalog, running={"scale": "1.0"}) as nodes:
            nodes[0].module_states["scale"] = "failed"
            await nodes[0].set_healthy(True)  # a report with it
            doc, lines = await deploy(mosquitto.port, plan(ref, wave_timeout=1.0))
            assert doc.phase == "halted", lines
            assert "not converged within 1 s" in (doc.nodes["n01"].reason or "")
            restored = await entries(mosquitto.port, desired_topic(PREFIX, node="n01"))
            assert [m["digest"] for m in restored] == [digest_of("1.0")]
            await until(lambda: nodes[0].version("scale") == "1.0")

    asyncio.run(scenario())


def test_abort_takes_over_and_puts_every_changed_node_back(mosquitto: Mosquitto) -> None:
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 4, catalog, running={"scale": "1.0"}) as nodes:
            first = asyncio.create_task(deploy(mosquitto.port, plan(ref, "1,100%", soak=30)))
            # Soaking, its last document written (the entry pinned): a driver that is
            # writing as the abort starts can still land one document after it.
            await until(lambda: [w.digest for w in nodes[0]._wanted] == [digest_of("1.1")])
            stored = await retained_rollout(mosquitto.port)
            assert stored is not None
            assert stored.active
            doc, lines = await abort(mosquitto.port, stored)
            assert doc.phase == "aborted", lines
            taken, first_lines = await asyncio.wait_for(first, 10)
            assert taken.phase in ("aborting", "aborted")
            assert "taken over" in first_lines[-1], first_lines
            await until(lambda: nodes[0].version("scale") == "1.0")
            assert [n.version("scale") for n in nodes] == ["1.0"] * 4, nodes[0].history
            documents = await node_documents(mosquitto.port)
            assert list(documents) == [f"{PREFIX}/n01/desired"], documents

    asyncio.run(scenario())


def test_an_older_drivers_straggling_document_does_not_outlive_an_abort(
    mosquitto: Mosquitto,
) -> None:
    """The older driver's heartbeat, sent just before it saw the takeover, can land after
    the abort's last document: the aborting driver answers it, and `aborted` stays."""
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")
    topic = rollout_topic(PREFIX, GROUP)

    async def straggle(late: RolloutDocument, listening: asyncio.Event) -> None:
        config = MqttConfig(host="127.0.0.1", port=mosquitto.port)
        async with BrokerSession(config) as session, session.subscribe([topic]) as subscription:
            listening.set()
            async for _, payload in subscription:
                if payload and parse_rollout(topic, payload).phase == "aborted":
                    late.heartbeat = time.time()
                    await session.publish(topic, late.payload())
                    return

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 2, catalog, running={"scale": "1.0"}) as nodes:
            first = asyncio.create_task(deploy(mosquitto.port, plan(ref, "1,100%", soak=30)))
            await until(lambda: [w.digest for w in nodes[0]._wanted] == [digest_of("1.1")])
            first.cancel()  # a driver stopped at any point: its documents may still come
            await asyncio.gather(first, return_exceptions=True)
            stored = await retained_rollout(mosquitto.port)
            assert stored is not None
            late = stored.model_copy(deep=True)
            listening = asyncio.Event()
            injected = asyncio.create_task(straggle(late, listening))
            await listening.wait()
            doc, lines = await abort(mosquitto.port, stored)
            await asyncio.wait_for(injected, 10)
            assert doc.phase == "aborted", lines
            final = await retained_rollout(mosquitto.port)
            assert final is not None
            assert (final.phase, final.lease) == ("aborted", doc.lease)

    asyncio.run(scenario())
