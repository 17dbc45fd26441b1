"""Readings in, module outputs out: the routing between devices, modules and the outbox.

A device's reading is journaled (`agent.journal`) before anything else sees it. Each
module has a bounded queue and a worker task. A journaled reading is queued for every
module that takes it, so a slow module delays no device and no other module; when a
module falls a whole queue behind, its device's next reading waits for room
(backpressure) rather than being dropped. A module's messages reach the sink in the
order of its readings. A module may take another module's output instead of a
device's (`after`): every message it emits that is a reading document is fed on.

Each module fed by devices, and the raw-readings publisher, has a cursor in the
journal that moves once a reading's messages (its followers' too) are in the sink. A
module that starts behind its cursor, after a crash, first takes the readings it
missed, from the journal, then the live ones: at least once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from agent._json import parse_json
from agent.errors import ModuleError
from agent.journal import Journal
from agent.reading import Reading
from agent.runtime._cursor import Cursor, Work
from agent.runtime._host import ModuleHost
from agent.status import ModuleStatus
from agent.wasm import Emitted

log = logging.getLogger(__name__)

RAW = "<raw>"
"""The raw-readings publisher's cursor; no module name has angle brackets."""
_REPLAY_BATCH = 256

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


@dataclass(slots=True)
class _Item:
    reading: Reading
    work: Work
    """The journal entry this reading is, or was derived from, under its first module."""


@dataclass
class _Stage:
    host: ModuleHost
    route: Route
    queue: asyncio.Queue[_Item]
    task: asyncio.Task[None] | None = None
    cursor: Cursor | None = None
    """Modules fed by devices: their place in the journal."""
    live: bool = True
    """False while the module takes the journal's backlog; live readings wait in it."""
    queued_up_to: int = 0
    replay: asyncio.Task[None] | None = None
    warned_not_reading: bool = False


