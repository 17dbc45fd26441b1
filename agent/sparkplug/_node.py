"""The Sparkplug B edge node: the agent's devices as Sparkplug devices, beside the JSON
topics.

Owns each device's Sparkplug state (born or not, its last good values; Modbus and OPC
UA devices alike) and turns readings into what a host must see: a DBIRTH when a device
comes online, DDATA while it is, a DDEATH when it goes offline (the device pool's own
verdict; an OPC UA device that lost its session sends no reading, so the node also
looks at those devices' states); a DCMD becomes a write with read-back whose value goes
out as DDATA; module outputs, tapped from the pipeline's sink, become NDATA (`_outputs`).
It stores those messages in order in a durable outbox of its own
(`<state_dir>/sparkplug/outbox.sqlite`) and leaves the connection, the births and the
seq to `_session`. It must not change what the JSON outbox gets (the tap passes every
message on first).

Readings come from the reading journal, as a consumer of it (`CONSUMER`): one tailer
task takes them in journal order once the pipeline has journaled them, and moves the
node's cursor past a reading once what it means is in the Sparkplug outbox. After a
crash the node first turns what it missed into DDATA (no births or deaths from the
past); stored before the session's first births, that DDATA goes out after them,
flagged historical.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.config import AgentConfig, OpcuaDeviceConfig
from agent.errors import AgentError
from agent.journal import Journal
from agent.outbox import Outbox, OutboxLimits, Outgoing
from agent.reading import Reading
from agent.sparkplug._outputs import Catalog, outputs, typed
from agent.sparkplug._payload import (
    REBIRTH_ALIAS,
    DeviceMetrics,
    MetricDef,
    Scalar,
    device_birth,
    device_command,
    device_data,
    device_death,
    device_metrics,
    node_data,
    parse,
)
from agent.sparkplug._session import BdSeq, Session
from agent.status import DeviceStatus, SparkplugStatus

log = logging.getLogger(__name__)

CONSUMER = "<sparkplug>"
"""The node's cursor in the reading journal; no module name has angle brackets."""
_REPLAY_BATCH = 256
_WATCH_S = 0.25
"""How often the node looks at the OPC UA devices' states, for their deaths."""

OnReading = Callable[[Reading], Awaitable[None]]


class Sink(Protocol):
    """Where module outputs go: the JSON outbox."""

    async def put(self, topic: str, payload: bytes, *, qos: int) -> None: ...


class Devices(Protocol):
    """What the node needs of the device pool."""

    def status(self) -> Sequence[DeviceStatus]: ...

    async def write(self, device: str, register: str, value: Scalar) -> Scalar: ...


@dataclass
class _Device:
    born: bool = False
    seen: bool = False
    """Whether a reading decided its state yet: the first births wait for every device."""
    values: dict[str, Scalar] = field(default_factory=dict)


