"""Deploying module versions: pull, verify, stage, smoke-test, activate, roll back.

`Supply` owns the desired and actual state and the store; the runtime owns the
engines. The runtime is the `ModuleRunner`: it smoke-tests a staged version (starts it,
feeds it the manifest's test readings), activates it (swaps it in between two readings)
or stops a module, and feeds the rollout guard through `record` after each invocation.
A failure at any step before activation leaves the running version untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from agent.config import AgentConfig
from agent.errors import (
    AgentError,
    DowngradeRefused,
    RegistryUnavailable,
    SmokeTestFailed,
    SupplyError,
)
from agent.supply._access import Retry
from agent.supply._fetch import open_repository, pull, trusted_keys
from agent.supply._keys import PublicKey
from agent.supply._manifest import version_key
from agent.supply._oci import parse_reference
from agent.supply._rollout import RolloutGuard
from agent.supply._state import DesiredState, ModuleState, StateDB
from agent.supply._store import ContentStore, InstalledModule

log = logging.getLogger(__name__)

_SAVE_EVERY = 10
"""Invocations between writes of a rollout watch's counts (faults are written at once)."""


class ModuleRunner(Protocol):
    """What the supply needs of the runtime: it decides which version runs, this runs it."""

    async def smoke_test(self, installed: InstalledModule) -> None:
        """Start the staged version and feed it its test readings; raise on failure."""

    async def activate(self, installed: InstalledModule) -> None:
        """Swap the version in: a new one, or the previous one after a rollback."""

    async def stop(self, name: str) -> None:
        """Stop the module: removed, or rolled back with nothing to return to."""


@dataclass(frozen=True)
class RolledBack:
    """What a rollback did and why; `to_digest` None means the module was stopped."""

    name: str
    from_digest: str
    to_digest: str | None
    reason: str


