"""A plain subscriber: what any consumer of the node's topics sees (the demo's view)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import aiomqtt

from agent.config import MqttConfig
from agent.mqtt._client import SubscriptionRefused, new_client, subscribe
from agent.mqtt._endpoints import Rotation

log = logging.getLogger(__name__)


async def watch(config: MqttConfig, topic_filter: str) -> AsyncIterator[tuple[str, bytes]]:
    """Yield `(topic, payload)` for every message on `topic_filter`, reconnecting as
    needed, to the next of `mqtt.hosts` (a subscriber may start before its broker)."""
    rotation = Rotation(config)
    identifier = f"edge-agent-watch-{uuid.uuid4().hex[:8]}"
    while True:
        try:
            async with new_client(config, identifier, endpoint=rotation.current) as client:
                rotation.connected()
                await subscribe(client, [topic_filter], 1)
                async for message in client.messages:
                    payload = message.payload
                    data = payload if isinstance(payload, bytes) else str(payload).encode()
                    yield str(message.topic), data
        except SubscriptionRefused as err:
            log.warning("watch %s on %s: %s; trying again", topic_filter, rotation, err)
        except aiomqtt.MqttError as err:
            log.debug("watch %s on %s: %s; reconnecting", topic_filter, rotation, err)
        await asyncio.sleep(rotation.next())
