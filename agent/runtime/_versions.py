"""Which version of each module runs: the supply's decisions carried out on the pipeline.

The supply decides (verified, newer, within its rollout budget); `ModuleVersions` runs
what it decided: it builds a version's spec once, smoke-tests it off the event loop,
swaps it in between two readings or stops it, and reports every invocation's outcome
back to the rollout guard. It owns both halves, so a deploy or a rollback is one
conversation between two objects rather than callbacks through the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from agent.config import AgentConfig, ModuleConfig
from agent.errors import (
    AgentError,
    ConfigError,
    FuelExhausted,
    MemoryLimitExceeded,
    ModuleError,
    ModuleExit,
    ModuleTimeout,
    ModuleTrap,
)
from agent.journal import Journal
from agent.runtime._host import ModuleHost
from agent.runtime._modules import ModuleSpec, reactor_factory, spec_from_installed, spec_from_path
from agent.runtime._pipeline import Pipeline, Sink
from agent.runtime._tasks import Background
from agent.status import ModelStatus, ModuleStatus
from agent.supply import InstalledModule, Supply
from agent.wasm import Engine, ReactorModule

log = logging.getLogger(__name__)

STARTUP_DEPLOY_S = 30.0
"""Longest wait, at start, for modules installed for the first time."""

_ROLLOUT_FAULTS = (ModuleTrap, ModuleTimeout, FuelExhausted, MemoryLimitExceeded, ModuleExit)
"""What counts against a new version's rollout budget: it crashed or hung. A module's
own error code or a refused emit is a clean refusal, counted in status only."""

Factory = Callable[[], ReactorModule]


class ModuleVersions:
    """The node's modules: the supply's versions and the pipeline that runs them.

    Enter it (`async with`) to open the supply and start every module; the supply
    calls back through `smoke_test`, `activate` and `stop` (its `ModuleRunner`).
    """

    def __init__(
        self,
        config: AgentConfig,
        engine: Engine,
        sink: Sink,
        journal: Journal,
        *,
        configs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._config = config
        self._configs = dict(configs or {})
        """Module configs from desired state: they replace the config file's table."""
        self._engine = engine
        self.pipeline = Pipeline(
            sink,
            journal,
            f"{config.mqtt.topic_prefix}/{config.node.id}",
            qos_for=config.mqtt.qos_for,
            raw_readings=config.pipeline.raw_readings,
            queue_size=config.pipeline.queue_size,
            on_outcome=self._record,
        )
        self._supply: Supply | None = None
        self._failed: dict[str, tuple[ModuleSpec, str]] = {}
        self._unsigned: set[str] = set()
        """Local `path` modules: no supply version, so no rollout guard."""
        self._models: dict[str, ModelStatus] = {}
        self._prepared: dict[str, tuple[ModuleSpec, Factory]] = {}
        """By digest: a version's spec and factory, built once for smoke test and activation."""
        self._background = Background()
        self._stack = contextlib.AsyncExitStack()

    @property
    def supply(self) -> Supply:
        if self._supply is None:
            raise AgentError("the module supply is not open")
        return self._supply

    async def __aenter__(self) -> ModuleVersions:
        async with contextlib.AsyncExitStack() as stack:
            self._supply = await stack.enter_async_context(await Supply.create(self._config, self))
            await self._start_all()
            await stack.enter_async_context(self.pipeline)
            stack.push_async_callback(self._background.cancel)
            self._background.spawn(self._supply.run(), "supply retries")
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Cancel deploys in progress, let every module finish its queue, close the supply."""
        await self._stack.aclose()

    def status(self) -> list[ModuleStatus]:
        """Running modules, then those that failed to start (unhealthy)."""
        failed = [
            ModuleStatus(
                name=spec.name,
                version=spec.version,
                digest=spec.digest,
                state="failed",
                last_error=reason,
            )
            for spec, reason in self._failed.values()
        ]
        return [*self.pipeline.status(), *failed]

    def models(self) -> tuple[ModelStatus, ...]:
        return tuple(self._models.values())

    def in_config_file(self, name: str) -> bool:
        """The config file's `[[modules]]` names `name` (a `path`, or a `ref` deployed
        again at every start): the file, not desired state, decides whether it runs."""
        return any(m.name == name for m in self._config.modules)

    def configured(self, name: str) -> dict[str, Any] | None:
        """The config desired state gave `name`, if any."""
        return self._configs.get(name)

    async def set_config(
        self, name: str, settings: dict[str, Any] | None, *, restart: bool = True
    ) -> None:
        """Desired state's `config` for `name` (None: the config file's table again), used
        from the next start of the module; `restart` starts it again now if it runs."""
        if self._configs.get(name) == settings:
            return
        if settings is None:
            del self._configs[name]
        else:
            self._configs[name] = settings
        if restart:
            await self.restart(name)

    async def restart(self, name: str) -> None:
        """Start the running version of `name` again (with its current config), between
        two readings; nothing when it does not run."""
        installed = self.supply.active(name)
        if installed is not None and self.pipeline.host(name) is not None:
            self._prepared.pop(installed.digest, None)
            await self.activate(installed)

    # The supply's ModuleRunner

    async def smoke_test(self, installed: InstalledModule) -> None:
        """The staged version starts and takes its manifest's test readings, off-loop."""
        _, factory = self._prepare(installed)
        readings = installed.manifest.readings()

        def run() -> None:
            module = factory()
            try:
                for reading in readings:
                    module.on_reading(reading)
            finally:
                module.close()

        try:
            await asyncio.to_thread(run)
        except BaseException:
            del self._prepared[installed.digest]  # refused: it will not be activated
            raise

    async def activate(self, installed: InstalledModule) -> None:
        spec, factory = self._prepare(installed)
        del self._prepared[installed.digest]
        host = self.pipeline.host(installed.name)
        if host is None:
            await self._start(spec, factory)
            return
        await host.replace(factory, version=spec.version, digest=spec.digest)
        self._note_models(spec)

    async def stop(self, name: str) -> None:
        """Stop the module for good: its place in the journal goes with it."""
        # Not awaited here: the call may come from that module's own queue (a rollback
        # after its fault), which cannot wait for itself to drain.
        self._background.spawn(self.pipeline.remove(name), f"remove {name}")

    # Start

    async def _start_all(self) -> None:
        """Signed modules the supply has active, then local files if allowed, then ask
        the supply for the `ref` modules of the config. Devices wait only for modules
        being installed for the first time, so first readings find them, and never
        longer than `STARTUP_DEPLOY_S`; a module that is already active keeps running
        while its update is fetched (offline, the node runs what it has)."""
        config = self._config
        for state in self.supply.modules():
            installed = self.supply.active(state.name)
            if installed is not None:
                await self._start(spec_from_installed(config, installed, self._node(state.name)))
        for module in config.modules:
            if module.path is None:
                continue
            if not config.supply.allow_unsigned_paths:
                raise ConfigError(
                    f"module {module.name!r} is a local file that no trusted key signed; "
                    "give it as `ref` (a signed package), or set "
                    "supply.allow_unsigned_paths = true for development"
                )
            self._unsigned.add(module.name)
            await self._start(spec_from_path(config, module))
        first_installs = []
        for module in config.modules:
            if module.ref is not None:
                task = self._background.spawn(self._deploy(module), f"deploy {module.name}")
                if self.pipeline.host(module.name) is None:
                    first_installs.append(task)
        if first_installs:
            await asyncio.wait(first_installs, timeout=STARTUP_DEPLOY_S)

    async def _deploy(self, module: ModuleConfig) -> None:
        assert module.ref is not None
        try:
            installed = await self.supply.deploy(module.ref)
        except AgentError as err:
            log.warning("module %s: %s", module.name, err)
            return
        if installed.name != module.name:
            log.warning(
                "module %s: %s is a package of module %r; name the entry after it",
                module.name,
                module.ref,
                installed.name,
            )

    async def _start(self, spec: ModuleSpec, factory: Factory | None = None) -> None:
        try:
            if factory is None:
                factory = reactor_factory(self._engine, spec)
            host = await ModuleHost.start(
                spec.name, factory, version=spec.version, digest=spec.digest
            )
        except AgentError as err:
            # Status shows it as failed (unhealthy); the other modules go on.
            log.warning("module %s %s not started: %s", spec.name, spec.version, err)
            self._failed[spec.name] = (spec, str(err))
            return
        self._failed.pop(spec.name, None)
        self.pipeline.add(host, spec.route)
        self._note_models(spec)

    def _prepare(self, installed: InstalledModule) -> tuple[ModuleSpec, Factory]:
        """The version's spec and factory: its wasm and models are read and checked once
        for the smoke test, and the activation that follows reuses them."""
        prepared = self._prepared.get(installed.digest)
        if prepared is None:
            spec = spec_from_installed(self._config, installed, self._node(installed.name))
            prepared = self._prepared[installed.digest] = (
                spec,
                reactor_factory(self._engine, spec),
            )
        return prepared

    def _node(self, name: str) -> ModuleConfig | None:
        """The config file's entry for `name`, with desired state's config if any."""
        node = next((m for m in self._config.modules if m.name == name), None)
        settings = self._configs.get(name)
        if settings is None:
            return node
        if node is None:
            return ModuleConfig.model_construct(name=name, config=settings)
        return node.model_copy(update={"config": settings})

    async def _record(self, host: ModuleHost, err: ModuleError | None) -> None:
        if self._supply is None or host.name in self._unsigned:
            return
        fault = isinstance(err, _ROLLOUT_FAULTS)
        await self._supply.record(host.name, host.digest, not fault, str(err) if fault else "")

    def _note_models(self, spec: ModuleSpec) -> None:
        for name, path in spec.models.items():
            data = path.read_bytes()
            self._models[f"{spec.name}/{name}"] = ModelStatus(
                name=f"{spec.name}/{name}",
                size=len(data),
                digest="sha256:" + hashlib.sha256(data).hexdigest(),
            )
