"""A plain subscriber: what any consumer of the node's topics sees (the demo's view)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import aiomqtt

from agent.config import MqttConfig
from agent.mqtt._client import new_client

log = logging.getLogger(__name__)


async def watch(config: MqttConfig, topic_filter: str) -> AsyncIterator[tuple[str, bytes]]:
    """Yield `(topic, payload)` for every message on `topic_filter`, reconnecting as
    needed (a subscriber may start before its broker)."""
    while True:
        try:
            async with new_client(config, f"edge-agent-watch-{uuid.uuid4().hex[:8]}") as client:
                await client.subscribe(topic_filter, qos=1)
                async for message in client.messages:
                    payload = message.payload
                    data = payload if isinstance(payload, bytes) else str(payload).encode()
                    yield str(message.topic), data
        except aiomqtt.MqttError as err:
            log.debug("watch %s: %s; reconnecting", topic_filter, err)
            await asyncio.sleep(0.5)
