"""A node following desired state: real agent, mosquitto, Debian's registry, a pump.

Versions of `faulty` are packaged, signed and pushed to the registry; the tests publish
retained desired-state documents as an operator's tool would and read what the node
says of itself in its retained report, and what it runs in its pipeline.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.config import AgentConfig, parse_config
from agent.fleet import Report, desired_payload, desired_topic, parse_report, report_topic
from agent.runtime import Agent
from agent.sim import PumpDevice, PumpModel, SimServer
from tests.brokers import Mosquitto, free_port, until
from tests.conftest import REPO

from .conftest import KeyPair, Registry, agent_config, module_dir, publish

pytestmark = [pytest.mark.mosquitto, pytest.mark.registry]

NODE = "node-3"
GROUP = "site-a"


class Node:
    """The agent in this process, its pump, and the broker's view of its report."""

    def __init__(self, config: AgentConfig, mosquitto: Mosquitto) -> None:
        self.config = config
        self.mosquitto = mosquitto
        self.agent = Agent(config)
        self.report: Report | None = None

    async def publish(self, topic: str, payload: bytes) -> None:
        async with aiomqtt.Client("127.0.0.1", self.mosquitto.port) as client:
            await client.publish(topic, payload, qos=1, retain=True)

    async def until_report(
        self, condition: Callable[[Report], bool], seconds: float = 30
    ) -> Report:
        await until(lambda: self.report is not None and condition(self.report), seconds)
        assert self.report is not None
        return self.report

    def running(self, name: str) -> str | None:
        host = self.agent.versions.pipeline.host(name)
        return host.version if host is not None else None

    async def _follow_report(self) -> None:
        topic = report_topic("edge", NODE)
        async with aiomqtt.Client("127.0.0.1", self.mosquitto.port) as client:
            await client.subscribe(topic, qos=1)
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                self.report = parse_report(topic, message.payload)


@asynccontextmanager
async def running(config: AgentConfig, mosquitto: Mosquitto) -> AsyncIterator[Node]:
    node = Node(config, mosquitto)
    pump = PumpDevice(PumpModel(seed=3, fault_rate_per_h=0.0))
    port = next(d.port for d in config.modbus_devices)
    stop = asyncio.Event()
    async with SimServer({1: pump.image}, port=port):
        follower = asyncio.create_task(node._follow_report())
        task = asyncio.create_task(node.agent.run(stop))
        try:
            await node.until_report(lambda r: True)
            yield node
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            follower.cancel()


def node_config(
    tmp: Path,
    mosquitto: Mosquitto,
    registry: Registry,
    keys: list[Path],
    supply: dict[str, Any] | None = None,
    **extra: Any,
) -> AgentConfig:
    base = agent_config(tmp, registry, keys, **(supply or {}))
    base = base.model_dump(mode="json", exclude_unset=True)
    base["node"].update(id=NODE, groups=["other", GROUP])
    base.update(
        engine={"kind": "wasmtime"},
        mqtt={"host": "127.0.0.1", "port": mosquitto.port, "protocol": "3.1.1"},
        control={"socket": str(tmp / "control.sock")},
        devices=[
            {
                "name": "pump-1",
                "transport": "tcp",
                "host": "127.0.0.1",
                "port": free_port(),
                "map": str(tmp / "pump.toml"),
            }
        ],
        **extra,
    )
    pump_map = (REPO / "config" / "devices" / "pump.toml").read_text()
    (tmp / "pump.toml").write_text(pump_map.replace("interval_s = 1.0", "interval_s = 0.05"))
    return parse_config(base, tmp / "agent.toml")


async def push_versions(
    tmp: Path, config: AgentConfig, registry: Registry, key: KeyPair
) -> dict[str, str]:
    """faulty 1.0.0 and 1.1.0 (fine), 1.2.0 (traps on every reading, no test readings to
    catch it before activation): version -> reference."""
    refs = {}
    for version, fault, readings in (
        ("1.0.0", "none", True),
        ("1.1.0", "none", True),
        ("1.2.0", "trap", False),
    ):
        ref = f"{registry.host}/edge/faulty:{version}"
        await publish(
            config, module_dir(tmp / "src", version, fault, test_readings=readings), ref, key
        )
        refs[version] = ref
    return refs


def entry(name: str, ref: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "ref": ref, **more}


