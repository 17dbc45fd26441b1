"""The MQTT link: one broker connection that drains the outbox and serves subscriptions.

Owns the connection's lifecycle (connect, retained status and last will, reconnect with
exponential backoff and jitter, failover between the nodes of a clustered broker as
`_endpoints` says) and the order of publication: outbox messages go out strictly in id
order, at most `max_inflight` QoS 1 messages unacknowledged, each deleted
from the outbox when its PUBACK arrives (QoS 0: once written). After a reconnect it
starts again from the oldest unacknowledged message, so a message whose PUBACK was lost
with the connection is sent again: delivery is at least once, and a subscriber can see
a redelivered message a second time, never out of order relative to its first delivery.
A failover to another node of a cluster is such a reconnect: the outbox, not the broker
session, carries the messages over, and the subscriptions are made again.

Builds its client through `_client` (only this package imports aiomqtt and paho-mqtt).
It must not decide what is published: producers put into the outbox, command handlers
reply through `reply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent._ratelimit import TokenBucket
from agent.config import MqttConfig
from agent.errors import MqttUnavailable, OutboxError
from agent.mqtt._client import new_client, refused
from agent.mqtt._endpoints import Rotation
from agent.outbox import Message, Outbox
from agent.status import MqttStatus
from agent.topics import matches

log = logging.getLogger(__name__)

_READ_BATCH = 256
SUBSCRIBE_QOS = 0
"""The link's sessions are clean, so a QoS 1 subscription would buy no redelivery (what
is in flight when a connection drops is gone with the session either way), and it costs
a JetStream consumer per filter on a NATS cluster: after a node dies, every agent
re-subscribing at QoS 1 queues behind its leader election. Commands are answered (a
requester without an answer asks again) and desired state is retained, delivered again
at every connect."""
_SHUTDOWN_GRACE_S = 2.0
"""How long a clean stop waits for the PUBACKs of messages in flight."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message that arrived on a subscription."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    """MQTT 5: where the sender wants the answer."""
    correlation_data: bytes | None = None
    """MQTT 5: to be echoed in the answer."""
    retain: bool = False


Handler = Callable[[Incoming], Awaitable[None]]


