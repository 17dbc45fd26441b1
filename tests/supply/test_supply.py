"""Supply end to end against a real docker-registry and the real wasmtime engine:
round trips, every rejection case, automatic rollback, and a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent import errors
from agent.config import AgentConfig
from agent.supply import open_repository
from agent.supply import parse_reference as ref_of
from agent.supply._oci import EMPTY_JSON, OCI_EMPTY, Descriptor, Manifest
from agent.supply._referrers import attach_referrer, list_referrers
from agent.supply._repo import check_manifest, read_blob
from agent.supply._sign import BUNDLE_MEDIA_TYPE

from .conftest import (
    KeyPair,
    Registry,
    Runtime,
    agent_config,
    make_keys,
    module_dir,
    open_supply,
    publish,
)


def test_deploy_from_registry_behind_tls_and_htpasswd(
    secure_registry: Registry, keys: KeyPair, tmp_path: Path, runtime: Runtime
) -> None:
    config = agent_config(tmp_path, secure_registry, [keys.public])
    ref = f"{secure_registry.host}/modules/faulty:1.0.0"

    async def go() -> None:
        digest = await publish(config, module_dir(tmp_path, "1.0.0"), ref, keys)
        async with await open_supply(config, runtime) as supply:
            installed = await supply.deploy(ref)
            assert installed.digest == digest
            assert supply.active("faulty") == installed
        assert runtime.running["faulty"][0] == digest
        assert installed.wasm_path.read_bytes().startswith(b"\0asm")

    asyncio.run(go())


def test_wrong_registry_password_is_refused(
    secure_registry: Registry, keys: KeyPair, tmp_path: Path
) -> None:
    assert secure_registry.password_file is not None
    secure_registry.password_file.write_text("wrong")
    config = agent_config(tmp_path, secure_registry, [keys.public])
    with pytest.raises(errors.RegistryError, match="HTTP 401"):
        asyncio.run(
            publish(
                config, module_dir(tmp_path, "1.0.0"), f"{secure_registry.host}/m/faulty:1", keys
            )
        )


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


async def _unsigned(config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair) -> None:
    await publish(config, module_dir(tmp, "1.1.0"), ref, None)


async def _untrusted(config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair) -> None:
    await publish(config, module_dir(tmp, "1.1.0"), ref, make_keys(tmp / "other"))


async def _layer_tampered(
    config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair
) -> str:
    await publish(config, module_dir(tmp, "1.1.0"), ref, key)
    wasm = await _wasm_layer(config, ref)
    _tamper(reg.blob(wasm))
    return wasm


async def _truncated(config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair) -> str:
    await publish(config, module_dir(tmp, "1.1.0"), ref, key)
    wasm = await _wasm_layer(config, ref)
    path = reg.blob(wasm)
    path.write_bytes(path.read_bytes()[:1000])
    return wasm


async def _swapped(config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair) -> None:
    await publish(config, module_dir(tmp, "1.1.0"), ref, key)
    other = await publish(config, module_dir(tmp, "1.1.1"), ref.replace(":1.1.0", ":other"), None)
    tag = ref_of(ref)
    reg.tag_link(tag.repository, tag.tag or "").write_text(other)


async def _other_digest(
    config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair
) -> None:
    """A valid bundle for a sibling artifact, attached as a referrer of this one."""
    signed = await publish(config, module_dir(tmp, "1.1.1"), ref.replace(":1.1.0", ":sib"), key)
    target_digest = await publish(config, module_dir(tmp, "1.1.0"), ref, None)
    repo = open_repository(ref_of(ref), config.supply)
    try:
        (referrer,) = await list_referrers(repo, signed, BUNDLE_MEDIA_TYPE)
        bundle_layer = Manifest.parse((await repo.get_manifest(referrer.digest)).data, "r").layers[
            0
        ]
        target = check_manifest(await repo.get_manifest(target_digest), target_digest)
        subject = Descriptor(target.media_type, target.digest, len(target.data))
        assert await read_blob(repo, bundle_layer)
        empty = Descriptor.of(OCI_EMPTY, EMPTY_JSON)
        await attach_referrer(repo, Manifest(empty, (bundle_layer,), subject, BUNDLE_MEDIA_TYPE))
    finally:
        await repo.aclose()


async def _forbidden(config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair) -> None:
    await publish(config, module_dir(tmp, "1.1.0", extra='wasi_env = ["SECRET"]'), ref, key)


async def _downgrade(config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair) -> None:
    await publish(config, module_dir(tmp, "0.9.0"), ref, key)


async def _smoke_fails(
    config: AgentConfig, reg: Registry, tmp: Path, ref: str, key: KeyPair
) -> None:
    await publish(config, module_dir(tmp, "1.1.0", "trap"), ref, key)


async def _wasm_layer(config: AgentConfig, ref: str) -> str:
    repo = open_repository(ref_of(ref), config.supply)
    try:
        manifest = Manifest.parse((await repo.get_manifest(ref_of(ref).reference)).data, ref)
    finally:
        await repo.aclose()
    return manifest.layer("application/wasm").digest


CASES = [
    pytest.param(_unsigned, errors.SignatureError, "is not signed", id="unsigned"),
    pytest.param(
        _untrusted, errors.SignatureError, "not signed by any trusted key", id="untrusted-key"
    ),
    pytest.param(_layer_tampered, errors.DigestMismatch, "hashes to", id="layer-tampered"),
    pytest.param(_swapped, errors.SignatureError, "is not signed", id="manifest-swapped"),
    pytest.param(_other_digest, errors.SignatureError, "the signature is for", id="other-digest"),
    pytest.param(_truncated, errors.DigestMismatch, "truncated", id="truncated-blob"),
    pytest.param(_forbidden, errors.PolicyViolation, "wasi_env 'SECRET'", id="policy"),
    pytest.param(
        _downgrade,
        errors.DowngradeRefused,
        "0.9.0 is not newer than the running 1.0.0",
        id="downgrade",
    ),
    pytest.param(_smoke_fails, errors.SmokeTestFailed, "failed its smoke test", id="smoke-test"),
]


@pytest.mark.parametrize(("attack", "error", "message"), CASES)
def test_rejected_and_running_version_untouched(
    attack: Any,
    error: type[Exception],
    message: str,
    registry: Registry,
    keys: KeyPair,
    tmp_path: Path,
    runtime: Runtime,
) -> None:
    config = agent_config(tmp_path, registry, [keys.public])
    base = f"{registry.host}/modules/faulty"

    async def go() -> None:
        good = await publish(config, module_dir(tmp_path, "1.0.0"), f"{base}:1.0.0", keys)
        async with await open_supply(config, runtime) as supply:
            await supply.deploy(f"{base}:1.0.0")
            executed = list(runtime.executed)
            named = await attack(config, registry, tmp_path, f"{base}:1.1.0", keys)
            ref = f"{base}:1.1.0"
            with pytest.raises(error, match=message) as caught:
                await supply.deploy(ref)
            if named:
                assert named in str(caught.value)
            if attack is not _smoke_fails:
                assert runtime.executed == executed, "nothing of the rejected version ran"
            active = supply.active("faulty")
            assert active is not None
            assert active.digest == good
            assert runtime.running["faulty"][0] == good
            (desired,) = [d for d in supply.desired() if d.ref == ref]
            assert desired.status == "failed"
            assert message.split("'", maxsplit=1)[0] in desired.reason
            if attack is _downgrade:
                allowed = await supply.deploy(ref, allow_downgrade=True)
                assert allowed.version == "0.9.0"
                assert runtime.running["faulty"][0] == allowed.digest

    asyncio.run(go())