def test_a_node_converges_on_its_groups_and_its_own_document_and_reports_why_it_differs(
    tmp_path: Path,
    mosquitto: Mosquitto,
    registry: Registry,
    keys: KeyPair,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = node_config(tmp_path, mosquitto, registry, [keys.public])
    group_topic = desired_topic("edge", group=GROUP)
    node_topic = desired_topic("edge", node=NODE)

    async def scenario() -> None:
        refs = await push_versions(tmp_path, config, registry, keys)
        async with running(config, mosquitto) as node:
            # A group document: the node installs what it names.
            await node.publish(
                group_topic, desired_payload(group_topic, 10, [entry("faulty", refs["1.1.0"])])
            )
            report = await node.until_report(
                lambda r: [w.state for w in r.desired] == ["converged"]
            )
            assert report.desired[0].source == f"group:{GROUP}"
            assert node.running("faulty") == "1.1.0"
            assert report.groups == ("other", GROUP)

            # The node's own document wins over the group's, an older version included.
            await node.publish(
                node_topic, desired_payload(node_topic, 5, [entry("faulty", refs["1.0.0"])])
            )
            report = await node.until_report(
                lambda r: r.desired[0].source == "node" and r.desired[0].state == "converged"
            )
            assert node.running("faulty") == "1.0.0"

            # Refused documents are named; what runs stays.
            await node.publish(node_topic, b'{"revision": 6, "modules": [{"name": "faulty"}]}')
            report = await node.until_report(lambda r: len(r.desired_errors) == 1)
            assert "give ref (or absent: true to remove it)" in report.desired_errors[0]
            assert node_topic in report.desired_errors[0]
            await node.publish(
                node_topic, desired_payload(node_topic, 4, [entry("faulty", refs["1.1.0"])])
            )
            report = await node.until_report(
                lambda r: "older than revision 5" in " ".join(r.desired_errors)
            )
            assert node.running("faulty") == "1.0.0"

            # A version that traps is taken back by the rollout guard, said so, and not
            # deployed again until the document changes.
            await node.publish(
                node_topic, desired_payload(node_topic, 7, [entry("faulty", refs["1.2.0"])])
            )
            report = await node.until_report(lambda r: r.desired[0].state == "rolled-back")
            assert "automatic rollback" in (report.desired[0].reason or "")
            assert report.desired_errors == ()  # the good document superseded the bad ones
            assert node.running("faulty") == "1.0.0"
            await asyncio.sleep(1.5)  # a second report cycle: it must not try again
            assert node.report is not None
            assert node.report.desired[0].state == "rolled-back"
            assert node.running("faulty") == "1.0.0"

            # Desired config replaces the module's: 1.2.0 runs fine when told not to trap.
            fixed = entry("faulty", refs["1.2.0"], config={"fault": "none"})
            await node.publish(node_topic, desired_payload(node_topic, 8, [fixed]))
            report = await node.until_report(lambda r: r.desired[0].state == "converged")
            assert node.running("faulty") == "1.2.0"
            await asyncio.sleep(1.0)
            assert node.running("faulty") == "1.2.0"

            # A reference that fails verification: failed, named, nothing changes.
            unsigned = f"{registry.host}/edge/unsigned:1.0.0"
            await publish(config, module_dir(tmp_path / "u", "1.3.0"), unsigned, None)
            await node.publish(
                node_topic, desired_payload(node_topic, 9, [fixed, entry("other", unsigned)])
            )
            report = await node.until_report(
                lambda r: any(w.name == "other" and w.state == "failed" for w in r.desired)
            )
            (other,) = [w for w in report.desired if w.name == "other"]
            assert "is not signed" in (other.reason or "")
            assert node.running("faulty") == "1.2.0"

        await restart_keeps_the_decisions(config, mosquitto, caplog)

    asyncio.run(scenario())


async def restart_keeps_the_decisions(
    config: AgentConfig, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Revision 9 is not taken twice and nothing is redeployed, not even the group's 1.1.0
    for a moment before the node's own document arrives."""
    caplog.clear()
    caplog.set_level(logging.INFO, "agent.runtime._desired")
    async with running(config, mosquitto) as node:
        report = await node.until_report(lambda r: len(r.desired) == 2)
        assert node.running("faulty") == "1.2.0"
        assert {w.name: w.state for w in report.desired} == {
            "faulty": "converged",
            "other": "failed",
        }
    decided = [r.getMessage() for r in caplog.records if r.name == "agent.runtime._desired"]
    assert [m for m in decided if "converged on" in m] == [], decided


def test_an_absent_entry_removes_the_module_and_clearing_it_brings_the_group_back(
    tmp_path: Path, mosquitto: Mosquitto, registry: Registry, keys: KeyPair
) -> None:
    stats = {
        "name": "stats",
        "path": str(REPO / "modules" / "dist" / "window-stats.wasm"),
        "config": {"every": 10, "channels": ["temperature"]},
    }
    config = node_config(
        tmp_path,
        mosquitto,
        registry,
        [keys.public],
        supply={"allow_unsigned_paths": True},
        modules=[stats],
    )
    group_topic = desired_topic("edge", group=GROUP)
    node_topic = desired_topic("edge", node=NODE)

    def state(report: Report) -> tuple[str | None, str, bool | None] | None:
        wanted = next((w for w in report.desired if w.name == "faulty"), None)
        return (wanted.source, wanted.state, wanted.absent) if wanted else None

    async def scenario() -> None:
        refs = await push_versions(tmp_path, config, registry, keys)
        async with running(config, mosquitto) as node:
            group_doc = desired_payload(group_topic, 1, [entry("faulty", refs["1.1.0"])])
            await node.publish(group_topic, group_doc)
            await node.until_report(lambda r: state(r) == (f"group:{GROUP}", "converged", None))
            assert node.running("faulty") == "1.1.0"

            # A version whose registry does not answer: pending, retried by the supply.
            nowhere = f"127.0.0.1:{free_port()}/edge/faulty:1.2.0"
            await node.publish(
                node_topic, desired_payload(node_topic, 1, [entry("faulty", nowhere)])
            )
            await node.until_report(lambda r: state(r) == ("node", "pending", None))
            supply = node.agent.versions.supply
            assert [d.status for d in supply.desired() if d.ref == nowhere] == ["pending"]

            # The node's absent entry wins over the group's: removed, and said so; the
            # supply will not install the pending version once its registry is back.
            absent = desired_payload(node_topic, 2, [{"name": "faulty", "absent": True}])
            await node.publish(node_topic, absent)
            report = await node.until_report(lambda r: state(r) == ("node", "converged", True))
            assert node.running("faulty") is None
            assert [m.name for m in report.modules if m.name == "faulty"] == []
            assert [d.status for d in supply.desired() if d.ref == nowhere] == ["cancelled"]

            # A module of the config file is the file's to remove: failed, and why.
            stats_absent = {"name": "stats", "absent": True}
            absent = desired_payload(
                node_topic, 3, [{"name": "faulty", "absent": True}, stats_absent]
            )
            await node.publish(node_topic, absent)
            report = await node.until_report(
                lambda r: any(w.name == "stats" and w.state == "failed" for w in r.desired)
            )
            (failed,) = [w for w in report.desired if w.name == "stats"]
            assert "is in the config file's [[modules]]" in (failed.reason or "")
            assert node.running("stats") is not None

        # A restart does not bring it back.
        async with running(config, mosquitto) as node:
            await node.until_report(lambda r: state(r) == ("node", "converged", True))
            assert node.running("faulty") is None
            # The node's document cleared: the group's entry holds again.
            await node.publish(node_topic, b"")
            await node.until_report(lambda r: state(r) == (f"group:{GROUP}", "converged", None))
            assert node.running("faulty") == "1.1.0"

    asyncio.run(scenario())


def test_with_signatures_required_only_documents_signed_for_their_topic_are_taken(
    tmp_path: Path, mosquitto: Mosquitto, registry: Registry, keys: KeyPair
) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    pem = signer.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = tmp_path / "commands.pub"
    public.write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    commands = {"require_signature": True, "trusted_keys": [str(public)]}
    config = node_config(tmp_path, mosquitto, registry, [keys.public], commands=commands)
    node_topic = desired_topic("edge", node=NODE)
    group_topic = desired_topic("edge", group=GROUP)

    async def scenario() -> None:
        refs = await push_versions(tmp_path, config, registry, keys)
        wanted = [entry("faulty", refs["1.0.0"])]
        async with running(config, mosquitto) as node:
            await node.publish(node_topic, desired_payload(node_topic, 1, wanted))
            report = await node.until_report(lambda r: len(r.desired_errors) == 1)
            assert "this node accepts signed commands only: no 'sig'" in report.desired_errors[0]
            # Signed for the group's topic, published on the node's: refused.
            await node.publish(node_topic, desired_payload(group_topic, 2, wanted, key_pem=pem))
            report = await node.until_report(
                lambda r: "not from a trusted key" in " ".join(r.desired_errors)
            )
            assert node.running("faulty") is None
            await node.publish(node_topic, desired_payload(node_topic, 3, wanted, key_pem=pem))
            report = await node.until_report(
                lambda r: [w.state for w in r.desired] == ["converged"]
            )
            assert report.desired_errors == ()
            assert node.running("faulty") == "1.0.0"

            # A command's deploy is the operator's word too: said, and not undone.
            await node.agent.versions.supply.deploy(refs["1.1.0"])
            report = await node.until_report(lambda r: r.desired[0].state == "superseded")
            assert "changed outside desired state: runs 1.1.0" in (report.desired[0].reason or "")
            await asyncio.sleep(1.5)  # a report cycle or more: nothing converges it back
            assert node.running("faulty") == "1.1.0"

    asyncio.run(scenario())


def test_group_commands_reach_the_groups_members_only(
    tmp_path: Path, mosquitto: Mosquitto, registry: Registry, keys: KeyPair
) -> None:
    config = node_config(tmp_path, mosquitto, registry, [keys.public])

    async def ask(topic: str) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.subscribe(f"{topic}/response", qos=1)
            await client.publish(topic, json.dumps({"id": "q1", "args": {}}), qos=1)
            try:
                async with asyncio.timeout(3):
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        answers.append(json.loads(message.payload))
            except TimeoutError:
                pass
        return answers

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with running(config, mosquitto):
            member = await ask(f"edge/group/{GROUP}/cmd/module.list")
            stranger = await ask("edge/group/elsewhere/cmd/module.list")
        return member, stranger

    member, stranger = asyncio.run(scenario())
    assert [(a["node"], a["status"]) for a in member] == [(NODE, "ok")]
    assert stranger == []
