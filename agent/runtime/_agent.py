"""The running agent: one supervisor that owns every part, their order and their end.

Start: engine, embedded broker (if configured), outbox, MQTT link, modules (the supply
and the pipeline), devices, then the control socket, metrics, commands and the fleet
(desired state, the retained report); READY to systemd. Stop, in reverse: devices
finish their poll, modules their queue, the link publishes `offline` and leaves the
outbox on disk, the engine closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.config import AgentConfig
from agent.control import ControlServer
from agent.errors import AgentError
from agent.journal import Journal, JournalLimits
from agent.metrics import MetricsServer
from agent.modbus import OnReading
from agent.mqtt import EmbeddedBroker, Incoming, MqttLink
from agent.outbox import Outbox, OutboxLimits
from agent.runtime._commands import register_commands
from agent.runtime._desired import DesiredFollower
from agent.runtime._devices import Devices
from agent.runtime._report import Reporter
from agent.runtime._tasks import Background
from agent.runtime._versions import ModuleVersions
from agent.status import AgentStatus, EngineStatus, StatusSnapshot
from agent.systemd import Notifier
from agent.wasm import Engine, create_engine

if TYPE_CHECKING:
    from agent.sparkplug import SparkplugNode

log = logging.getLogger(__name__)


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
        self._notifier = notifier or Notifier()
        self._started = time.time()
        self._stop = asyncio.Event()
        self._next: AgentConfig | None = None
        """The config to run next, once this run has stopped (`config.reload`, SIGHUP)."""
        self._background = Background()
        self._engine: Engine | None = None
        self._link: MqttLink | None = None
        self._journal: Journal | None = None
        self._versions: ModuleVersions | None = None
        self._devices: Devices | None = None
        self._sparkplug: SparkplugNode | None = None
        self._follower: DesiredFollower | None = None

    @property
    def versions(self) -> ModuleVersions:
        if self._versions is None:
            raise AgentError("the agent is not running")
        return self._versions

    def request_stop(self) -> None:
        self._stop.set()

    def restart(self, config: AgentConfig) -> None:
        """Stop, and have `run` return `config` to run next."""
        self._next = config
        self.request_stop()

    async def run(self, stop: asyncio.Event | None = None) -> AgentConfig | None:
        """Run until `stop` (or `request_stop()`), then stop in order.

        Returns the config to run next when a reload asked for a restart, else None.
        """
        async with contextlib.AsyncExitStack() as stack:
            await self._start_engine(stack)
            outbox = await self._open_outbox(stack)
            journal = self._open_journal(stack)
            link = await self._connect(stack, outbox)
            await self._start_sparkplug(stack, journal)
            await self._start_modules(stack, outbox, journal)
            devices = await self._start_devices(stack, journal)
            await self._serve_status(stack)
            await self._serve_commands(link, devices)
            await self._join_fleet(link)
            self._announce(stack)
            await self._wait_for_stop(stop)
            self._notifier.stopping("finishing the current polls and module queues")
            log.info("stopping")
        return self._next

    # Start steps, in order

    async def _start_engine(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        state = config.node.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self._engine = create_engine(
            config.engine.kind,
            cache_dir=state / "compiled",
            wasmedge_lib=config.engine.wasmedge_lib,
            aot=config.engine.aot,
        )
        stack.callback(self._engine.close)

    async def _open_outbox(self, stack: contextlib.AsyncExitStack) -> Outbox:
        config = self.config
        if config.mqtt.embedded:
            await stack.enter_async_context(
                EmbeddedBroker(config.mqtt.host, config.mqtt.broker_port)
            )
        limits = OutboxLimits(
            config.outbox.max_messages, config.outbox.max_bytes, config.outbox.max_age_s
        )
        return stack.enter_context(
            Outbox.open(config.outbox_path, limits, synchronous=config.outbox.synchronous)
        )

    def _open_journal(self, stack: contextlib.AsyncExitStack) -> Journal:
        limits = JournalLimits(self.config.journal.max_readings, self.config.journal.max_bytes)
        self._journal = stack.enter_context(
            Journal.open(
                self.config.journal_path, limits, synchronous=self.config.outbox.synchronous
            )
        )
        return self._journal

    async def _connect(self, stack: contextlib.AsyncExitStack, outbox: Outbox) -> MqttLink:
        engine = self._engine_or_fail()
        link = self._link = await stack.enter_async_context(
            MqttLink(
                self.config.mqtt,
                outbox,
                node_id=self.config.node.id,
                engine={"name": engine.name, "version": engine.version, "mode": engine.mode},
                drain_rate=self.config.outbox.drain_rate,
            )
        )
        return link

    async def _start_sparkplug(self, stack: contextlib.AsyncExitStack, journal: Journal) -> None:
        """Sparkplug B beside the JSON link: its own session, its own outbox, its own
        cursor in the journal."""
        if not self.config.sparkplug.enabled:
            # Its cursor (`agent.sparkplug.CONSUMER`, not imported for that) is dropped, so
            # that enabling it again later starts at the head, not with an old backlog.
            journal.detach("<sparkplug>", forget=True)
            return
        # Imported here: protobuf and the schema stay out of nodes that do not use it.
        from agent.sparkplug import SparkplugNode  # noqa: PLC0415

        node = SparkplugNode(self.config, journal)
        self._sparkplug = await stack.enter_async_context(node)

    async def _start_modules(
        self, stack: contextlib.AsyncExitStack, outbox: Outbox, journal: Journal
    ) -> None:
        sink = outbox if self._sparkplug is None else self._sparkplug.tap(outbox)
        if self.config.fleet.follow_desired:
            self._follower = DesiredFollower(self.config)
        versions = ModuleVersions(
            self.config,
            self._engine_or_fail(),
            sink,
            journal,
            configs=self._follower.configs() if self._follower is not None else None,
        )
        self._versions = await stack.enter_async_context(versions)

    async def _start_devices(self, stack: contextlib.AsyncExitStack, journal: Journal) -> Devices:
        on_reading: OnReading = self.versions.pipeline.on_reading
        if (sparkplug := self._sparkplug) is not None:
            on_reading = sparkplug.after(on_reading)
        pool = Devices.create(self.config, on_reading, seqs=journal.next_seqs())
        if sparkplug is not None:
            sparkplug.attach(pool)
        self._devices = await stack.enter_async_context(pool)
        return self._devices

    async def _serve_status(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        await stack.enter_async_context(ControlServer(config.control.socket, self.snapshot))
        if config.metrics.listen is not None:
            await stack.enter_async_context(MetricsServer(config.metrics.listen, self.snapshot))

    async def _serve_commands(self, link: MqttLink, devices: Devices) -> None:
        if not self.config.commands.enabled:
            return
        router = register_commands(
            self.config,
            self.config_path,
            self.versions,
            devices,
            self.snapshot,
            on_reload=self._reload_after_reply,
        )

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
            if self._next is not None:
                self.request_stop()

        for topic_filter in router.subscriptions():
            await link.subscribe(topic_filter, on_message)

    async def _join_fleet(self, link: MqttLink) -> None:
        """Follow the desired state of the node and its groups; publish the report."""
        versions = self.versions
        follower = self._follower
        if follower is not None:

            async def on_desired(message: Incoming) -> None:
                await follower.on_message(message.topic, message.payload)

            for topic in follower.topics():
                await link.subscribe(topic, on_desired)
            self._background.spawn(follower.run(versions), "desired state")
        reporter = Reporter(self.config, link, self.snapshot, versions, follower)
        self._background.spawn(reporter.run(), "fleet report")

    def _reload_after_reply(self, config: AgentConfig) -> None:
        """`config.reload`: the agent stops once the command is answered."""
        self._next = config

    def _announce(self, stack: contextlib.AsyncExitStack) -> None:
        engine = self._engine_or_fail()
        notify = self._notifier
        stack.push_async_callback(self._background.cancel)
        self._background.spawn(notify.keep_alive(), "systemd watchdog")
        modules = len(self.versions.pipeline.status())
        notify.ready(f"{modules} modules, {len(self.config.devices)} devices")
        log.info(
            "edge-agent %s running as %s on %s %s",
            __version__,
            self.config.node.id,
            engine.name,
            engine.version,
        )

    async def _wait_for_stop(self, stop: asyncio.Event | None) -> None:
        waits = [asyncio.ensure_future(self._stop.wait())]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # Status

    def snapshot(self) -> StatusSnapshot:
        """Assembled from what each part reports of itself, in status's own terms."""
        versions = self._versions
        return StatusSnapshot(
            agent=AgentStatus(
                version=__version__,
                node_id=self.config.node.id,
                pid=os.getpid(),
                started_at=self._started,
                uptime_s=max(0.0, time.time() - self._started),
                engine=EngineStatus.of(self._engine_or_fail()),
            ),
            mqtt=self._link.status() if self._link is not None else None,
            journal=self._journal.status() if self._journal is not None else None,
            sparkplug=self._sparkplug.status() if self._sparkplug is not None else None,
            devices=self._devices.status() if self._devices is not None else (),
            modules=tuple(versions.status()) if versions is not None else (),
            models=versions.models() if versions is not None else (),
        )

    def _engine_or_fail(self) -> Engine:
        if self._engine is None:
            raise AgentError("the agent is not running")
        return self._engine