class SparkplugNode:
    """The edge node `edge_node_id` (the node id unless set) of `group_id`; `async with`
    opens its outbox, takes what it missed from `journal` and keeps its session up; it
    takes new readings from the journal when `after`'s handler has journaled them."""

    def __init__(self, config: AgentConfig, journal: Journal) -> None:
        sparkplug = config.sparkplug
        self.edge_node_id = sparkplug.edge_node_id or config.node.id
        self._config = config
        self._journal = journal
        self._metrics = device_metrics(config.devices)
        self._devices = {name: _Device() for name in self._metrics}
        self._opcua = tuple(d.name for d in config.devices if isinstance(d, OpcuaDeviceConfig))
        """Devices that send no reading when offline: their deaths come from their state."""
        self._pool: Devices | None = None
        self._settled = asyncio.Event()
        if not self._devices:
            self._settled.set()
        self._outbox: Outbox | None = None
        self._session: Session | None = None
        self._dir = config.node.state_dir / "sparkplug"
        device_aliases = (m.alias for d in self._metrics.values() for m in d.metrics)
        self._catalog = Catalog(
            self._dir / "metrics.json", max(device_aliases, default=REBIRTH_ALIAS) + 1
        )
        self._root = f"{config.mqtt.topic_prefix}/{config.node.id}/"
        self._cursor = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._tailer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._refused = 0
        self._last_error: str | None = None

    async def __aenter__(self) -> SparkplugNode:
        config = self._config
        limits = OutboxLimits(
            config.outbox.max_messages, config.outbox.max_bytes, config.outbox.max_age_s
        )
        self._outbox = Outbox.open(
            self._dir / "outbox.sqlite", limits, synchronous=config.outbox.synchronous
        )
        session = Session(
            config.mqtt,
            config.sparkplug,
            self.edge_node_id,
            self._outbox,
            BdSeq(self._dir / "bdseq"),
            births=self._births,
            on_command=self._command,
            settled=self._settled,
        )
        self._session = session  # its topics; it connects once the replay is stored
        try:
            self._cursor = self._journal.attach(CONSUMER)
            await self._replay()
            await session.__aenter__()
        except BaseException:
            self._journal.detach(CONSUMER)
            self._outbox.close()
            raise
        self._tailer = asyncio.create_task(self._tail(), name="sparkplug journal")
        if self._opcua:
            self._watcher = asyncio.create_task(self._watch(), name="sparkplug device states")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._tailer is not None:
            # The devices have stopped: take what is left, then stop.
            self._closing = True
            self._wake.set()
            await asyncio.gather(self._tailer, return_exceptions=True)
        self._journal.detach(CONSUMER)
        if self._session is not None:
            await self._session.__aexit__(*exc)
        if self._outbox is not None:
            self._outbox.close()

    def status(self) -> SparkplugStatus:
        session = self._session
        return SparkplugStatus(
            connected=session is not None and session.connected,
            bd_seq=0 if session is None else session.bd_seq,
            births=0 if session is None else session.births,
            commands_refused=self._refused + (0 if session is None else session.refused),
            last_error=self._last_error or (None if session is None else session.last_error),
        )

    def attach(self, devices: Devices) -> None:
        """The pool whose states decide births and deaths, and which DCMDs write to."""
        self._pool = devices

    def after(self, first: OnReading) -> OnReading:
        """A reading handler that runs `first` (the pipeline, which journals the reading),
        then has this node take it, and whatever else is new, from the journal."""

        async def both(reading: Reading) -> None:
            try:
                await first(reading)
            finally:
                self._wake.set()

        return both

    def tap(self, sink: Sink) -> Sink:
        """`sink`, with every module output also sent as NDATA metrics."""
        return _Tap(self, sink)

    async def on_output(self, topic: str, payload: bytes) -> None:
        """Store a module's message as NDATA: its scalars, new ones added to the catalog
        (the session sends births with them before this NDATA)."""
        relative = topic.removeprefix(self._root)
        if relative == topic or relative.startswith("devices/"):
            return  # not a module's output: raw readings
        new, fitting = typed(outputs(relative, payload), self._catalog)
        if new:
            self._catalog.add(new)
        metrics = [(d, v) for n, v in fitting.items() if (d := self._catalog.get(n)) is not None]
        if not metrics:
            return
        self._catalog.values.update((d.name, v) for d, v in metrics)
        if self._outbox is not None and self._session is not None:
            message = Outgoing(self._session.topic.format("NDATA"), node_data(metrics, time.time()))
            await self._outbox.put_many([message])

    async def on_reading(self, reading: Reading) -> None:
        """Store what the reading means for its device: DBIRTH, DDATA or DDEATH.

        The device's state changes before the message is stored, in one step with the
        call, as the session's births snapshot expects; a message the outbox refuses
        puts the state back, so that the same reading, taken again, makes it again."""
        device = self._devices.get(reading.device)
        metrics = self._metrics.get(reading.device)
        if device is None or metrics is None or self._pool is None:
            return
        state = next((s.state for s in self._pool.status() if s.name == reading.device), None)
        self._seen(device)
        born, values = device.born, dict(device.values)
        try:
            await self._store(reading, device, metrics, offline=state == "offline")
        except BaseException:
            device.born, device.values = born, values
            raise

    async def _store(
        self, reading: Reading, device: _Device, metrics: DeviceMetrics, *, offline: bool
    ) -> None:
        if offline:
            if device.born:
                device.born = False
                await self._put(reading.device, "DDEATH", device_death(reading.ts))
            return
        changed = _changed(device, reading)
        device.values.update(changed)
        if not device.born:
            device.born = True
            payload = device_birth(metrics, device.values, reading.ts)
            await self._put(reading.device, "DBIRTH", payload)
        elif changed:
            await self._put(reading.device, "DDATA", device_data(metrics, changed, reading.ts))

    async def _replay(self) -> None:
        """Store as DDATA what the readings after the cursor changed (every good value,
        the first time a device appears: the values are not known after a restart),
        then move the cursor to the head."""
        assert self._outbox is not None
        devices = frozenset(self._metrics)
        stored = 0
        while devices and (batch := self._journal.read(self._cursor, _REPLAY_BATCH, devices)):
            messages = []
            for _, reading in batch:
                device = self._devices[reading.device]
                if changed := _changed(device, reading):
                    payload = device_data(self._metrics[reading.device], changed, reading.ts)
                    messages.append(Outgoing(self._topic("DDATA", reading.device), payload))
                    device.values.update(changed)
            await self._outbox.put_many(messages)
            stored += len(messages)
            self._advance(batch[-1][0])
        self._advance(self._journal.head)
        if stored:
            log.info("Sparkplug: %d DDATA from readings it missed, from the journal", stored)

    async def _tail(self) -> None:
        """Take the journal's new readings in order, until the node closes."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._take_new()
            except (OSError, AgentError) as err:
                # The cursor stays before the reading: the next wake tries it again.
                self._last_error = str(err)
                log.warning("Sparkplug: reading not stored, will retry: %s", err)
            if self._closing:
                return

    async def _take_new(self) -> None:
        devices = frozenset(self._metrics)
        while devices and (batch := self._journal.read(self._cursor, _REPLAY_BATCH, devices)):
            for entry, reading in batch:
                try:
                    await self.on_reading(reading)
                except (OSError, AgentError):
                    raise
                except Exception:
                    # A bug of ours must not hold every reading behind this one.
                    log.exception("Sparkplug: reading %s/%d", reading.device, reading.seq)
                self._advance(entry)
        # No await since the last (empty) read: nothing new for this node up to the head.
        self._advance(self._journal.head)
        await self._deaths()
        self._last_error = None

    async def _watch(self) -> None:
        """Wake the tailer now and then: an OPC UA device may have gone offline."""
        while True:
            await asyncio.sleep(_WATCH_S)
            self._wake.set()

    async def _deaths(self) -> None:
        """A DDEATH for each born OPC UA device the pool says is offline (after the
        readings before it: the same task takes both, in order)."""
        if self._pool is None or not self._opcua:
            return
        states = {s.name: s.state for s in self._pool.status()}
        for name in self._opcua:
            if states.get(name) != "offline":
                continue
            device = self._devices[name]
            self._seen(device)
            if device.born:
                device.born = False
                try:
                    await self._put(name, "DDEATH", device_death(time.time()))
                except BaseException:
                    device.born = True
                    raise

    def _advance(self, entry: int) -> None:
        if entry > self._cursor:
            self._cursor = entry
            self._journal.advance(CONSUMER, entry)

    def _seen(self, device: _Device) -> None:
        if not device.seen:
            device.seen = True
            if all(d.seen for d in self._devices.values()):
                self._settled.set()

    def _births(self) -> tuple[list[tuple[MetricDef, Scalar | None]], list[tuple[str, bytes]]]:
        now = time.time()
        node = [(m, self._catalog.values.get(m.name)) for m in self._catalog]
        return node, [
            (self._topic("DBIRTH", name), device_birth(self._metrics[name], device.values, now))
            for name, device in self._devices.items()
            if device.born
        ]

    async def _put(self, device: str, kind: str, payload: bytes) -> None:
        if self._outbox is not None:
            await self._outbox.put_many([Outgoing(self._topic(kind, device), payload)])

    def _topic(self, kind: str, device: str) -> str:
        assert self._session is not None
        return f"{self._session.topic.format(kind)}/{device}"

    async def _command(self, name: str, data: bytes) -> None:
        """A DCMD: every metric checked first (known, writable, of its datatype), so that
        a bad one writes nothing; then each written to its register, read back, and
        sent as DDATA."""
        metrics = self._metrics.get(name)
        device = self._devices.get(name)
        if metrics is None or device is None or self._pool is None:
            self._refused += 1
            log.warning("Sparkplug DCMD refused: no device %r", name)
            return
        try:
            writes = device_command(metrics, parse(data))
        except ValueError as err:
            self._refused += 1
            log.warning("Sparkplug DCMD for %s refused, nothing written: %s", name, err)
            return
        for definition, value in writes:
            try:
                back = await self._pool.write(name, definition.name, value)
            except AgentError as err:
                log.warning("Sparkplug DCMD %s/%s failed: %s", name, definition.name, err)
                continue
            device.values[definition.name] = back
            if device.born:
                ddata = device_data(metrics, {definition.name: back}, time.time())
                await self._put(name, "DDATA", ddata)


def _changed(device: _Device, reading: Reading) -> dict[str, Scalar]:
    """Report by exception, as Sparkplug intends: DDATA carries the good values that
    changed."""
    return {
        name: v.value
        for name, v in reading.values.items()
        if v.quality == "good" and device.values.get(name) != v.value
    }


class _Tap:
    def __init__(self, node: SparkplugNode, sink: Sink) -> None:
        self._node = node
        self._sink = sink

    async def put(self, topic: str, payload: bytes, *, qos: int) -> None:
        await self._sink.put(topic, payload, qos=qos)
        try:
            await self._node.on_output(topic, payload)
        except (OSError, AgentError):
            # The JSON message is stored: the pipeline must go on, Sparkplug or not.
            log.exception("Sparkplug: module output on %s not stored", topic)
