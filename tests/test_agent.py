"""The whole agent end to end: a simulated pump over Modbus TCP, signed modules pulled
from an OCI layout, mosquitto, the control socket and an MQTT command.

Everything is real: the pymodbus server, the engine, the signature check, the outbox,
the broker; the test only reads what an operator would read.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.control import fetch_status
from agent.demo._run import refresh_modules
from agent.demo._setup import prepare
from agent.runtime import Agent
from agent.sim import PumpDevice, PumpModel, SimServer
from agent.supply import load_private_key, package, parse_reference, sign_reference
from tests.brokers import Mosquitto, Subscriber, until
from tests.conftest import REPO

NODE = "node-7"
ROOT = f"edge/{NODE}"
MODULES = ("scale", "window-stats")


@dataclass
class Node:
    config_path: Path
    pump: PumpDevice
    device_port: int

    def config(self) -> AgentConfig:
        return load_config(self.config_path)


@pytest.fixture(scope="module")
def signed_layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled modules packaged and signed once for the module's tests."""
    root = tmp_path_factory.mktemp("supply")
    layouts = {name: root / "oci" / name for name in MODULES}
    asyncio.run(prepare(root / "keys", layouts, REPO / "modules"))
    return root


@pytest.fixture
def node(tmp_path: Path, mosquitto: Mosquitto, signed_layouts: Path) -> Node:
    """A node config: the pump polled every 50 ms, scale and window-stats chained."""
    pump_map = (REPO / "config" / "devices" / "pump.toml").read_text()
    (tmp_path / "pump.toml").write_text(pump_map.replace("interval_s = 1.0", "interval_s = 0.05"))
    pump = PumpDevice(PumpModel(seed=7, fault_rate_per_h=0.0))
    port = _free_port()
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
port = {mosquitto.port}

[pipeline]
raw_readings = true

[control]
socket = "control.sock"

[supply]
trusted_keys = ["{signed_layouts}/keys/cosign.pub"]

[[devices]]
name = "pump-1"
transport = "tcp"
host = "127.0.0.1"
port = {port}
map = "pump.toml"

[[modules]]
name = "scale"
ref = "oci:{signed_layouts}/oci/scale:1.0.0"
devices = ["pump-1"]
[modules.config.channels.temperature]
to = "degF"

