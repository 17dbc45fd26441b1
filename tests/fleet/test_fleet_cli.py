"""`edge-agent fleet` as an operator runs it: status over simulated nodes, desired-state
edits, bad input, and a deploy killed with SIGKILL that a second process resumes.

Commands run in a thread through `agent.cli.main` (the broker and the nodes stay on the
test's event loop), or as `python -m agent` processes where a process must die.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.cli import main
from agent.commands import CommandVerifier
from agent.errors import DesiredStateError
from agent.fleet import parse_desired, parse_rollout, rollout_topic
from tests.brokers import Mosquitto, Subscriber, refusing_broker, until
from tests.fleet.simnode import Catalog, SimNode, digest_of, publish, read_retained, simulated_fleet

REPO = Path(__file__).resolve().parent.parent.parent


async def fleet(capsys: pytest.CaptureFixture[str], port: int, *argv: str) -> tuple[int, str, str]:
    """`edge-agent fleet --broker ... ARGV`: exit code, stdout, stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["fleet", "--broker", f"127.0.0.1:{port}", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_shows_every_node_and_a_broken_report_as_an_error_row(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = Catalog()
    catalog.ref("scale", "1.0")

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 3, catalog, running={"scale": "1.0"}) as nodes:
            code, out, _ = await fleet(capsys, mosquitto.port, "status")
            assert code == 0, out
            header, *rows = out.splitlines()
            assert header.split()[:3] == ["NODE", "STATE", "GROUPS"]
            assert [r.split()[:4] for r in rows] == [
                [n.node, "online", "pumps", "scale"] for n in nodes
            ]
            assert all("1/1" in r and "healthy" in r and "s ago" in r for r in rows)

            await nodes[1].go_offline()
            await nodes[2].set_healthy(False)
            await publish(mosquitto.port, "edge/broken/report", b'{"node": "broken"}')
            code, out, _ = await fleet(capsys, mosquitto.port, "status")
            assert code == 1
            lines = {line.split()[0]: line for line in out.splitlines()[1:]}
            assert (
                "error: edge/broken/report: not a node report: ts: Field required"
                in lines["broken"]
            )
            assert lines["n02"].split()[1] == "offline"
            assert "unhealthy: device 'meter' offline" in lines["n03"]

            code, out, _ = await fleet(
                capsys, mosquitto.port, "status", "--group", "pumps", "--json"
            )
            assert code == 1
            listed = json.loads(out)
            assert [(r["node"], r["state"], r["ok"]) for r in listed] == [
                ("n01", "online", True), ("n02", "offline", False), ("n03", "online", False),
            ]  # fmt: skip
            assert listed[0]["modules"][0]["digest"] == digest_of("1.0")

            code, _, err = await fleet(capsys, mosquitto.port, "status", "--group", "nope")
            assert code == 4
            assert "no node found in group 'nope'" in err

    asyncio.run(scenario())


def test_an_unreachable_broker_has_its_own_exit_code(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    mosquitto.stop()
    code, _, err = asyncio.run(fleet(capsys, mosquitto.port, "status"))
    assert code == 3
    assert f"broker 127.0.0.1:{mosquitto.port}:" in err
    assert "refused" in err.lower()


def test_desired_set_show_remove_and_clear_with_a_signature(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    topic = "edge/group/pumps/desired"
    ref = "registry.test:5000/edge/scale:1.1"

    async def scenario() -> None:
        code, _, err = await fleet(capsys, mosquitto.port, "desired", "show", "--group", "pumps")
        assert code == 4
        assert f"no desired-state document on {topic}" in err
        signed = ["--key", str(key_file), "desired", "set", "--group", "pumps"]
        code, out, _ = await fleet(
            capsys,
            mosquitto.port,
            *signed,
            "--module",
            "scale",
            "--ref",
            ref,
            "--config",
            '{"k": 2}',
        )
        assert code == 0
        assert "revision" in out
        meter = ["--module", "meter", "--ref", "registry.test:5000/edge/meter:2"]
        assert (await fleet(capsys, mosquitto.port, *signed, *meter))[0] == 0
        payload = (await read_retained(mosquitto.port, [topic]))[topic]
        document = parse_desired(topic, payload, CommandVerifier([key.public_key()], 60))
        assert document is not None
        assert [(m.name, m.config) for m in document.modules] == [
            ("scale", {"k": 2}),
            ("meter", None),
        ]
        other = CommandVerifier([ec.generate_private_key(ec.SECP256R1()).public_key()], 60)
        with pytest.raises(DesiredStateError, match="refused"):
            parse_desired(topic, payload, other)

        code, out, _ = await fleet(capsys, mosquitto.port, "desired", "show", "--group", "pumps")
        assert code == 0
        assert json.loads(out)["revision"] == document.revision

        code, _, _ = await fleet(capsys, mosquitto.port, *signed, "--remove", "scale")
        assert code == 0
        payload = (await read_retained(mosquitto.port, [topic]))[topic]
        after = parse_desired(topic, payload, None)
        assert after is not None
        assert [m.name for m in after.modules] == ["meter"]
        assert after.revision > document.revision
        code, _, err = await fleet(capsys, mosquitto.port, *signed, "--remove", "scale")
        assert code == 4
        assert "has no entry 'scale'" in err

        assert (await fleet(capsys, mosquitto.port, *signed, "--absent", "meter"))[0] == 0
        payload = (await read_retained(mosquitto.port, [topic]))[topic]
        absent = parse_desired(topic, payload, None)
        assert absent is not None
        assert [m.model_dump(exclude_none=True) for m in absent.modules] == [
            {"name": "meter", "absent": True}
        ]

        code, _, _ = await fleet(capsys, mosquitto.port, "desired", "clear", "--group", "pumps")
        assert code == 0
        assert await read_retained(mosquitto.port, [topic]) == {}

    asyncio.run(scenario())


def test_bad_input_is_refused_with_what_was_wrong(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")

    async def scenario() -> None:
        await publish(mosquitto.port, "edge/n09/desired", b'{"revision": "soon"}')
        code, _, err = await fleet(capsys, mosquitto.port, "desired", "show", "--node", "n09")
        assert code == 1
        assert "edge/n09/desired: revision: Input should be a valid integer" in err
        code, _, err = await fleet(
            capsys, mosquitto.port, "desired", "set", "--node", "n01", "--module", "s", "--ref", "x"
        )
        assert code == 1
        assert "--module: ref:" in err
        code, _, err = await fleet(
            capsys, mosquitto.port, "desired", "set", "--node", "n01", "--absent", "s", "--ref", ref
        )
        assert code == 1
        assert "--absent takes no --ref, --digest or --config" in err

        async with simulated_fleet(mosquitto.port, 2, catalog, running={"scale": "1.0"}):
            code, _, err = await fleet(
                capsys, mosquitto.port, "deploy", ref, "--group", "pumps", "--waves", "1,50%"
            )
            assert code == 1
            assert "the last wave must be 100%" in err
            code, _, err = await fleet(capsys, mosquitto.port, "deploy", ref, "--group", "nope")
            assert code == 1
            assert "no node reports group 'nope'" in err
            assert "groups: pumps" in err
            code, out, _ = await fleet(
                capsys, mosquitto.port, "deploy", ref, "--group", "pumps", "--detach"
            )
            assert code == 0
            assert "detached" in out
            code, _, err = await fleet(capsys, mosquitto.port, "deploy", ref, "--group", "pumps")
            assert code == 1
            assert "`fleet rollout resume` or `abort` it first" in err
            code, out, _ = await fleet(
                capsys, mosquitto.port, "rollout", "status", "--group", "pumps"
            )
            assert code == 6
            assert "phase: deploying wave 1/2" in out
            assert "driver: " in out
            assert "heartbeat" not in out  # detached: no driver has run it yet
            code, _, err = await fleet(
                capsys, mosquitto.port, "rollout", "status", "--group", "none"
            )
            assert code == 4

    asyncio.run(scenario())


def test_a_killed_deploy_is_resumed_by_a_second_process(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")
    topic = rollout_topic("edge", "pumps")
    broker = ["--broker", f"127.0.0.1:{mosquitto.port}"]

    async def rollout() -> object:
        payload = (await read_retained(mosquitto.port, [topic])).get(topic)
        return parse_rollout(topic, payload) if payload else None

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 6, catalog, running={"scale": "1.0"}) as nodes:
            for node in nodes[1:3]:
                node.hold = True  # wave 2 stays pending: the driver dies mid-wave
            async with Subscriber(mosquitto, "edge/+/desired") as documents:
                driver = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "agent", "fleet", *broker, "deploy", ref,
                    "--group", "pumps", "--waves", "1,50%,100%", "--soak", "0.2",
                    cwd=REPO, stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                # n01's entry, pinned once it converged, then wave 2's two documents.
                await until(
                    lambda: (
                        {t for t, _ in documents.messages}
                        >= {"edge/n02/desired", "edge/n03/desired"}
                    )
                )
            driver.kill()
            out = (await driver.communicate())[0].decode()
            assert "wave 2/3: deploying" in out
            stored = await rollout()
            assert stored is not None
            assert (stored.phase, stored.wave) == ("deploying", 1)

            code, _, err = await fleet(
                capsys, mosquitto.port, "rollout", "resume", "--group", "pumps"
            )
            assert code == 1
            assert "--force takes it over" in err

            for node in nodes[1:3]:
                await node.release()
            resumed = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "fleet", *broker,
                "rollout", "resume", "--group", "pumps", "--force",
                cwd=REPO, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out_bytes, _ = await asyncio.wait_for(resumed.communicate(), 60)
            assert resumed.returncode == 0, out_bytes.decode()
            assert "resuming (deploying wave 2/3)" in out_bytes.decode()
            await until(lambda: all(n.version("scale") == "1.1" for n in nodes))
            assert await read_retained(mosquitto.port, ["edge/+/desired"]) == {}
            code, out, _ = await fleet(
                capsys, mosquitto.port, "rollout", "status", "--group", "pumps"
            )
            assert code == 0
            assert "phase: done" in out

    asyncio.run(scenario())


def test_rollout_abort_from_the_command_line(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = Catalog()
    catalog.ref("scale", "1.0")
    ref = catalog.ref("scale", "1.1")

    async def scenario() -> None:
        async with simulated_fleet(mosquitto.port, 2, catalog, running={"scale": "1.0"}) as nodes:
            nodes[1].hold = True
            detach = ["--waves", "1,100%", "--soak", "0", "--wave-timeout", "30", "--detach"]
            code, _, _ = await fleet(
                capsys, mosquitto.port, "deploy", ref, "--group", "pumps", *detach
            )
            assert code == 0
            driving = asyncio.create_task(
                fleet(capsys, mosquitto.port, "rollout", "resume", "--group", "pumps")
            )
            # n01 soaked, n02's pinned entry pending: the driver has nothing left to write.
            await until(lambda: [w.digest for w in nodes[0]._wanted] == [digest_of("1.1")])
            await until(lambda: [w.state for w in nodes[1]._wanted] == ["pending"])
            aborting = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "fleet", "--broker", f"127.0.0.1:{mosquitto.port}",
                "rollout", "abort", "--group", "pumps",
                cwd=REPO, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out_bytes, _ = await asyncio.wait_for(aborting.communicate(), 60)
            assert aborting.returncode == 5, out_bytes.decode()
            assert "aborted: put back n01, n02" in out_bytes.decode()
            code, out, _ = await driving
            assert code in (5, 6)  # it stops on the aborting document, or the aborted one
            assert "taken over by" in out
            await until(lambda: nodes[0].version("scale") == "1.0")
            assert nodes[1].version("scale") == "1.0"

    asyncio.run(scenario())


def test_the_broker_and_prefix_come_from_an_agent_config(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    agent_config = tmp_path / "agent.toml"
    agent_config.write_text(
        f'[node]\nid = "elsewhere"\n[mqtt]\nhosts = ["127.0.0.1:{mosquitto.port}"]\n'
        'topic_prefix = "plant"\nprotocol = "3.1.1"\n'
    )
    catalog = Catalog()

    async def scenario() -> None:
        async with SimNode(mosquitto.port, "n07", ("pumps",), catalog, prefix="plant"):
            capsys.readouterr()
            argv = ["fleet", "--config", str(agent_config), "status", "--json"]
            code = await asyncio.to_thread(main, argv)
            listed = json.loads(capsys.readouterr().out)
            assert code == 0
            assert [(r["node"], r["groups"]) for r in listed] == [("n07", ["pumps"])]
            agent_config.write_text("[mqtt]\nport = 0\n")
            code = await asyncio.to_thread(main, ["fleet", "--config", str(agent_config), "status"])
            assert code == 1
            assert f"{agent_config}: [mqtt]: port: Input should be greater than or equal to 1" in (
                capsys.readouterr().err
            )

    asyncio.run(scenario())


def test_a_broker_refusing_the_subscriptions_is_an_error_not_a_reconnect_loop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The broker answered and said no: connecting again would not help, and an empty
    fleet would be a lie. Exit 1, naming the filter."""

    async def scenario() -> tuple[int, str]:
        async with refusing_broker(["edge/fleet/#"]) as port:
            argv = ["--protocol", "3.1.1", "rollout", "resume", "--group", "pumps"]
            code, _, err = await asyncio.wait_for(fleet(capsys, port, *argv), 30)
        return code, err

    code, err = asyncio.run(scenario())
    assert code == 1
    assert "the broker refused the subscription to edge/+/status" in err
