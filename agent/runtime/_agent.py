"""The running agent: one supervisor that owns every part, their order and their end.

Start: engine, embedded broker (if configured), outbox, MQTT link, supply, modules,
pipeline, devices, then the control socket, commands and metrics; READY to systemd.
Stop, in reverse: devices finish their poll, modules their queue, the link publishes
`offline` and leaves the outbox on disk, the engine closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import AgentConfig, ModuleConfig
from agent.control import ControlServer
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
from agent.metrics import MetricsServer
from agent.modbus import DevicePool
from agent.mqtt import EmbeddedBroker, Incoming, MqttLink
from agent.outbox import Outbox, OutboxLimits
from agent.runtime._commands import register_commands
from agent.runtime._host import ModuleHost
from agent.runtime._modules import (
    ModuleSpec,
    reactor_factory,
    spec_from_installed,
    spec_from_path,
)
from agent.runtime._pipeline import Pipeline
from agent.status import (
    AgentStatus,
    EngineStatus,
    ModelStatus,
    ModuleStatus,
    StatusSnapshot,
)
from agent.supply import InstalledModule, Supply
from agent.systemd import Notifier
from agent.wasm import Engine, ReactorModule, create_engine

log = logging.getLogger(__name__)

_STARTUP_DEPLOY_S = 30.0

_ROLLOUT_FAULTS = (ModuleTrap, ModuleTimeout, FuelExhausted, MemoryLimitExceeded, ModuleExit)
"""What counts against a new version's rollout budget: it crashed or hung. A module's
own error code or a refused emit is a clean refusal, counted in status only."""


class Agent:
    """One run of the agent with one config; `run(stop)` returns after a clean stop."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.reload: AgentConfig | None = None
        """Set by `config.reload`: run again with this config after the stop."""
        self._notifier = notifier or Notifier()
        self._started = time.time()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._engine: Engine | None = None
        self._link: MqttLink | None = None
        self._pipeline: Pipeline | None = None
        self._supply: Supply | None = None
        self._devices: DevicePool | None = None
        self._models: dict[str, ModelStatus] = {}
        self._failed: dict[str, tuple[ModuleSpec, str]] = {}
        self._unsigned: set[str] = set()
        """Local `path` modules: no supply version, so no rollout guard."""
        self._staged: dict[str, tuple[ModuleSpec, Callable[[], ReactorModule]]] = {}
        """By digest: a version's spec and factory, built once for smoke test and activation."""

    @property
    def topic_root(self) -> str:
        return f"{self.config.mqtt.topic_prefix}/{self.config.node.id}"

    @property
    def supply(self) -> Supply:
        assert self._supply is not None
        return self._supply

    @property
    def devices(self) -> DevicePool:
        assert self._devices is not None
        return self._devices

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None
        return self._pipeline

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` (or `request_stop()`), then stop in order."""
        config = self.config
        notify = self._notifier
        async with contextlib.AsyncExitStack() as stack:
            state = config.node.state_dir
            state.mkdir(parents=True, exist_ok=True)
            engine = self._engine = create_engine(
                config.engine.kind,
                cache_dir=state / "compiled",
                wasmedge_lib=config.engine.wasmedge_lib,
                aot=config.engine.aot,
            )
            stack.callback(engine.close)
            if config.mqtt.embedded:
                await stack.enter_async_context(
                    EmbeddedBroker(config.mqtt.host, config.mqtt.broker_port)
                )
            outbox = stack.enter_context(
                Outbox.open(
                    config.outbox_path,
                    OutboxLimits(
                        config.outbox.max_messages,
                        config.outbox.max_bytes,
                        config.outbox.max_age_s,
                    ),
                    synchronous=config.outbox.synchronous,
                )
            )
            engine_info = {"name": engine.name, "version": engine.version, "mode": engine.mode}
            self._link = await stack.enter_async_context(
                MqttLink(
                    config.mqtt,
                    outbox,
                    node_id=config.node.id,
                    engine=engine_info,
                    drain_rate=config.outbox.drain_rate,
                )
            )
            self._supply = await stack.enter_async_context(
                await Supply.create(
                    config,
                    smoke_test=self._smoke_test,
                    on_activate=self._activate,
                    on_remove=self._remove,
                )
            )
            self._pipeline = Pipeline(
                outbox,
                self.topic_root,
                qos_for=config.mqtt.qos_for,
                raw_readings=config.pipeline.raw_readings,
                queue_size=config.pipeline.queue_size,
                on_outcome=self._outcome,
            )
            await self._start_modules()
            await stack.enter_async_context(self._pipeline)
            stack.push_async_callback(self._cancel_tasks)
            self._devices = await stack.enter_async_context(
                DevicePool.create(config.devices, self._pipeline.on_reading)
            )
            await stack.enter_async_context(ControlServer(config.control.socket, self.snapshot))
            if config.metrics.listen is not None:
                await stack.enter_async_context(MetricsServer(config.metrics.listen, self.snapshot))
            await self._serve_commands()
            self._spawn(self.supply.run(), "supply retries")
            self._spawn(notify.keep_alive(), "systemd watchdog")
            notify.ready(f"{len(self._pipeline.status())} modules, {len(config.devices)} devices")
            log.info(
                "edge-agent %s running as %s on %s %s",
                __version__,
                config.node.id,
                engine.name,
                engine.version,
            )
            waits = [asyncio.ensure_future(self._stop.wait())]
            if stop is not None:
                waits.append(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            notify.stopping("finishing the current polls and module queues")
            log.info("stopping")

    # Modules

    async def _start_modules(self) -> None:
        """Signed modules the supply has active, then local files if allowed, then ask
        the supply for the `ref` modules of the config. Devices wait only for modules
        being installed for the first time, so first readings find them, and never
        longer than `_STARTUP_DEPLOY_S`; a module that is already active keeps running
        while its update is fetched (offline, the node runs what it has)."""
        config = self.config
        by_name = {m.name: m for m in config.modules}
        for state in self.supply.modules():
            installed = self.supply.active(state.name)
            if installed is not None:
                await self._start(spec_from_installed(config, installed, by_name.get(state.name)))
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
                task = self._spawn(self._deploy_configured(module), f"deploy {module.name}")
                if self.pipeline.host(module.name) is None:
                    first_installs.append(task)
        if first_installs:
            await asyncio.wait(first_installs, timeout=_STARTUP_DEPLOY_S)

    async def _deploy_configured(self, module: ModuleConfig) -> None:
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

    async def _start(
        self, spec: ModuleSpec, make: Callable[[], ReactorModule] | None = None
    ) -> None:
        try:
            if make is None:
                make = reactor_factory(self._engine_or_fail(), spec)
            host = await ModuleHost.start(
                spec.name, make, version=spec.version, digest=spec.digest
            )
        except AgentError as err:
            # Status shows it as failed (unhealthy); the other modules go on.
            log.warning("module %s %s not started: %s", spec.name, spec.version, err)
            self._failed[spec.name] = (spec, str(err))
            return
        self._failed.pop(spec.name, None)
        self.pipeline.add(host, spec.route)
        self._note_models(spec)

    def _prepared(
        self, installed: InstalledModule
    ) -> tuple[ModuleSpec, Callable[[], ReactorModule]]:
        """The version's spec and factory: its wasm and models are read and checked once
        for the smoke test, and the activation that follows reuses them."""
        staged = self._staged.get(installed.digest)
        if staged is None:
            node = next((m for m in self.config.modules if m.name == installed.name), None)
            spec = spec_from_installed(self.config, installed, node)
            staged = self._staged[installed.digest] = (
                spec,
                reactor_factory(self._engine_or_fail(), spec),
            )
        return staged

    async def _smoke_test(self, installed: InstalledModule) -> None:
        """The staged version starts and takes its manifest's test readings, off-loop."""
        _, make = self._prepared(installed)
        readings = installed.manifest.readings()

        def run() -> None:
            module = make()
            try:
                for reading in readings:
                    module.on_reading(reading)
            finally:
                module.close()

        try:
            await asyncio.to_thread(run)
        except BaseException:
            del self._staged[installed.digest]  # refused: it will not be activated
            raise

    async def _activate(self, installed: InstalledModule) -> None:
        spec, make = self._prepared(installed)
        del self._staged[installed.digest]
        host = self.pipeline.host(installed.name)
        if host is None:
            await self._start(spec, make)
            return
        await host.replace(make, version=spec.version, digest=spec.digest)
        self._note_models(spec)

    async def _remove(self, name: str) -> None:
        # Not awaited here: the call may come from that module's own queue (a rollback
        # after its fault), which cannot wait for itself to drain.
        self._spawn(self.pipeline.remove(name), f"remove {name}")

    async def _outcome(self, host: ModuleHost, err: ModuleError | None) -> None:
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

    # Commands

    async def _serve_commands(self) -> None:
        config = self.config
        if not config.commands.enabled:
            return
        router = register_commands(self)
        link = self._link
        assert link is not None

        async def on_message(request: Incoming) -> None:
            reply = await router.handle(
                request.topic,
                request.payload,
                response_topic=request.response_topic,
                correlation=request.correlation_data,
            )
            if reply is not None:
                try:
                    await link.reply(request, reply.payload, fallback_topic=reply.topic)
                except AgentError as err:
                    log.warning("command reply on %s lost: %s", reply.topic, err)
            if self.reload is not None:
                self.request_stop()

        for topic_filter in router.subscriptions():
            await link.subscribe(topic_filter, on_message)

    # Status

    def snapshot(self) -> StatusSnapshot:
        now = time.time()
        engine = self._engine_or_fail()
        mqtt = self._link.status() if self._link is not None else None
        devices = self._devices.status() if self._devices is not None else ()
        modules = self._pipeline.status() if self._pipeline is not None else []
        for spec, reason in self._failed.values():
            modules.append(
                ModuleStatus(
                    name=spec.name,
                    version=spec.version,
                    digest=spec.digest,
                    state="failed",
                    last_error=reason,
                )
            )
        return StatusSnapshot(
            agent=AgentStatus(
                version=__version__,
                node_id=self.config.node.id,
                pid=os.getpid(),
                started_at=self._started,
                uptime_s=max(0.0, now - self._started),
                engine=EngineStatus.of(engine),
            ),
            mqtt=mqtt,
            devices=devices,
            modules=tuple(modules),
            models=tuple(self._models.values()),
        )

    # Plumbing

    def _engine_or_fail(self) -> Engine:
        if self._engine is None:
            raise AgentError("the agent is not running")
        return self._engine

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