[[modules]]
name = "window-stats"
ref = "oci:{signed_layouts}/oci/window-stats:1.0.0"
after = "scale"
[modules.config]
every = 5
"""
    )
    return Node(config, pump, port)


async def command(mosquitto: Mosquitto, name: str, args: dict[str, object]) -> dict[str, object]:
    """The agent's answer to one MQTT command, sent with mosquitto's own request tool."""
    rr = await asyncio.create_subprocess_exec(
        "mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "5",
        "-t", f"{ROOT}/cmd/{name}", "-e", f"{ROOT}/cmd/{name}/response",
        "-m", json.dumps({"id": uuid.uuid4().hex, "args": args}), "-W", "20",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await rr.communicate()
    return json.loads(out)  # type: ignore[no-any-return]


def _free_port() -> int:
    from tests.brokers import free_port  # noqa: PLC0415

    return free_port()


def by_topic(messages: list[tuple[str, str]], topic: str) -> list[dict[str, object]]:
    return [json.loads(p) for t, p in messages if t == f"{ROOT}/{topic}"]


def seqs(docs: list[dict[str, object]]) -> list[int]:
    return [int(d["seq"]) for d in docs]  # type: ignore[call-overload]


@pytest.mark.arm64
def test_readings_flow_from_the_device_through_signed_modules_to_the_broker(
    node: Node, mosquitto: Mosquitto
) -> None:
    async def scenario() -> tuple[list[tuple[str, str]], object, bytes]:
        stop = asyncio.Event()
        agent = Agent(node.config(), config_path=node.config_path)
        async with (
            SimServer({1: node.pump.image}, port=node.device_port),
            Subscriber(mosquitto, f"{ROOT}/#") as sub,
        ):
            task = asyncio.create_task(agent.run(stop))
            await until(lambda: len(by_topic(sub.messages, "stats")) >= 6)
            snapshot = await asyncio.to_thread(fetch_status, node.config().control.socket)
            rr = await asyncio.create_subprocess_exec(
                "mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "5",
                "-t", f"{ROOT}/cmd/module.list", "-e", f"{ROOT}/cmd/module.list/response",
                "-m", '{"id": "list-1"}', "-W", "10",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            answer, _ = await rr.communicate()
            stop.set()
            await task
            await until(lambda: any('"offline"' in p for t, p in sub.messages if "status" in t))
            return sub.messages, snapshot, answer

    messages, snapshot, answer = asyncio.run(scenario())
    raw = seqs(by_topic(messages, "devices/pump-1"))
    scaled = by_topic(messages, "scaled")
    # Every reading the device gave reached the broker, in order, and went through
    # the module chain: raw, scaled and statistics of the scaled values.
    assert raw == list(range(len(raw)))
    assert seqs(scaled) == raw[: len(scaled)]
    assert len(raw) - len(scaled) <= 2  # the last readings may be in flight at the stop
    process = [d for d in scaled if "temperature" in d["values"]]  # type: ignore[operator]
    assert process
    assert all(d["values"]["temperature"]["unit"] == "degF" for d in process)  # type: ignore[index]
    stats = by_topic(messages, "stats")
    assert seqs(stats) == [s for s in seqs(scaled) if s % 5 == 4][: len(stats)]

    assert snapshot.health.healthy, snapshot.health.reasons  # type: ignore[attr-defined]
    modules = {m.name: m for m in snapshot.modules}  # type: ignore[attr-defined]
    assert set(modules) == set(MODULES)
    assert all(m.state == "running" and m.digest.startswith("sha256:") for m in modules.values())
    assert modules["scale"].invocations > 0
    (device,) = snapshot.devices  # type: ignore[attr-defined]
    assert device.state == "online"
    assert snapshot.mqtt.connected  # type: ignore[attr-defined]

    reply = json.loads(answer)
    assert reply["id"] == "list-1"
    assert reply["status"] == "ok"
    listed = {m["name"]: m for m in reply["data"]}
    assert set(listed) == set(MODULES)
    assert all(m["signed"] and m["status"] == "active" for m in listed.values())


def test_a_killed_agent_restarts_where_it_was(node: Node, mosquitto: Mosquitto) -> None:
    """SIGKILL mid-stream: the restarted agent runs the same signed versions from its
    own state (no redeploy) and delivers every reading it had polled, in order."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "agent", "--log-level", "info", "run", "--config"]

    async def scenario() -> tuple[list[tuple[str, str]], float, str]:
        async with (
            SimServer({1: node.pump.image}, port=node.device_port),
            Subscriber(mosquitto, f"{ROOT}/#") as sub,
        ):

            def readings_since(t: float) -> int:
                """Distinct raw readings polled since `t`: redeliveries do not count."""
                raw = by_topic(sub.messages, "devices/pump-1")
                return len({d["seq"] for d in raw if float(d["ts"]) >= t})  # type: ignore[arg-type]

            first = await asyncio.create_subprocess_exec(*command, str(node.config_path), env=env)
            await until(lambda: len(by_topic(sub.messages, "scaled")) >= 20, 60)
            await until(lambda: readings_since(0) >= 20, 60)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            killed_at = time.time()
            log = node.config_path.parent / "second.log"
            with log.open("w") as out:
                second = await asyncio.create_subprocess_exec(
                    *command, str(node.config_path), env=env, stderr=out
                )
                await until(lambda: readings_since(killed_at) >= 20, 60)
                second.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(second.wait(), 30) == 0
            return sub.messages, killed_at, log.read_text()

    messages, killed_at, second_log = asyncio.run(scenario())
    # One numbering across the kill (the journal keeps it): every reading polled before
    # it was journaled, so raw and scaled both go on with no gap, first deliveries in
    # order; QoS 1 and the replay may repeat what the kill left unacknowledged.
    for topic in ("devices/pump-1", "scaled"):
        docs = by_topic(messages, topic)
        first_seen = list(dict.fromkeys(seqs(docs)))
        assert first_seen == list(range(len(first_seen))), topic
        after_kill = {d["seq"] for d in docs if float(d["ts"]) >= killed_at}  # type: ignore[arg-type]
        assert len(after_kill) >= 10, topic
    assert "activated" not in second_log  # the versions came from the node's own state


