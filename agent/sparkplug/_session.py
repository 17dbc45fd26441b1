"""The Sparkplug B MQTT session: its own broker connection, whose will is the NDEATH.

Owns what Sparkplug ties to one connection: the bdSeq (persisted, one more for every
connection), the seq (0 in the NBIRTH, then every message, 255 wraps to 0), the births,
the primary host's STATE, and the order in which the stored messages go out.

Stored messages (DBIRTH, DDATA, DDEATH, NDATA, in the order the node produced them) live
in a durable outbox of their own, without a seq. Every birth (a new connection, a Rebirth
command, the primary host coming back) puts a marker into that outbox in the same step
as it snapshots the devices' state: what was stored before the marker is stale. Stale
DBIRTHs and DDEATHs are dropped (the births just said the same, and newer); stale NDATA,
and stale DDATA if its device is born in this session, goes out after the births,
flagged `is_historical` (a host must not get data of a device that is not born, so
other DDATA is dropped). What was stored after the marker goes out as it is, with the
next seq. An NDATA with a metric the last NBIRTH did not have (a new module output)
first gets births that have it.

The one module of this package that connects, through `agent.mqtt.new_client`, so that
it connects with the JSON link's broker, credentials and TLS, and fails over between
`mqtt.hosts` as the link does (`Rotation`); a new node of the cluster is a new session,
with its own bdSeq and births. It must not decide what is published: the node
produces, this sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path

from agent._atomic import write_bytes
from agent.config import MqttConfig, SparkplugConfig
from agent.errors import OutboxError
from agent.mqtt import Client, MqttError, Rotation, Will, new_client, subscribe
from agent.outbox import Message, Outbox
from agent.sparkplug._payload import (
    MetricDef,
    Scalar,
    aliases,
    node_birth,
    node_command,
    node_death,
    parse,
    sequenced,
)

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
MARK = "edge-agent-sparkplug-births"
"""The outbox topic of a births marker; never published (no Sparkplug topic is one level)."""
_READ_BATCH = 256
_SETTLE_S = 15.0
"""How long the first births wait for every device's first poll."""

Births = Callable[[], tuple[list[tuple[MetricDef, Scalar | None]], list[tuple[str, bytes]]]]
"""The node's own metrics with their values, and the DBIRTHs of the devices online now:
(topic, payload without seq)."""
Command = Callable[[str, bytes], Coroutine[object, None, None]]
"""A DCMD: the device and the payload."""


