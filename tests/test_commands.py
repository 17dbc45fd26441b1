"""The command router: every refusal gets an error reply and runs nothing.

Signatures use real ECDSA P-256 keys; time for the rate limit and clock skew is injected.
End-to-end delivery through mosquitto is in test_commands_mqtt.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent._ratelimit import TokenBucket
from agent.commands import (
    LOG_LEVEL,
    MODULE_DEPLOY,
    MODULE_LIST,
    MODULE_REMOVE,
    STATUS,
    CommandRouter,
    CommandVerifier,
    DeployArgs,
    ModuleNameArgs,
    NoArgs,
    Reply,
    load_public_keys,
    set_log_level,
    sign_request,
    signed_bytes,
    status_handler,
)
from agent.config import CommandsConfig
from agent.errors import CommandFailed, ConfigError

from .snapshots import make_snapshot

NODE = "edge/gateway-17/cmd"


class Clock:
    def __init__(self, now: float = 1_764_118_800.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keypair(tmp_path: Path, name: str) -> tuple[bytes, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = tmp_path / f"{name}.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pem, pub


class Modules:
    """The runtime's side, as far as the router can tell: records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def list(self, args: NoArgs) -> list[dict[str, str]]:
        self.calls.append(("list", args))
        return [{"name": "scale", "version": "1.0.0"}]

    async def deploy(self, args: DeployArgs) -> dict[str, str]:
        self.calls.append(("deploy", args))
        return {"deployed": args.reference}

    async def remove(self, args: ModuleNameArgs) -> None:
        self.calls.append(("remove", args))
        raise CommandFailed(f"no module named {args.name!r}")


def make_router(config: CommandsConfig, modules: Modules, **kw: Any) -> CommandRouter:
    router = CommandRouter(config, prefix="edge", node_id="gateway-17", **kw)
    router.register(MODULE_LIST, modules.list)
    router.register(MODULE_DEPLOY, modules.deploy)
    router.register(MODULE_REMOVE, modules.remove)
    return router


def send(router: CommandRouter, topic: str, doc: Any, **kw: Any) -> tuple[Reply, dict[str, Any]]:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    reply = asyncio.run(router.handle(topic, payload, **kw))
    assert reply is not None
    return reply, json.loads(reply.payload)


@pytest.fixture
def modules() -> Modules:
    return Modules()


def test_a_command_is_answered_on_its_response_topic(modules: Modules) -> None:
    router = make_router(CommandsConfig(), modules)
    reply, body = send(router, f"{NODE}/module.list", {"id": "a1", "args": {}})
    assert reply.topic == f"{NODE}/module.list/response"
    assert reply.correlation is None
    assert body == {
        "id": "a1",
        "node": "gateway-17",
        "status": "ok",
        "data": [{"name": "scale", "version": "1.0.0"}],
        "error": None,
    }


def test_mqtt5_response_topic_and_correlation_are_used(modules: Modules) -> None:
    router = make_router(CommandsConfig(), modules)
    reply, body = send(
        router,
        "edge/fleet/cmd/module.deploy",
        {"id": 7, "args": {"reference": "registry.local/scale:1.0"}},
        response_topic="ops/replies/42",
        correlation=b"\x00corr",
    )
    assert (reply.topic, reply.correlation) == ("ops/replies/42", b"\x00corr")
    assert body["status"] == "ok"
    assert body["data"] == {"deployed": "registry.local/scale:1.0"}


def test_topics_that_are_not_commands_of_this_node_are_ignored(modules: Modules) -> None:
    router = make_router(CommandsConfig(), modules)
    for topic in (f"{NODE}/module.list/response", "edge/other-node/cmd/module.list", f"{NODE}/"):
        assert asyncio.run(router.handle(topic, b"{}")) is None
    assert router.subscriptions() == ["edge/fleet/cmd/+", "edge/gateway-17/cmd/+"]
    assert modules.calls == []


@pytest.mark.parametrize(
    ("topic", "payload", "code", "message"),
    [
        ("module.list", b"{not json", "malformed", "not JSON"),
        ("module.list", b"[1, 2]", "malformed", "expected a JSON object"),
        ("module.list", b'{"args": {}}', "malformed", "'id' must be"),
        ("module.list", b'{"id": true}', "malformed", "'id' must be"),
        ("module.list", b'{"id": "x", "verb": 1}', "malformed", "unknown field(s) verb"),
        ("module.list", b'{"id": "x", "args": []}', "malformed", "'args' must be a JSON object"),
        ("module.list", b'{"id": "x", "args": {"all": 1}}', "invalid_args", "all: unknown key"),
        (
            "module.deploy",
            b'{"id": "x", "args": {"reference": "r/s:1", "digest": "md5:1"}}',
            "invalid_args",
            "digest: String should match pattern",
        ),
        ("reboot", b'{"id": "x"}', "unknown_command", "unknown command 'reboot'; known: "),
        (
            "device.write",
            b'{"id": "x", "args": {"device": "p", "point": "sp", "value": 1}}',
            "unavailable",
            "'device.write' is not available",
        ),
        (
            "module.list",
            b'{"id": "x", "args": {}}' + b" " * 70000,
            "too_large",
            "the limit is 65536",
        ),
        # Under the size limit, yet json.loads would recurse 60,000 times.
        ("module.list", b"[" * 60_000, "malformed", "nested 60000 levels deep; the limit is 32"),
        ("module.list", b'{"id": "x", "args": {"a": ' * 40 + b"1" + b"}" * 80, "malformed", ""),
        ("module.list", b'{"id": "x", "args": {"a": NaN}}', "malformed", "NaN is not a JSON"),
        ("module.list", '{"id": "x"}'.encode("utf-16"), "ok", ""),
    ],
)
def test_bad_commands_get_an_error_and_change_nothing(
    modules: Modules, topic: str, payload: bytes, code: str, message: str
) -> None:
    router = make_router(CommandsConfig(), modules)
    reply, body = send(router, f"{NODE}/{topic}", payload)
    assert reply.topic == f"{NODE}/{topic}/response"
    if code == "ok":  # a control: JSON in UTF-16 is still JSON
        assert body["status"] == "ok"
        return
    assert body["status"] == "error"
    assert body["data"] is None
    assert body["error"]["code"] == code
    assert message in body["error"]["message"]
    assert modules.calls == []


