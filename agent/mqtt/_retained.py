"""A short operator's session with the broker: read what is retained, watch it, publish.

`edge-agent fleet` reads a whole fleet's retained state in one round trip, and must know
when the broker has sent all of it without waiting a fixed time. It subscribes to a probe
topic of its own in the same SUBSCRIBE as the filters and publishes to it once: a broker
sends a subscription's retained messages before anything published after the SUBSCRIBE,
so when the probe comes back the retained burst is over (a short grace covers brokers
that interleave). The session keeps no broker state: a fresh client id, a clean start.
It must not know the fleet's topics beyond the probe's. Its subscriptions are QoS 0: a
clean session gains nothing from QoS 1, and on NATS each would wait for a JetStream
consumer (a long wait after a cluster node died).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import aiomqtt

from agent.config import MqttConfig
from agent.errors import BrokerRefused, BrokerUnreachable
from agent.mqtt._client import SubscriptionRefused, new_client, subscribe
from agent.mqtt._endpoints import describe

T = TypeVar("T")

PROBE_GRACE_S = 0.05
"""How long to keep taking messages as retained after the probe came back."""


class Subscription:
    """The retained messages on some filters as of one moment, then what changes.

    `retained` is complete when `BrokerSession.subscribe` yields it; iterating gives the
    messages that arrived after it, in order (an empty payload is a cleared topic).
    """

    def __init__(self, filters: Sequence[str]) -> None:
        self.filters = tuple(filters)
        self.retained: dict[str, bytes] = {}
        self._live: asyncio.Queue[tuple[str, bytes] | BaseException] | None = None

    def matches(self, topic: aiomqtt.Topic) -> bool:
        return any(topic.matches(f) for f in self.filters)

    def deliver(self, topic: str, payload: bytes) -> None:
        if self._live is not None:
            self._live.put_nowait((topic, payload))
        elif payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)

    def go_live(self) -> None:
        self._live = asyncio.Queue()

    def fail(self, err: BaseException) -> None:
        if self._live is not None:
            self._live.put_nowait(err)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        if self._live is None:
            raise RuntimeError("the subscription is not live yet")
        item = await self._live.get()
        if isinstance(item, BaseException):
            raise item
        return item


class BrokerSession:
    """One connection to the first `config.endpoints` broker that accepts it; an async
    context manager. `timeout_s` bounds the connect, each publish and each retained read."""

    def __init__(self, config: MqttConfig, *, timeout_s: float = 10.0) -> None:
        self._config = config
        self._timeout_s = timeout_s
        self._token = uuid.uuid4().hex[:12]
        self.probe_topic = f"{config.topic_prefix}/fleet/probe/{self._token}"
        self.broker = ""
        """`host:port` of the broker connected to."""
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscriptions: list[Subscription] = []
        self._probes: dict[bytes, asyncio.Future[None]] = {}
        self._lost: BaseException | None = None

    async def __aenter__(self) -> Self:
        failures = []
        for endpoint in self._config.endpoints:
            client = new_client(
                self._config,
                f"edge-agent-fleet-{self._token}",
                endpoint=endpoint,
                clean=True,
                timeout=self._timeout_s,
            )
            try:
                async with asyncio.timeout(self._timeout_s):
                    await client.__aenter__()
            except TimeoutError:
                failures.append((describe(endpoint), f"no CONNACK within {self._timeout_s:g} s"))
                continue
            except aiomqtt.MqttError as err:
                failures.append((describe(endpoint), str(err) or type(err).__name__))
                continue
            self._client, self.broker = client, describe(endpoint)
            self._reader = asyncio.create_task(self._read(client))
            return self
        if len(failures) == 1:
            raise BrokerUnreachable(failures[0][0], "unreachable", failures[0][1])
        raise BrokerUnreachable(
            ", ".join(b for b, _ in failures),
            "unreachable",
            "no broker accepted the connection ("
            + "; ".join(f"{b}: {e}" for b, e in failures)
            + ")",
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)
        self._client = self._reader = None

    @contextlib.asynccontextmanager
    async def subscribe(self, filters: Sequence[str]) -> AsyncIterator[Subscription]:
        """A subscription to `filters` whose `retained` is complete; unsubscribed on exit."""
        client = self._connected()
        subscription = Subscription(filters)
        self._subscriptions.append(subscription)
        try:
            await self._call(subscribe(client, [*filters, self.probe_topic], 0), "subscribe")
            token = uuid.uuid4().hex.encode()
            arrived = asyncio.get_running_loop().create_future()
            self._probes[token] = arrived
            try:
                await self._call(client.publish(self.probe_topic, token, qos=1), "publish")
                await self._call(arrived, f"the probe on {self.probe_topic} to come back")
            finally:
                self._probes.pop(token, None)
            await asyncio.sleep(PROBE_GRACE_S)
            subscription.go_live()
            yield subscription
        finally:
            self._subscriptions.remove(subscription)
            if self._lost is None:
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(self._timeout_s):
                        await client.unsubscribe(list(filters))

    async def read_retained(self, filters: Sequence[str]) -> dict[str, bytes]:
        """Every retained message on `filters`, by topic."""
        async with self.subscribe(filters) as subscription:
            return dict(subscription.retained)

    async def watch(self, filters: Sequence[str]) -> AsyncIterator[tuple[str, bytes]]:
        """The retained messages on `filters`, then every later one, as `(topic, payload)`."""
        async with self.subscribe(filters) as subscription:
            for item in subscription.retained.items():
                yield item
            async for item in subscription:
                yield item

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = True, qos: int = 1
    ) -> None:
        """Publish and, at QoS 1, wait for the broker's PUBACK; an empty retained payload
        clears the topic."""
        client = self._connected()
        await self._call(client.publish(topic, payload, qos=qos, retain=retain), "publish")

    def _connected(self) -> aiomqtt.Client:
        if self._lost is not None:
            raise BrokerUnreachable(self.broker, "unreachable", f"connection lost: {self._lost}")
        if self._client is None:
            raise RuntimeError("the session is not connected (use it as `async with`)")
        return self._client

    async def _call(self, awaitable: Awaitable[T], what: str) -> T:
        """`awaitable` within the session's timeout; broker failures as `BrokerUnreachable`."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await awaitable
        except TimeoutError as err:
            raise BrokerUnreachable(
                self.broker, "timeout", f"no answer to {what} within {self._timeout_s:g} s"
            ) from err
        except SubscriptionRefused as err:
            raise BrokerRefused(f"{self.broker}: {what}: {err}") from err
        except aiomqtt.MqttError as err:
            raise BrokerUnreachable(self.broker, "unreachable", f"{what}: {err}") from err

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload or "").encode()
                if message.topic.value == self.probe_topic:
                    arrived = self._probes.get(data)
                    if arrived is not None and not arrived.done():
                        arrived.set_result(None)
                    continue
                for subscription in self._subscriptions:
                    if subscription.matches(message.topic):
                        subscription.deliver(message.topic.value, data)
        except aiomqtt.MqttError as err:
            self._lost = err
            lost = BrokerUnreachable(self.broker, "unreachable", f"connection lost: {err}")
            for subscription in self._subscriptions:
                subscription.fail(lost)
            for arrived in self._probes.values():
                if not arrived.done():
                    arrived.set_exception(lost)
