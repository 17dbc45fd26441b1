"""Automatic rollback of a version that traps, on the real engine, and a restart that
resumes the same state; plus the legacy `.sig` format, key rotation and a layout source."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import errors
from agent.supply import RolledBack

from . import conftest as fx
from .conftest import KeyPair, Registry, Runtime


def test_trapping_version_rolls_back_and_restart_resumes(
    registry: Registry, keys: KeyPair, tmp_path: Path, runtime: Runtime
) -> None:
    config = fx.agent_config(
        tmp_path, registry, [keys.public], rollout={"invocations": 10, "max_faults": 1}
    )
    base = f"{registry.host}/modules/faulty"

    async def go() -> None:
        good = await fx.publish(config, fx.module_dir(tmp_path, "1.0.0"), f"{base}:1.0.0", keys)
        bad = await fx.publish(
            config,
            fx.module_dir(tmp_path, "1.1.0", "trap", test_readings=False),
            f"{base}:1.1.0",
            keys,
        )
        async with await fx.open_supply(config, runtime) as supply:
            await supply.deploy(f"{base}:1.0.0")
            await supply.deploy(f"{base}:1.1.0")
            assert runtime.running["faulty"][0] == bad
            assert await runtime.feed(supply, "faulty", 0) is None  # within budget
            verdict = await runtime.feed(supply, "faulty", 1)
            assert isinstance(verdict, RolledBack)
            assert (verdict.from_digest, verdict.to_digest) == (bad, good)
            assert "2 faults in its first 2 invocations" in verdict.reason
            assert "unreachable" in verdict.reason or "trap" in verdict.reason
            assert runtime.running["faulty"][0] == good
            assert await runtime.feed(supply, "faulty", 2) is None
        async with await fx.open_supply(config, runtime) as restarted:
            (state,) = restarted.modules()
            assert (state.current, state.previous, state.status) == (good, None, "rolled-back")
            assert "automatic rollback" in state.reason
            active = restarted.active("faulty")
            assert active is not None
            assert active.version == "1.0.0"

    asyncio.run(go())


def test_a_restart_mid_watch_goes_on_watching(
    registry: Registry, keys: KeyPair, tmp_path: Path, runtime: Runtime
) -> None:
    """One fault before the restart, one after: over the budget of 1, so rolled back;
    a node that forgot the first fault would keep the trapping version."""
    config = fx.agent_config(
        tmp_path, registry, [keys.public], rollout={"invocations": 10, "max_faults": 1}
    )
    base = f"{registry.host}/modules/faulty"

    async def go() -> RolledBack | None:
        await fx.publish(config, fx.module_dir(tmp_path, "1.0.0"), f"{base}:1.0.0", keys)
        trap = fx.module_dir(tmp_path, "1.1.0", "trap", test_readings=False)
        await fx.publish(config, trap, f"{base}:1.1.0", keys)
        async with await fx.open_supply(config, runtime) as supply:
            await supply.deploy(f"{base}:1.0.0")
            await supply.deploy(f"{base}:1.1.0")
            assert await runtime.feed(supply, "faulty", 0) is None  # within budget
        async with await fx.open_supply(config, runtime) as restarted:
            return await runtime.feed(restarted, "faulty", 1)  # type: ignore[no-any-return]

    verdict = asyncio.run(go())
    assert isinstance(verdict, RolledBack)
    assert "2 faults in its first 2 invocations" in verdict.reason


def test_legacy_signature_and_rotated_keys(
    registry: Registry, keys: KeyPair, tmp_path: Path, runtime: Runtime
) -> None:
    new = fx.make_keys(tmp_path / "new")
    config = fx.agent_config(tmp_path, registry, [keys.public, new.public])
    ref = f"{registry.host}/modules/faulty:2.0.0"

    async def go() -> None:
        digest = await fx.publish(config, fx.module_dir(tmp_path, "2.0.0"), ref, new, legacy=True)
        async with await fx.open_supply(config, runtime) as supply:
            assert (await supply.deploy(ref)).digest == digest

    asyncio.run(go())


def test_local_layout_source_is_verified_the_same_way(
    keys: KeyPair, tmp_path: Path, runtime: Runtime
) -> None:
    config = fx.agent_config(tmp_path, None, [keys.public])
    layout = tmp_path / "sideload"

    async def go() -> None:
        digest = await fx.publish(
            config, fx.module_dir(tmp_path, "1.0.0"), f"oci:{layout}:1.0.0", keys
        )
        await fx.publish(config, fx.module_dir(tmp_path, "1.0.1"), f"oci:{layout}:1.0.1", None)
        async with await fx.open_supply(config, runtime) as supply:
            assert (await supply.deploy(f"oci:{layout}:1.0.0")).digest == digest
            with pytest.raises(errors.SignatureError, match="is not signed"):
                await supply.deploy(f"oci:{layout}:1.0.1")

    asyncio.run(go())