class MqttLink:
    """Connects on entry and keeps reconnecting until exit; never fails for broker outages.

    `engine` goes into the status payload as given (e.g. {"kind": "wasmedge", "version":
    "0.14.1"}). `drain_rate` caps messages/s from the outbox (`outbox.drain_rate`).
    """

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        *,
        node_id: str,
        engine: Any = None,
        drain_rate: float | None = None,
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._engine = engine
        self._client_id = config.client_id or node_id
        self._rotation = Rotation(config)
        self.status_topic = f"{config.topic_prefix}/{node_id}/status"
        self._pace = (
            None if drain_rate is None else TokenBucket(drain_rate, max(1.0, drain_rate / 20))
        )
        """Bursts of up to 50 ms worth of the rate."""
        self._handlers: dict[str, Handler] = {}
        self._refused: set[str] = set()
        """Topic filters this session's broker refused (a SUBACK failure code)."""
        self._refusal = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._handling: set[asyncio.Task[None]] = set()
        self._connections = 0
        self._published = 0
        self._last_error: str | None = None

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-link {self._client_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop draining, wait briefly for PUBACKs, publish `offline`, disconnect."""
        self._stop.set()
        runner = self._runner
        if runner is not None:
            if not self._connected.is_set():
                runner.cancel()  # connecting or waiting to retry: nothing to finish
            done, _ = await asyncio.wait([runner], timeout=2 * _SHUTDOWN_GRACE_S)
            if not done:
                log.warning("MQTT link did not stop in time; dropping the connection")
                runner.cancel()
                await asyncio.wait([runner])
        for task in self._handling:
            task.cancel()

    async def wait_connected(self) -> None:
        """Wait for a broker connection (the online status is published by then)."""
        await self._connected.wait()

    def status(self) -> MqttStatus:
        stats = self._outbox.stats()
        return MqttStatus(
            broker=str(self._rotation),
            connected=self._connected.is_set(),
            outbox_depth=stats.depth,
            oldest_age_s=stats.oldest_age_s,
            dropped=stats.dropped_total,
            reconnects=max(0, self._connections - 1),
            failovers=self._rotation.failovers,
            published=self._published,
            last_error=self._last_error,
        )

    async def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Call `handler` for every message matching `topic_filter`, across reconnects.

        Handlers run as tasks, so a slow one does not hold up the connection; an
        exception in one is logged and the link goes on.
        """
        self._handlers[topic_filter] = handler
        client = self._client
        if client is not None:
            try:
                await self._subscribe(client, topic_filter)
            except aiomqtt.MqttError as err:
                # The reconnect that follows subscribes again.
                log.debug("subscribe %s failed: %s", topic_filter, err)

    async def reply(self, request: Incoming, payload: bytes | str, *, fallback_topic: str) -> None:
        """Answer a request on its MQTT 5 response topic with its correlation data, or on
        `fallback_topic`.

        Sent directly, not through the outbox: an answer only helps a requester that is
        still waiting, and behind a backlog of readings it would come far too late.
        Raises MqttUnavailable when there is no connection.
        """
        properties = None
        if self._config.protocol == "5" and request.correlation_data is not None:
            properties = _properties(CorrelationData=request.correlation_data)
        await self.publish_now(
            request.response_topic or fallback_topic, payload, properties=properties
        )

    async def publish_now(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish at QoS 1 on the current connection, past the outbox: for what is only
        worth its latest value (answers, the node's retained report). Raises
        MqttUnavailable when there is no connection."""
        client = self._client
        if client is None:
            raise MqttUnavailable(f"cannot publish on {topic}: not connected to the broker")
        try:
            await client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        except aiomqtt.MqttError as err:
            raise MqttUnavailable(f"cannot publish on {topic}: {err}") from err

    # The connection loop

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._session()
            except (aiomqtt.MqttError, OutboxError) as err:
                self._last_error = str(err) or type(err).__name__
                log.warning("MQTT %s: %s", self._rotation, self._last_error)
            if self._stop.is_set():
                return
            delay = self._rotation.next()
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self) -> None:
        """One connection, from CONNACK to its loss or to a clean stop."""
        async with self._new_client() as client:
            self._rotation.connected()
            log.info(
                "MQTT %s to %s", "reconnected" if self._connections else "connected", self._rotation
            )
            self._connections += 1
            await client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
            self._refused.clear()
            self._refusal.clear()
            for topic_filter in list(self._handlers):
                await self._subscribe(client, topic_filter)
            self._client = client
            self._connected.set()
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            tasks: list[asyncio.Future[None]] = [
                asyncio.create_task(self._receive(client)),
                asyncio.create_task(self._drain(client, lost)),
                asyncio.create_task(self._stopped()),
                asyncio.create_task(self._resubscribe(client)),
            ]
            try:
                done, _ = await asyncio.wait([*tasks, lost], return_when=asyncio.FIRST_COMPLETED)
                if self._stop.is_set():
                    tasks[1].cancel()
                    if self._inflight:
                        await asyncio.wait(self._inflight, timeout=_SHUTDOWN_GRACE_S)
                    await client.publish(
                        self.status_topic, self._status("offline"), qos=1, retain=True
                    )
                for finished in done:
                    finished.result()  # raises what ended the session
            finally:
                self._client = None
                self._connected.clear()
                for task in (*tasks, *self._inflight):
                    task.cancel()
                await asyncio.gather(*tasks, *self._inflight, return_exceptions=True)
                if not lost.done():
                    lost.cancel()
                elif not lost.cancelled():
                    # A publish can fail after another task already ended the session;
                    # its error says the same thing, so retrieve it instead of letting
                    # asyncio report "Future exception was never retrieved".
                    lost.exception()

    async def _stopped(self) -> None:
        await self._stop.wait()

    async def _subscribe(self, client: aiomqtt.Client, topic_filter: str) -> None:
        granted = await client.subscribe(topic_filter, qos=SUBSCRIBE_QOS)
        if not refused([topic_filter], granted):
            self._refused.discard(topic_filter)
            return
        if topic_filter not in self._refused:
            log.warning(
                "MQTT %s refused the subscription to %s; asking again", self._rotation, topic_filter
            )
        self._refused.add(topic_filter)
        self._refusal.set()

    async def _resubscribe(self, client: aiomqtt.Client) -> None:
        """Ask again, with backoff, for what the broker refused: a broker may refuse for a
        while (NATS while JetStream elects the leaders a lost node held), and the
        session's data must flow meanwhile, so the session goes on."""
        while True:
            await self._refusal.wait()
            delay = self._config.reconnect_min_s
            while self._refused:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                for topic_filter in list(self._refused):
                    await self._subscribe(client, topic_filter)
                delay = min(self._config.reconnect_max_s, 2 * delay)
            self._refusal.clear()

    def _new_client(self) -> aiomqtt.Client:
        config = self._config
        client = new_client(
            config,
            self._client_id,
            endpoint=self._rotation.current,
            will=aiomqtt.Will(self.status_topic, self._status("offline"), qos=1, retain=True),
            clean=True,  # the outbox, not the broker session, is what survives us
            max_inflight_messages=config.max_inflight,
        )
        client.pending_calls_threshold = config.max_inflight + 16
        return client

    def _status(self, state: str) -> bytes:
        doc = {"state": state, "version": __version__, "engine": self._engine, "ts": time.time()}
        return json.dumps(doc, separators=(",", ":")).encode()

    # Publishing

    async def _drain(self, client: aiomqtt.Client, lost: asyncio.Future[None]) -> None:
        """Hand outbox messages to the client in id order, `max_inflight` at a time.

        Each publish is its own task so PUBACKs overlap; tasks start in creation order,
        and each hands its message to paho before its first await, so the wire order
        is the outbox order.
        """
        window = asyncio.Semaphore(self._config.max_inflight)
        after = 0
        while True:
            for message in await self._outbox.next_batch(after, _READ_BATCH):
                if self._pace is not None:
                    await self._pace.wait()
                await window.acquire()
                task = asyncio.create_task(self._publish(client, message, window, lost))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                after = message.id

    async def _publish(
        self,
        client: aiomqtt.Client,
        message: Message,
        window: asyncio.Semaphore,
        lost: asyncio.Future[None],
    ) -> None:
        properties = None
        if message.content_type is not None and self._config.protocol == "5":
            properties = _properties(ContentType=message.content_type)
        try:
            await client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=properties,
                timeout=math.inf,  # a lost connection ends the session, not a timer
            )
        except aiomqtt.MqttError as err:
            if not lost.done():
                lost.set_exception(err)
            return
        finally:
            window.release()
        self._outbox.ack(message)
        self._published += 1

    # Receiving

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Dispatch incoming messages; raises MqttError when the connection is lost."""
        async for message in client.messages:
            incoming = _incoming(message)
            for topic_filter, handler in self._handlers.items():
                if matches(incoming.topic, topic_filter):
                    task = asyncio.create_task(self._handle(topic_filter, handler, incoming))
                    self._handling.add(task)
                    task.add_done_callback(self._handling.discard)

    @staticmethod
    async def _handle(topic_filter: str, handler: Handler, incoming: Incoming) -> None:
        try:
            await handler(incoming)
        except Exception:
            log.exception("handler for %s failed on %s", topic_filter, incoming.topic)


def _properties(**values: object) -> Properties:
    """MQTT 5 PUBLISH properties, e.g. `_properties(ContentType="application/json")`."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def _incoming(message: aiomqtt.Message) -> Incoming:
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        data = bytes(payload)
    else:
        data = b"" if payload is None else str(payload).encode()
    props = message.properties
    response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
    correlation = getattr(props, "CorrelationData", None) if props is not None else None
    return Incoming(
        topic=message.topic.value,
        payload=data,
        response_topic=response_topic,
        correlation_data=correlation,
        retain=message.retain,
    )