class Supply(contextlib.AbstractAsyncContextManager["Supply"]):
    """Module versions on this node. Create with `await Supply.create(config, ...)`."""

    def __init__(
        self,
        config: AgentConfig,
        keys: list[PublicKey],
        runner: ModuleRunner,
    ) -> None:
        root = config.node.state_dir / "supply"
        self._config = config.supply
        self._keys = keys
        self._runner = runner
        self._store = ContentStore(root)
        self._state = StateDB(root / "state.sqlite")
        self._guard = RolloutGuard(
            config.supply.rollout.invocations, config.supply.rollout.max_faults
        )
        for name, watch in self._state.watches().items():
            module = self._state.module(name)
            if module is not None and module.current == watch.digest:
                self._guard.resume(name, watch)  # a restart mid-watch goes on watching
            else:
                self._state.drop_watch(name)
        self._lock = asyncio.Lock()
        self._pending = asyncio.Event()
        self._loaded: dict[str, InstalledModule] = {}

    @classmethod
    async def create(cls, config: AgentConfig, runner: ModuleRunner) -> Supply:
        """Open the state (resuming what a previous run left) and load the trusted keys."""
        return cls(config, trusted_keys(config.supply.trusted_keys), runner)

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._state.close()

    def modules(self) -> list[ModuleState]:
        return self._state.modules()

    def desired(self) -> list[DesiredState]:
        return self._state.desired()

    def active(self, name: str) -> InstalledModule | None:
        state = self._state.module(name)
        return self._load(state.current) if state else None

    def _load(self, digest: str) -> InstalledModule:
        if digest not in self._loaded:
            self._loaded[digest] = self._store.load(digest)
        return self._loaded[digest]

    async def deploy(
        self, ref: str, *, digest: str | None = None, allow_downgrade: bool = False
    ) -> InstalledModule:
        """Pull, verify, check policy, store, smoke-test, then activate `ref`.

        Raises on refusal (signature, digest, policy, downgrade, smoke test): the request
        is marked failed and the running version stays. `RegistryUnavailable` leaves it
        pending, for `run` to retry.
        """
        key = _request_key(ref, digest)
        async with self._lock:
            self._state.want(key, allow_downgrade)
            installed, changed = await self._try(key, allow_downgrade)
        if changed:
            await self._runner.activate(installed)
        return installed

    async def cancel(self, ref: str, digest: str | None, reason: str) -> None:
        """Drop a deploy of `ref` left pending (its registry unreachable), so that `run`
        does not install it later: what asked for it wants something else now. Waits for
        a try in progress, so that try cannot leave it pending again."""
        async with self._lock:
            self._state.cancel(_request_key(ref, digest), reason)

    async def _retry(self, wanted: DesiredState) -> None:
        async with self._lock:
            if not self._state.is_pending(wanted.ref):
                return  # cancelled or done since `run` listed it
            installed, changed = await self._try(wanted.ref, wanted.allow_downgrade)
        if changed:
            await self._runner.activate(installed)

    async def _try(self, key: str, allow_downgrade: bool) -> tuple[InstalledModule, bool]:
        """One try at a request, under the lock: its outcome settled in the state DB."""
        try:
            installed, changed = await self._install(key, allow_downgrade)
        except RegistryUnavailable as err:
            self._state.settle(key, "pending", str(err))
            self._pending.set()
            raise
        except AgentError as err:
            self._state.settle(key, "failed", str(err))
            raise
        finally:
            self._collect()
        self._state.settle(key, "done")
        return installed, changed

    async def _install(self, key: str, allow_downgrade: bool) -> tuple[InstalledModule, bool]:
        ref = parse_reference(key)
        repo = open_repository(ref, self._config)
        try:
            installed = await pull(repo, ref, self._keys, self._store, self._config.policy)
        finally:
            await repo.aclose()
        current = self._state.module(installed.name)
        if current is not None and current.current == installed.digest:
            return installed, False
        if current is not None and not allow_downgrade:
            running = self._load(current.current)
            if version_key(installed.version) <= version_key(running.version):
                raise DowngradeRefused(
                    f"module {installed.name!r}: {installed.version} is not newer than the "
                    f"running {running.version}; deploy with allow_downgrade to install it"
                )
        try:
            await self._runner.smoke_test(installed)
        except Exception as err:
            raise SmokeTestFailed(
                f"module {installed.name!r} {installed.version} ({installed.digest}) failed its "
                f"smoke test: {err}"
            ) from err
        previous = current.current if current else None
        self._state.activate(installed.name, installed.digest, previous, "active", "")
        self._guard.start(installed.name, installed.digest)
        self._save_watch(installed.name)
        log.info("module %s %s (%s) activated", installed.name, installed.version, installed.digest)
        return installed, True

    def _collect(self) -> None:
        keep = [d for m in self._state.modules() for d in (m.current, m.previous) if d]
        self._store.collect(keep)
        self._loaded = {d: m for d, m in self._loaded.items() if d in keep}

    async def rollback(self, name: str, reason: str) -> RolledBack:
        """Go back to the previous version of `name`, or stop it when there is none."""
        async with self._lock:
            state = self._state.module(name)
            if state is None:
                raise SupplyError(f"module {name!r} is not installed")
            self._stop_watch(name)
            previous = self._load(state.previous) if state.previous else None
            if previous is None:
                self._state.remove(name)
            else:
                self._state.activate(name, previous.digest, None, "rolled-back", reason)
            self._collect()
        log.warning("module %s: rolled back from %s: %s", name, state.current, reason)
        if previous is None:
            await self._runner.stop(name)
        else:
            await self._runner.activate(previous)
        return RolledBack(name, state.current, state.previous, reason)

    async def remove(self, name: str) -> None:
        async with self._lock:
            if self._state.module(name) is None:
                raise SupplyError(f"module {name!r} is not installed")
            self._stop_watch(name)
            self._state.remove(name)
            self._collect()
        await self._runner.stop(name)

    async def record(self, name: str, digest: str, ok: bool, cause: str = "") -> RolledBack | None:
        """Feed the rollout guard one invocation's outcome; rolls back when over budget.

        The counts go to disk at every fault and every `_SAVE_EVERY` invocations: a
        restart may watch a few calls longer, never forget a fault."""
        watch = self._guard.watch(name)
        reason = self._guard.record(name, digest, ok, cause)
        if watch is not None and watch.digest == digest:
            if self._guard.watch(name) is None:
                self._state.drop_watch(name)
            elif not ok or watch.invocations % _SAVE_EVERY == 0:
                self._state.save_watch(name, watch)
        if reason is None:
            return None
        return await self.rollback(name, f"automatic rollback: {reason}")

    def _save_watch(self, name: str) -> None:
        watch = self._guard.watch(name)
        if watch is not None:
            self._state.save_watch(name, watch)

    def _stop_watch(self, name: str) -> None:
        self._guard.stop(name)
        self._state.drop_watch(name)

    async def run(self) -> None:
        """Retry pending deploys with backoff until cancelled. The data path never waits
        on this: the runtime keeps serving what is active meanwhile."""
        retry = Retry(
            self._config.retry_attempts, self._config.retry_initial_s, self._config.retry_max_s
        )
        attempt = 0
        self._pending.set()
        while True:
            await self._pending.wait()
            self._pending.clear()
            for wanted in self._state.desired("pending"):
                try:
                    await self._retry(wanted)
                    attempt = 0
                except RegistryUnavailable as err:
                    log.info("deploy %s: registry unreachable, will retry: %s", wanted.ref, err)
                except AgentError as err:
                    log.warning("deploy %s refused: %s", wanted.ref, err)
            if self._state.desired("pending"):
                await asyncio.sleep(retry.delay(attempt) + retry.initial_s)
                attempt += 1
                self._pending.set()


def _request_key(ref: str, digest: str | None) -> str:
    """A deploy request as the state DB keeps it: the reference, with the pin if any."""
    parsed = parse_reference(ref)
    return str(parsed.with_digest(digest) if digest else parsed)
