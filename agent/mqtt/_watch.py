"""A plain subscriber: what any consumer of the node's topics sees (the demo's view)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import aiomqtt

from agent.config import MqttConfig

log = logging.getLogger(__name__)


async def watch(config: MqttConfig, topic_filter: str) -> AsyncIterator[tuple[str, bytes]]:
    """Yield `(topic, payload)` for every message on `topic_filter`, reconnecting as
    needed (a subscriber may start before its broker)."""
    v5 = config.protocol == "5"
    while True:
        try:
            async with aiomqtt.Client(
                config.host,
                config.broker_port,
                identifier=f"edge-agent-watch-{uuid.uuid4().hex[:8]}",
                protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
                username=config.username,
                password=config.secret,
                keepalive=config.keepalive,
                tls_context=config.tls.context if config.tls is not None else None,
                timeout=config.connect_timeout_s,
            ) as client:
                await client.subscribe(topic_filter, qos=1)
                async for message in client.messages:
                    payload = message.payload
                    data = payload if isinstance(payload, bytes) else str(payload).encode()
                    yield str(message.topic), data
        except aiomqtt.MqttError as err:
            log.debug("watch %s: %s; reconnecting", topic_filter, err)
            await asyncio.sleep(0.5)