def test_status_exits_non_zero_while_a_device_is_offline(node: Node) -> None:
    """The health probe: no pump answers on the device's port."""
    socket_path = node.config().control.socket

    async def scenario() -> tuple[int, dict[str, object]]:
        stop = asyncio.Event()
        task = asyncio.create_task(Agent(node.config(), config_path=node.config_path).run(stop))

        def probe() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "agent", "status", "--json", "--socket", str(socket_path)],
                capture_output=True,
                text=True,
                check=False,
            )

        result = None
        for _ in range(100):
            result = await asyncio.to_thread(probe)
            if result.returncode != 3 and '"offline"' in result.stdout:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await task
        assert result is not None
        return result.returncode, json.loads(result.stdout)

    code, snapshot = asyncio.run(scenario())
    assert code == 1
    (device,) = snapshot["devices"]  # type: ignore[misc]
    assert device["state"] == "offline"
    assert any("pump-1" in reason for reason in snapshot["health"]["reasons"])  # type: ignore[index]


def demo_config(tmp_path: Path) -> Path:
    """config/demo.toml on free ports, a scratch directory and wasmtime."""
    demo = (REPO / "config" / "demo.toml").read_text()
    for old, new in (
        ('kind = "auto"', 'kind = "wasmtime"'),
        ("../.demo", str(tmp_path / "demo")),
        ("port = 18830", f"port = {_free_port()}"),
        ("port = 15020", f"port = {_free_port()}"),
        ('map = "devices/pump.toml"', f'map = "{REPO}/config/devices/pump.toml"'),
    ):
        assert old in demo
        demo = demo.replace(old, new)
    config = tmp_path / "demo.toml"
    config.write_text(demo)
    return config


def test_the_demo_shows_readings_and_module_outputs(tmp_path: Path) -> None:
    """The README's first command, on free ports and a scratch directory. On wasmtime:
    WasmEdge's first AOT compilation of three modules would take most of the run."""
    config = demo_config(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "demo",
            "--plain",
            "--seconds",
            "13",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    topics = [line.split(" ", 1)[0] for line in result.stdout.splitlines()]
    assert topics[0] == "edge/demo/status"
    assert "edge/demo/devices/pump-1" in topics
    assert "edge/demo/scaled" in topics
    assert "edge/demo/stats" in topics
    assert (tmp_path / "demo" / "keys" / "cosign.pub").exists()


def test_the_demo_starts_afresh_when_a_bundled_module_changed(tmp_path: Path) -> None:
    """A rebuilt module keeps its version number, which the supply refuses to swap in
    place; the demo's disposable state is cleared so the new build runs."""
    config = load_config(demo_config(tmp_path))
    modules = tmp_path / "modules"
    shutil.copytree(REPO / "modules", modules)
    state = config.node.state_dir
    asyncio.run(refresh_modules(config, modules))
    state.mkdir(parents=True)
    (state / "kept").write_text("")
    asyncio.run(refresh_modules(config, modules))  # unchanged: the state stays
    assert (state / "kept").exists()
    package = modules / "scale" / "module.toml"
    package.write_text(package.read_text().replace("deadline_ms = 200", "deadline_ms = 250"))
    asyncio.run(refresh_modules(config, modules))
    assert not state.exists()


def test_sighup_reloads_a_valid_config_and_keeps_running_on_a_bad_one(node: Node) -> None:
    async def scenario() -> str:
        log = node.config_path.parent / "agent.log"
        with log.open("w") as out:
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "--log-level", "info", "run",
                "--config", str(node.config_path), stderr=out,
            )  # fmt: skip
            await until(lambda: "running as" in log.read_text(), 30)
            good = node.config_path.read_text()
            node.config_path.write_text(good + "\n[nonsense]\n")
            agent.send_signal(signal.SIGHUP)
            await until(lambda: "not reloaded" in log.read_text(), 10)
            node.config_path.write_text(good.replace("every = 5", "every = 7"))
            agent.send_signal(signal.SIGHUP)
            await until(lambda: log.read_text().count("running as") == 2, 30)
            agent.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(agent.wait(), 30) == 0
        return log.read_text()

    text = asyncio.run(scenario())
    assert "nonsense: unknown key" in text
    assert "config reloaded from" in text