def test_a_failing_handler_gives_its_reason(modules: Modules) -> None:
    router = make_router(CommandsConfig(), modules)
    _, body = send(router, f"{NODE}/module.remove", {"id": "r", "args": {"name": "ghost"}})
    assert body["error"] == {"code": "failed", "message": "no module named 'ghost'"}


def test_a_duplicate_id_is_answered_again_without_running_again(modules: Modules) -> None:
    router = make_router(CommandsConfig(), modules)
    request = {"id": "dup", "args": {"reference": "registry.local/scale:1.0"}}

    async def twice_at_once() -> list[Reply | None]:
        payload = json.dumps(request).encode()
        topic = f"{NODE}/module.deploy"
        return list(
            await asyncio.gather(router.handle(topic, payload), router.handle(topic, payload))
        )

    first, second = asyncio.run(twice_at_once())
    assert first is not None
    assert second is not None
    assert first.payload == second.payload
    assert len(modules.calls) == 1
    _, third = send(router, f"{NODE}/module.deploy", request)
    assert third["data"] == {"deployed": "registry.local/scale:1.0"}
    assert len(modules.calls) == 1


def test_the_response_cache_is_bounded(modules: Modules) -> None:
    router = make_router(CommandsConfig(dedupe_size=2), modules)
    for request_id in ("a", "b", "c", "a"):
        send(router, f"{NODE}/module.list", {"id": request_id})
    assert len(modules.calls) == 4, "'a' was evicted by 'c', so it runs again"


def test_the_rate_limit_refuses_then_recovers(modules: Modules) -> None:
    clock = Clock(0.0)
    router = make_router(
        CommandsConfig(), modules, bucket=TokenBucket(rate=2, burst=3, clock=clock)
    )
    codes = [send(router, f"{NODE}/module.list", {"id": i})[1]["status"] for i in range(5)]
    assert codes == ["ok", "ok", "ok", "error", "error"]
    clock.now = 0.5  # one token back
    assert send(router, f"{NODE}/module.list", {"id": 9})[1]["status"] == "ok"
    assert send(router, f"{NODE}/module.list", {"id": 10})[1]["error"]["code"] == "rate_limited"
    assert len(modules.calls) == 4


def test_commands_outside_the_allow_list_are_unauthorized(modules: Modules) -> None:
    router = make_router(CommandsConfig(allow=("module.list", "status")), modules)
    _, body = send(router, f"{NODE}/module.deploy", {"id": "d", "args": {"reference": "r/s:1"}})
    assert body["error"]["code"] == "unauthorized"
    assert modules.calls == []
    with pytest.raises(ConfigError, match="unknown command"):
        make_router(CommandsConfig(allow=("module.nuke",)), modules)


def test_log_level_and_status_are_built_in(modules: Modules) -> None:
    snapshot = make_snapshot()
    router = make_router(CommandsConfig(), modules)
    router.register(LOG_LEVEL, set_log_level)
    router.register(STATUS, status_handler(lambda: snapshot))
    logger = logging.getLogger("agent.test_ops_level")
    logger.setLevel(logging.WARNING)
    try:
        args = {"level": "debug", "logger": "agent.test_ops_level"}
        _, body = send(router, f"{NODE}/log.level", {"id": "l", "args": args})
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(logging.NOTSET)
    assert body["data"] == {
        "logger": "agent.test_ops_level",
        "level": "debug",
        "previous": "warning",
    }
    _, body = send(router, f"{NODE}/status", {"id": "s"})
    assert body["data"]["agent"]["node_id"] == "gateway-17"
    assert body["data"]["health"]["healthy"] is True


# --- signed commands -------------------------------------------------------------------


@pytest.fixture
def signing(tmp_path: Path) -> tuple[bytes, bytes, CommandsConfig, Clock]:
    trusted, pub = keypair(tmp_path, "ops")
    stranger, _ = keypair(tmp_path, "stranger")
    config = CommandsConfig(require_signature=True, trusted_keys=(pub,), max_skew_s=60)
    return trusted, stranger, config, Clock()


