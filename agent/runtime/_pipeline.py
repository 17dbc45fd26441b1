"""Readings in, module outputs out: the routing between devices, modules and the outbox.

Each module has a bounded queue and a worker task. A device's reading is queued for
every module that takes it, so a slow module delays no device and no other module;
when a module falls a whole queue behind, its device's next reading waits for room
(backpressure) rather than being dropped. A module's messages reach the sink in the
order of its readings. A module may take another module's output instead of a
device's (`after`): every message it emits that is a reading document is fed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from agent.errors import ModuleError
from agent.reading import Reading
from agent.runtime._host import ModuleHost
from agent.status import ModuleStatus
from agent.wasm import Emitted

log = logging.getLogger(__name__)

Outcome = Callable[[ModuleHost, ModuleError | None], Awaitable[None]]
"""Told about every invocation: the host and its fault, or None; feeds rollout guards."""


class Sink(Protocol):
    """Where messages go: the durable outbox in the agent, a list in a test."""

    async def put(self, topic: str, payload: bytes, *, qos: int) -> None: ...


@dataclass(frozen=True)
class Route:
    """Where a module takes its readings from."""

    devices: frozenset[str] = frozenset()
    """Devices whose readings the module takes; empty means every device."""
    after: str | None = None
    """Take the reading documents this module emits instead of devices' readings."""


@dataclass
class _Stage:
    host: ModuleHost
    route: Route
    queue: asyncio.Queue[Reading]
    task: asyncio.Task[None] | None = None
    warned_not_reading: bool = False


class Pipeline:
    """Routes readings to modules and their messages to the sink under `topic_root`.

    `qos_for` gives the QoS of a topic relative to the root (the MQTT config's routes).
    """

    def __init__(
        self,
        sink: Sink,
        topic_root: str,
        *,
        qos_for: Callable[[str], int] = lambda _topic: 1,
        raw_readings: bool = False,
        queue_size: int = 1000,
        on_outcome: Outcome | None = None,
    ) -> None:
        self._sink = sink
        self._root = topic_root
        self._qos_for = qos_for
        self._raw = raw_readings
        self._queue_size = queue_size
        self._on_outcome = on_outcome
        self._stages: dict[str, _Stage] = {}
        self._running = False
        self._queued = 0  # readings queued or in process, over all modules
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> Pipeline:
        self._running = True
        for stage in self._stages.values():
            self._start(stage)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Finish what is queued, then close every module."""
        self._running = False
        for name in list(self._stages):
            await self.remove(name)

    def add(self, host: ModuleHost, route: Route) -> None:
        if host.name in self._stages:
            raise ValueError(f"module {host.name!r} is already in the pipeline")
        stage = _Stage(host, route, asyncio.Queue(self._queue_size))
        self._stages[host.name] = stage
        if self._running:
            self._start(stage)

    async def remove(self, name: str) -> None:
        """Let the module finish its queue, then stop and close it."""
        stage = self._stages.get(name)
        if stage is None:
            return
        del self._stages[name]
        if stage.task is not None:
            await stage.queue.join()
            stage.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stage.task
        await stage.host.close()

    def host(self, name: str) -> ModuleHost | None:
        stage = self._stages.get(name)
        return stage.host if stage else None

    def status(self) -> list[ModuleStatus]:
        return [stage.host.status() for stage in self._stages.values()]

    async def on_reading(self, reading: Reading) -> None:
        """Take one device reading: publish it raw if configured, queue it for modules."""
        if self._raw:
            await self._publish(f"devices/{reading.device}", reading.to_json_line().rstrip(b"\n"))
        for stage in list(self._stages.values()):
            route = stage.route
            if route.after is None and (not route.devices or reading.device in route.devices):
                await self._enqueue(stage, reading)

    async def drain(self) -> None:
        """Wait until every queued reading, chained ones included, has been processed."""
        await self._idle.wait()

    async def _enqueue(self, stage: _Stage, reading: Reading) -> None:
        self._queued += 1
        self._idle.clear()
        await stage.queue.put(reading)

    def _start(self, stage: _Stage) -> None:
        stage.task = asyncio.create_task(self._work(stage), name=f"module-{stage.host.name}")

    async def _work(self, stage: _Stage) -> None:
        while True:
            reading = await stage.queue.get()
            try:
                await self._process(stage, reading)
            except Exception:
                # A bug of ours must not silently stop one module's stream.
                log.exception(
                    "module %r: reading %s/%d", stage.host.name, reading.device, reading.seq
                )
            finally:
                stage.queue.task_done()
                self._queued -= 1
                if not self._queued:
                    self._idle.set()

    async def _process(self, stage: _Stage, reading: Reading) -> None:
        host = stage.host
        try:
            messages = await host.process(reading)
        except ModuleError as err:
            await self._report_outcome(host, err)
            return
        await self._report_outcome(host, None)
        followers = [s for s in self._stages.values() if s.route.after == host.name]
        for message in messages:
            await self._publish(message.topic, message.payload)
            if followers:
                await self._feed(stage, message, followers)

    async def _publish(self, topic: str, payload: bytes) -> None:
        await self._sink.put(f"{self._root}/{topic}", payload, qos=self._qos_for(topic))

    async def _feed(self, stage: _Stage, message: Emitted, followers: list[_Stage]) -> None:
        try:
            reading = Reading.from_json(json.loads(message.payload))
        except ValueError as err:
            if not stage.warned_not_reading:
                stage.warned_not_reading = True
                log.warning(
                    "module %r emitted on %r a message that is not a reading document "
                    "(%s); modules after it only take readings",
                    stage.host.name,
                    message.topic,
                    err,
                )
            return
        for follower in followers:
            await self._enqueue(follower, reading)

    async def _report_outcome(self, host: ModuleHost, err: ModuleError | None) -> None:
        if self._on_outcome is not None:
            await self._on_outcome(host, err)