def test_a_deployed_version_that_traps_is_rolled_back_by_the_running_agent(
    node: Node, mosquitto: Mosquitto, signed_layouts: Path, tmp_path: Path
) -> None:
    """`module.deploy` over MQTT installs 1.1.0 of `scale`, which traps on every reading;
    past the rollout budget the agent goes back to 1.0.0 by itself and says why."""
    source = tmp_path / "bad-scale"
    source.mkdir()
    (source / "module.toml").write_text(
        f'name = "scale"\nversion = "1.1.0"\nwasm = "{REPO}/modules/dist/faulty.wasm"\n'
        '[config]\nfault = "trap"\n[capabilities]\nemit = ["scaled"]\n'
    )
    # The node overrides nothing of scale's config: 1.1.0 (the faulty module) would
    # rightly refuse keys it does not know at configure time, in its smoke test.
    text = node.config_path.read_text()
    node.config_path.write_text(
        text.replace('[modules.config.channels.temperature]\nto = "degF"\n', "")
    )
    keys = signed_layouts / "keys"
    private = load_private_key(keys / "cosign.key", (keys / "password").read_bytes())
    layout = tmp_path / "oci-bad"

    async def publish_signed() -> str:
        packaged = await package(source, layout)
        ref = parse_reference(f"oci:{packaged.layout}:{packaged.tag}")
        await sign_reference(ref, private, node.config().supply)
        return f"oci:{packaged.layout}:{packaged.tag}"

    async def scenario() -> tuple[dict[str, object], dict[str, object], list[tuple[str, str]]]:
        ref = await publish_signed()
        stop = asyncio.Event()
        agent = Agent(node.config(), config_path=node.config_path)
        async with (
            SimServer({1: node.pump.image}, port=node.device_port),
            Subscriber(mosquitto, f"{ROOT}/scaled") as sub,
        ):
            task = asyncio.create_task(agent.run(stop))
            await until(lambda: len(sub.messages) >= 5)
            deployed = await command(mosquitto, "module.deploy", {"reference": ref})
            supply = agent.versions.supply
            await until(lambda: any(s.status == "rolled-back" for s in supply.modules()))
            resumed = len(sub.messages)
            await until(lambda: len(sub.messages) >= resumed + 5)
            listed = await command(mosquitto, "module.list", {})
            stop.set()
            await task
        return deployed, listed, sub.messages

    deployed, listed, messages = asyncio.run(scenario())
    assert deployed["status"] == "ok", deployed
    assert deployed["data"]["version"] == "1.1.0"  # type: ignore[index]
    (scale,) = [m for m in listed["data"] if m["name"] == "scale"]  # type: ignore[union-attr]
    assert scale["version"] == "1.0.0"
    assert scale["status"] == "rolled-back"
    # Every scaled message came from 1.0.0: the trapping version emitted nothing.
    assert all(json.loads(p)["values"] for _, p in messages)


def test_config_reload_answers_first_then_run_returns_the_new_config(
    node: Node, mosquitto: Mosquitto
) -> None:
    async def scenario() -> tuple[dict[str, object], dict[str, object], AgentConfig | None]:
        agent = Agent(node.config(), config_path=node.config_path)
        good = node.config_path.read_text()
        async with (
            SimServer({1: node.pump.image}, port=node.device_port),
            Subscriber(mosquitto, f"{ROOT}/scaled") as sub,
        ):
            task = asyncio.create_task(agent.run(asyncio.Event()))
            await until(lambda: len(sub.messages) >= 1)  # commands are served by then
            node.config_path.write_text(good.replace("[pipeline]", "[pipeline\n"))
            refused = await command(mosquitto, "config.reload", {})
            assert not task.done()
            node.config_path.write_text(good.replace("raw_readings = true", "raw_readings = false"))
            accepted = await command(mosquitto, "config.reload", {})
            return refused, accepted, await asyncio.wait_for(task, 30)

    refused, accepted, reloaded = asyncio.run(scenario())
    assert refused["status"] == "error", refused
    assert "not valid TOML" in str(refused["error"])
    assert accepted["status"] == "ok", accepted
    assert accepted["data"] == {"config": str(node.config_path), "restarting": True}
    assert reloaded is not None
    assert reloaded.pipeline.raw_readings is False
