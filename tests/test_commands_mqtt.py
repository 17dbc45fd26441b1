"""Commands end to end through a real mosquitto, sent and read with mosquitto_pub/sub.

The bridge between broker and router here is two mosquitto client processes; in the
agent it is the MQTT adapter. What is tested is the contract an operator sees: topics,
envelopes, and refusals that run nothing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.commands import CommandRouter, CommandVerifier, load_public_keys, sign_request
from agent.config import CommandsConfig

from .brokers import Mosquitto
from .test_commands import Modules, keypair, make_router

NODE = "edge/gateway-17/cmd"


@pytest.fixture
def broker(mosquitto: Mosquitto) -> int:
    return mosquitto.port


def client(tool: str, port: int, *args: str) -> list[str]:
    return [tool, "-h", "127.0.0.1", "-p", str(port), "-q", "1", *args]


async def subscribe(port: int, *topics: str) -> asyncio.subprocess.Process:
    args = [a for t in topics for a in ("-t", t)]
    return await asyncio.create_subprocess_exec(
        *client("mosquitto_sub", port, "-v", *args),
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 20,
    )


async def publish(port: int, topic: str, payload: bytes) -> None:
    proc = await asyncio.create_subprocess_exec(
        *client("mosquitto_pub", port, "-t", topic, "-s"), stdin=asyncio.subprocess.PIPE
    )
    await proc.communicate(payload)
    assert proc.returncode == 0


async def bridge(port: int, router: CommandRouter, sub: asyncio.subprocess.Process) -> None:
    """Broker to router and back, as the MQTT adapter does, until `sub` is terminated."""
    assert sub.stdout is not None
    while line := await sub.stdout.readline():
        topic, _, payload = line.rstrip(b"\n").partition(b" ")
        reply = await router.handle(topic.decode(), payload)
        if reply is not None:
            await publish(port, reply.topic, reply.payload)
    await sub.wait()


async def exchange(
    port: int, router: CommandRouter, requests: list[tuple[str, Any]]
) -> list[dict[str, Any]]:
    """Publish each request in turn and collect its answer from the response topic."""
    commands = await subscribe(port, *router.subscriptions())
    task = asyncio.create_task(bridge(port, router, commands))
    responses = await subscribe(port, "edge/+/cmd/+/response", "edge/fleet/cmd/+/response")
    assert responses.stdout is not None
    answers = []
    try:
        # Subscriptions are live once a probe makes the round trip.
        while True:
            await publish(port, f"{NODE}/nothing", b'{"id": "probe"}')
            try:
                line = await asyncio.wait_for(responses.stdout.readline(), 0.5)
                break
            except TimeoutError:
                continue
        assert b'"probe"' in line
        for name, request in requests:
            payload = request if isinstance(request, bytes) else json.dumps(request).encode()
            await publish(port, name, payload)
            line = await asyncio.wait_for(responses.stdout.readline(), 10)
            topic, _, body = line.rstrip(b"\n").partition(b" ")
            assert topic.decode() == f"{name}/response"
            answers.append(json.loads(body))
    finally:
        for proc in (responses, commands):
            proc.terminate()
        await responses.wait()
        await task
    return answers


@pytest.mark.arm64
def test_commands_through_mosquitto(broker: int, tmp_path: Path) -> None:
    key, pub = keypair(tmp_path, "ops")
    stranger, _ = keypair(tmp_path, "stranger")
    config = CommandsConfig(require_signature=True, trusted_keys=(pub,), dedupe_size=2)
    modules = Modules()
    verifier = CommandVerifier(load_public_keys(config.trusted_keys), config.max_skew_s)
    router = make_router(config, modules, verifier=verifier)
    listing = f"{NODE}/module.list"
    first = sign_request(key, listing, {"id": "list-1"})
    fleet = "edge/fleet/cmd/module.list"
    requests: list[tuple[str, Any]] = [
        (listing, first),
        (listing, first),  # duplicate: answered again, not run again
        (fleet, sign_request(key, fleet, {"id": "fleet-1"})),
        (listing, b"not json"),
        (listing, json.dumps({"id": "big", "pad": "x" * 70_000}).encode()),
        (f"{NODE}/module.nuke", sign_request(key, f"{NODE}/module.nuke", {"id": "n"})),
        (listing, {"id": "unsigned"}),
        (listing, sign_request(stranger, listing, {"id": "stranger"})),
        (listing, sign_request(key, listing, {"id": "list-2"})),
        (listing, first),  # evicted from the 2-entry cache by now: the nonce refuses it
    ]
    answers = asyncio.run(exchange(broker, router, requests))
    ok = {
        "status": "ok",
        "node": "gateway-17",
        "data": [{"name": "scale", "version": "1.0.0"}],
        "error": None,
    }
    assert answers[0] == {"id": "list-1", **ok}
    assert answers[1] == answers[0]
    assert answers[2] == {"id": "fleet-1", **ok}
    assert answers[8] == {"id": "list-2", **ok}
    codes = [(a["id"], a["error"]["code"]) for a in answers[3:8] + answers[9:]]
    assert codes == [
        (None, "malformed"),
        (None, "too_large"),
        ("n", "unknown_command"),
        ("unsigned", "unauthorized"),
        ("stranger", "unauthorized"),
        ("list-1", "replayed"),
    ]
    assert [name for name, _ in modules.calls] == ["list", "list", "list"]