class BdSeq:
    """The birth/death sequence number, 0-255, one more for every connection; kept in a
    file so that a restarted agent does not repeat the last one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def current(self) -> int:
        try:
            return int(self.path.read_text().strip()) % 256
        except (OSError, ValueError):
            return 0

    def advance(self) -> None:
        write_bytes(self.path, f"{(self.current() + 1) % 256}\n".encode())


class Session:
    """Connects on entry and keeps a Sparkplug session up until exit."""

    def __init__(
        self,
        mqtt: MqttConfig,
        config: SparkplugConfig,
        edge_node_id: str,
        outbox: Outbox,
        bdseq: BdSeq,
        *,
        births: Births,
        on_command: Command,
        settled: asyncio.Event,
    ) -> None:
        self._mqtt = mqtt
        self._config = config
        self._outbox = outbox
        self._bdseq = bdseq
        self._births_of = births
        self._on_command = on_command
        self._settled = settled
        self.topic = f"{NAMESPACE}/{config.group_id}/{{}}/{edge_node_id}"
        """The node's topics, with `{}` for the message type."""
        self._client_id = f"{mqtt.client_id or edge_node_id}-sparkplug"
        self._rotation = Rotation(mqtt)
        self._state_topic = (
            None
            if config.primary_host_id is None
            else f"{NAMESPACE}/STATE/{config.primary_host_id}"
        )
        self._stop = asyncio.Event()
        self._rebirth = asyncio.Event()
        self._host_online = asyncio.Event()
        self._host_gone = asyncio.Event()
        self._host_ts = -1
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._token = b""
        self._live = False
        self._born: set[str] = set()
        """Devices born in this session, as sent so far."""
        self._node_aliases: set[int] = set()
        """The node metrics of the last NBIRTH."""
        self._bdseq_now = 0
        self.births = 0
        """Node births sent; for status and tests."""
        self.connected = False
        self.refused = 0
        """NCMDs refused."""
        self.last_error: str | None = None

    async def __aenter__(self) -> Session:
        self._runner = asyncio.create_task(self._run(), name=f"sparkplug {self._client_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Publish the NDEATH and disconnect (a clean disconnect sends no will)."""
        self._stop.set()
        if self._runner is not None:
            done, _ = await asyncio.wait([self._runner], timeout=5)
            if not done:
                self._runner.cancel()
                await asyncio.wait([self._runner])
        for task in self._tasks:
            task.cancel()

    def request_rebirth(self) -> None:
        self._rebirth.set()

    @property
    def bd_seq(self) -> int:
        """The bdSeq of the current (or last) session's births."""
        return self._bdseq_now

    # The connection loop

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._session()
            except (MqttError, OutboxError) as err:
                self.last_error = str(err) or type(err).__name__
                log.warning("Sparkplug session on %s: %s", self._rotation, self.last_error)
            finally:
                self.connected = False
            if self._stop.is_set():
                return
            delay = self._rotation.next()
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self) -> None:
        """One connection, from CONNACK to its loss or to a clean stop."""
        bdseq = self._bdseq.current()
        ndeath = (self.topic.format("NDEATH"), node_death(bdseq, time.time()))
        client = new_client(
            self._mqtt,
            self._client_id,
            endpoint=self._rotation.current,
            will=Will(*ndeath, qos=1, retain=False),
            clean=True,
        )
        self._host_online.clear()
        self._host_gone.clear()
        async with client:
            self._rotation.connected()
            self.connected = True
            self._bdseq.advance()  # the next connection's NDEATH must not match this birth
            topics = [self.topic.format("NCMD"), self.topic.format("DCMD") + "/+"]
            if self._state_topic is not None:
                topics.append(self._state_topic)
            await subscribe(client, topics, 1)  # refused: no commands, nor the host's STATE
            if self._state_topic is None:
                self._host_online.set()
            tasks = [
                asyncio.create_task(self._receive(client)),
                asyncio.create_task(self._serve(client, bdseq)),
                asyncio.create_task(self._stop.wait()),
                asyncio.create_task(self._host_gone.wait()),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if self._stop.is_set() or self._host_gone.is_set():
                    tasks[1].cancel()
                    await asyncio.gather(tasks[1], return_exceptions=True)
                    if self._host_gone.is_set():
                        log.warning("Sparkplug primary host went offline: ending the session")
                    await client.publish(*ndeath, qos=1)
                for finished in done:
                    finished.result()  # raises what ended the session
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, client: Client, bdseq: int) -> None:
        """Births once the primary host is online, then the stored messages in order;
        births again on a Rebirth command."""
        self._token, self._bdseq_now = b"", bdseq
        await self._host_online.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), _SETTLE_S)
        await self._send_births(client, bdseq)
        after = 0
        while True:
            if self._rebirth.is_set():
                await self._send_births(client, bdseq)
            for message in await self._next_batch(after):
                await self._send_stored(client, message)
                after = message.id

    async def _next_batch(self, after: int) -> list[Message]:
        """The next stored messages, or none when a rebirth is asked for first."""
        read = asyncio.ensure_future(self._outbox.next_batch(after, _READ_BATCH))
        rebirth = asyncio.ensure_future(self._rebirth.wait())
        try:
            await asyncio.wait([read, rebirth], return_when=asyncio.FIRST_COMPLETED)
        finally:
            rebirth.cancel()
            if not read.done():
                read.cancel()
        return read.result() if read.done() and not read.cancelled() else []

    async def _send_births(self, client: Client, bdseq: int) -> None:
        self._rebirth.clear()
        # The snapshot and the marker in one step: no device changes between them.
        node, births = self._births_of()
        token = uuid.uuid4().hex.encode()
        await self._outbox.put(MARK, token)
        self._token, self._live, self._seq = token, False, 0
        self._node_aliases = {definition.alias for definition, _ in node}
        nbirth = node_birth(bdseq, time.time(), node)
        nbirth.seq = self._next_seq()
        await client.publish(self.topic.format("NBIRTH"), nbirth.SerializeToString(), qos=0)
        self._born = set()
        for topic, payload in births:
            await client.publish(topic, sequenced(payload, self._next_seq(), historical=False))
            self._born.add(topic.rsplit("/", 1)[1])
        self.births += 1
        log.info("Sparkplug births sent: bdSeq %d, %d devices", bdseq, len(births))

    async def _send_stored(self, client: Client, message: Message) -> None:
        if message.topic == MARK:
            self._live = self._live or message.payload == self._token
            self._outbox.ack(message)
            return
        levels = message.topic.split("/")
        kind, device = levels[2], levels[-1]
        if kind == "NDATA" and not aliases(message.payload) <= self._node_aliases:
            await self._send_births(client, self._bdseq_now)  # a new module output
        if not self._live and (
            kind in ("DBIRTH", "DDEATH") or (kind == "DDATA" and device not in self._born)
        ):
            self._outbox.ack(message)
            return
        payload = sequenced(message.payload, self._next_seq(), historical=not self._live)
        qos = self._config.data_qos if kind in ("DDATA", "NDATA") else 0
        await client.publish(message.topic, payload, qos=qos, timeout=float("inf"))
        self._outbox.ack(message)
        if kind == "DBIRTH":
            self._born.add(device)
        elif kind == "DDEATH":
            self._born.discard(device)

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    # Receiving

    async def _receive(self, client: Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            raw = message.payload
            data = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
            if topic == self._state_topic:
                self._host_state(data)
            elif topic == self.topic.format("NCMD"):
                try:
                    rebirth = node_command(parse(data))
                except ValueError as err:
                    self.refused += 1
                    log.warning("Sparkplug NCMD refused: %s", err)
                    continue
                if rebirth:
                    log.info("Sparkplug rebirth asked for")
                    self._rebirth.set()
            else:
                device = topic.rsplit("/", 1)[1]
                task = asyncio.create_task(self._on_command(device, data))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _host_state(self, data: bytes) -> None:
        """Sparkplug 3.0's JSON STATE, or 2.2's ONLINE/OFFLINE; an older timestamp than
        one seen already is a stale retained message and is ignored."""
        try:
            doc = json.loads(data)
            online, ts = bool(doc["online"]), int(doc.get("timestamp", 0))
        except (ValueError, TypeError, KeyError):
            text = data.decode(errors="replace").strip().upper()
            if text not in ("ONLINE", "OFFLINE"):
                log.warning("Sparkplug STATE ignored: %r", data[:100])
                return
            online, ts = text == "ONLINE", self._host_ts
        if ts < self._host_ts:
            return
        self._host_ts = ts
        if online:
            self._host_online.set()
        elif self._host_online.is_set():
            self._host_gone.set()