class Pipeline:
    """Routes readings to modules and their messages to the sink under `topic_root`.

    `qos_for` gives the QoS of a topic relative to the root (the MQTT config's routes).
    """

    def __init__(
        self,
        sink: Sink,
        journal: Journal,
        topic_root: str,
        *,
        qos_for: Callable[[str], int] = lambda _topic: 1,
        raw_readings: bool = False,
        queue_size: int = 1000,
        on_outcome: Outcome | None = None,
    ) -> None:
        self._sink = sink
        self._journal = journal
        self._raw_cursor: Cursor | None = None
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
        """Publish the raw readings a crash left unpublished, then start every module
        (each takes what it missed first; `add` attached their cursors already, so the
        journal kept it)."""
        if self._raw:
            self._raw_cursor = Cursor(self._journal, RAW)
            after = self._raw_cursor.start
            while batch := self._journal.read(after, _REPLAY_BATCH):
                for entry, reading in batch:
                    work = self._raw_cursor.open(entry)
                    await self._publish_raw(work, reading.device, reading.to_json_line())
                after = batch[-1][0]
        self._running = True
        for stage in self._stages.values():
            self._start(stage)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Finish what is queued, then close every module; cursors stay for next time."""
        self._running = False
        for name in list(self._stages):
            await self.remove(name, forget=False)
        if self._raw_cursor is not None:
            self._raw_cursor.close()

    def add(self, host: ModuleHost, route: Route) -> None:
        if host.name in self._stages:
            raise ValueError(f"module {host.name!r} is already in the pipeline")
        stage = _Stage(host, route, asyncio.Queue(self._queue_size))
        if route.after is None:
            # Attached at once: from now on the journal keeps what this module needs.
            stage.cursor = Cursor(self._journal, host.name)
            stage.queued_up_to = stage.cursor.start
        self._stages[host.name] = stage
        if self._running:
            self._start(stage)

    async def remove(self, name: str, *, forget: bool = True) -> None:
        """Let the module finish its queue, then stop and close it; `forget` its place in
        the journal unless it will be back (the agent stopping)."""
        stage = self._stages.get(name)
        if stage is None:
            return
        del self._stages[name]
        if stage.replay is not None:
            stage.replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stage.replay
        if stage.cursor is not None:
            stage.cursor.close(forget=forget)
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
        """Take one device reading: journal it, publish it raw if configured, queue it
        for the modules that take it. When this returns the reading is on disk."""
        line = reading.to_json_line()  # written once: the journal's record, the raw message
        entry = await self._journal.append(reading, line)
        # Every consumer's work for this entry is opened before the first await: the
        # appends of one commit resume in entry order, so each cursor sees its entries
        # in order even when another device's reading waits for room in a queue.
        raw = None if self._raw_cursor is None else self._raw_cursor.open(entry)
        taken = []
        for stage in list(self._stages.values()):
            route = stage.route
            if not stage.live or route.after is not None:
                continue
            if not route.devices or reading.device in route.devices:
                if (item := self._take(stage, entry, reading)) is not None:
                    taken.append((stage, item))
            elif stage.cursor is not None:
                stage.cursor.skip(entry)
        if raw is not None:
            await self._publish_raw(raw, reading.device, line)
        for stage, item in taken:
            await self._enqueue(stage, item)

    async def drain(self) -> None:
        """Wait until every queued reading, chained ones included, has been processed."""
        await self._idle.wait()

    async def _publish_raw(self, work: Work, device: str, line: bytes) -> None:
        try:
            await self._publish(f"devices/{device}", line.rstrip(b"\n"))
        finally:
            work.finish()

    def _take(self, stage: _Stage, entry: int, reading: Reading) -> _Item | None:
        """The item to queue for a module fed by devices; None for an entry it has."""
        if entry <= stage.queued_up_to or stage.cursor is None:
            return None  # the backlog and a live reading may offer the same entry
        stage.queued_up_to = entry
        return _Item(reading, stage.cursor.open(entry))

    async def _enqueue(self, stage: _Stage, item: _Item) -> None:
        self._queued += 1
        self._idle.clear()
        await stage.queue.put(item)

    def _start(self, stage: _Stage) -> None:
        name = stage.host.name
        if stage.cursor is not None and stage.cursor.start < self._journal.head:
            stage.live = False
            stage.replay = asyncio.create_task(self._replay(stage), name=f"replay-{name}")
        stage.task = asyncio.create_task(self._work(stage), name=f"module-{name}")

    async def _replay(self, stage: _Stage) -> None:
        """Queue the journal's entries after the module's cursor, then go live: the
        switch has no await between the last empty read and `live`, so no live reading
        falls between the two."""
        after = stage.queued_up_to
        missed = 0
        while batch := self._journal.read(after, _REPLAY_BATCH, stage.route.devices):
            for entry, reading in batch:
                if (item := self._take(stage, entry, reading)) is not None:
                    await self._enqueue(stage, item)
            missed += len(batch)
            after = batch[-1][0]
        head = self._journal.head
        if stage.cursor is not None and head > stage.queued_up_to:
            # Other devices' entries up to here: passed once the module's own are done,
            # as live ones are (`on_reading`), or nothing later would move the cursor.
            stage.cursor.skip(head)
        stage.live = True
        if missed:
            log.info(
                "module %r took %d readings it missed from the journal", stage.host.name, missed
            )

    async def _work(self, stage: _Stage) -> None:
        while True:
            item = await stage.queue.get()
            reading = item.reading
            try:
                await self._process(stage, item)
            except Exception:
                # A bug of ours must not silently stop one module's stream.
                log.exception(
                    "module %r: reading %s/%d", stage.host.name, reading.device, reading.seq
                )
            finally:
                # Done even when the module refused it: a reading that faults it would
                # fault it again after a restart, and hold everything behind it.
                item.work.finish()
                stage.queue.task_done()
                self._queued -= 1
                if not self._queued:
                    self._idle.set()

    async def _process(self, stage: _Stage, item: _Item) -> None:
        host = stage.host
        try:
            messages = await host.process(item.reading)
        except ModuleError as err:
            await self._report_outcome(host, err)
            return
        await self._report_outcome(host, None)
        followers = [s for s in self._stages.values() if s.route.after == host.name]
        for message in messages:
            await self._publish(message.topic, message.payload)
            if followers:
                await self._feed(stage, message, followers, item.work)

    async def _publish(self, topic: str, payload: bytes) -> None:
        await self._sink.put(f"{self._root}/{topic}", payload, qos=self._qos_for(topic))

    async def _feed(
        self, stage: _Stage, message: Emitted, followers: list[_Stage], work: Work
    ) -> None:
        try:
            reading = Reading.from_json(parse_json(message.payload))
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
            await self._enqueue(follower, _Item(reading, work.fork()))

    async def _report_outcome(self, host: ModuleHost, err: ModuleError | None) -> None:
        if self._on_outcome is not None:
            await self._on_outcome(host, err)