def signed_router(config: CommandsConfig, clock: Clock, modules: Modules) -> CommandRouter:
    verifier = CommandVerifier(
        load_public_keys(config.trusted_keys), config.max_skew_s, clock=clock
    )
    return make_router(config, modules, verifier=verifier)


def test_signed_commands_are_accepted_and_others_refused(
    signing: tuple[bytes, bytes, CommandsConfig, Clock], modules: Modules
) -> None:
    trusted, stranger, config, clock = signing
    router = signed_router(config, clock, modules)
    topic = f"{NODE}/module.list"

    def signed(key: bytes, request_id: str, **kw: Any) -> dict[str, Any]:
        return sign_request(
            key, kw.pop("for_topic", topic), {"id": request_id}, now=clock.now, **kw
        )

    assert send(router, topic, signed(trusted, "ok"))[1]["status"] == "ok"
    refusals = {
        "unsigned": {"id": "u"},
        "stranger": signed(stranger, "s"),
        "other topic": signed(trusted, "t", for_topic=f"{NODE}/module.remove"),
        "tampered": {**signed(trusted, "x"), "args": {"extra": 1}},
        "stale": sign_request(trusted, topic, {"id": "old"}, now=clock.now - 61),
        "bad base64": {**signed(trusted, "b"), "sig": "%%%"},
    }
    for why, request in refusals.items():
        body = send(router, topic, request)[1]
        assert body["error"]["code"] == "unauthorized", why
    assert len(modules.calls) == 1


def test_signed_requests_that_cannot_be_checked_are_refused_not_raised(
    signing: tuple[bytes, bytes, CommandsConfig, Clock], modules: Modules
) -> None:
    trusted, _, config, clock = signing
    topic = f"{NODE}/module.list"
    good = sign_request(trusted, topic, {"id": "g"}, now=clock.now)
    text = json.dumps(good)
    router = signed_router(config, clock, modules)
    cases = {
        # NaN has no canonical JSON form, so no signature can cover it.
        "NaN": (text.replace('"id": "g"', '"id": "g", "args": {"a": NaN}'), "malformed"),
        # Past float range: comparing it with the clock raised OverflowError.
        "huge ts": (text.replace(f'"ts": {good["ts"]}', '"ts": 1' + "0" * 400), "unauthorized"),
        "lone surrogate": (text.replace('"id": "g"', '"id": "\\ud800"'), "malformed"),
        "sig not ASCII": (text.replace(good["sig"], "\u00e9" * 8), "unauthorized"),
    }
    for why, (payload, code) in cases.items():
        body = send(router, topic, payload.encode())[1]
        assert body["error"]["code"] == code, why
    assert modules.calls == []


def test_replays_are_refused_but_redelivery_is_answered_from_the_cache(
    signing: tuple[bytes, bytes, CommandsConfig, Clock], modules: Modules
) -> None:
    trusted, _, config, clock = signing
    config = config.model_copy(update={"dedupe_size": 1})
    router = signed_router(config, clock, modules)
    topic = f"{NODE}/module.list"
    first = sign_request(trusted, topic, {"id": "one"}, now=clock.now, nonce="nonce-0001")
    assert send(router, topic, first)[1]["status"] == "ok"
    assert send(router, topic, first)[1]["status"] == "ok", "QoS 1 redelivery"
    assert len(modules.calls) == 1
    # Same nonce under a new id: a replay even though the id is new.
    reused = sign_request(trusted, topic, {"id": "two"}, now=clock.now, nonce="nonce-0001")
    assert send(router, topic, reused)[1]["error"]["code"] == "replayed"
    # Once the cache has forgotten "one", the nonce still refuses it...
    send(router, topic, sign_request(trusted, topic, {"id": "three"}, now=clock.now))
    assert send(router, topic, first)[1]["error"]["code"] == "replayed"
    # ...and once the timestamp has left the window, the clock does.
    clock.now += 61
    assert send(router, topic, first)[1]["error"]["code"] == "unauthorized"
    assert len(modules.calls) == 2


def test_signed_bytes_are_canonical_json_with_the_topic() -> None:
    request = {"sig": "x", "id": "é", "args": {"b": 1, "a": [1.5, None]}, "ts": 5, "nonce": "n"}
    assert (
        signed_bytes("edge/n/cmd/status", request)
        == (
            '{"args":{"a":[1.5,null],"b":1},"id":"é","nonce":"n","topic":"edge/n/cmd/status","ts":5}'
        ).encode()
    )


def test_trusted_keys_must_be_p256_public_keys(tmp_path: Path) -> None:
    pem, _ = keypair(tmp_path, "k")
    private = tmp_path / "private.pem"
    private.write_bytes(pem)
    with pytest.raises(ConfigError, match="is not a PEM public key"):
        load_public_keys([private])
    p384 = tmp_path / "p384.pub"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="not an ECDSA P-256 key"):
        load_public_keys([p384])
    with pytest.raises(ConfigError, match="cannot read"):
        load_public_keys([tmp_path / "missing.pub"])
