"""The embedded broker: amqtt on a loopback port, for the demo and for trying the agent
without installing a broker.

amqtt speaks MQTT 3.1.1 only (it refuses a version 5 CONNECT), allows anonymous clients
and keeps nothing on disk, so it listens on loopback only and is no production broker.
The only module that imports amqtt, and only when a broker is started.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Self

from agent.errors import AgentError


class EmbeddedBroker:
    """`async with EmbeddedBroker() as broker:` serves MQTT 3.1.1 on `broker.host:broker.port`.

    `port=0` picks a free port.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the embedded broker listens on loopback only, not {host!r}")
        self.host = host
        self.port = port
        self._broker: Any = None

    async def __aenter__(self) -> Self:
        # Imported here: amqtt is heavy and only the demo needs it.
        from amqtt.broker import Broker  # type: ignore[import-untyped]  # noqa: PLC0415

        if self.port == 0:
            self.port = _free_port(self.host)
        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        try:
            await self._broker.start()
        except Exception as err:
            raise AgentError(
                f"the embedded MQTT broker cannot listen on {self.host}:{self.port}: {err}"
            ) from err
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await asyncio.shield(broker.shutdown())


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
