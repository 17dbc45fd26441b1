"""Which broker to connect to next, and when: round robin over `mqtt.endpoints`.

A lost or failed connection moves on to the next endpoint. A lost connection waits
`reconnect_min_s` (with jitter) first, so that a fleet that lost one node of a cluster
does not land on the next one in step; a failed connect tries the next endpoint at
once, and only a failure of every endpoint in turn backs off, doubling per round up to
`reconnect_max_s`. A connection lost within `STABLE_S` counts as a failed one: a broker
that accepts the client and then drops it (a topic it refuses, a quota) gets the
backoff, not a reconnect twice a second. It must not connect: the link, the watcher and
the Sparkplug session own their connections and report to it.
"""

from __future__ import annotations

import random
import time

from agent.config import MqttConfig

STABLE_S = 10.0


def describe(endpoint: tuple[str, int]) -> str:
    """`host:port`, or `[v6]:port`, as an operator writes it in `mqtt.hosts`."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Rotation:
    """The endpoint to try now, the pause before the next attempt, the failovers made."""

    def __init__(self, config: MqttConfig) -> None:
        self._endpoints = config.endpoints
        self._min_s = config.reconnect_min_s
        self._max_s = config.reconnect_max_s
        self._index = 0
        self._failed = 0
        """Connects failed in a row."""
        self._up_since: float | None = None
        self._last: int | None = None
        """The endpoint of the last connection made."""
        self.failovers = 0
        """Connections made to another endpoint than the connection before."""

    @property
    def current(self) -> tuple[str, int]:
        return self._endpoints[self._index]

    def __str__(self) -> str:
        return describe(self.current)

    def connected(self) -> None:
        """The current endpoint accepted the connection."""
        if self._last is not None and self._last != self._index:
            self.failovers += 1
        self._last, self._up_since = self._index, time.monotonic()

    def next(self) -> float:
        """Move on after the connection ended or failed; the seconds to wait first."""
        self._index = (self._index + 1) % len(self._endpoints)
        up_since, self._up_since = self._up_since, None
        if up_since is not None and time.monotonic() - up_since >= STABLE_S:
            self._failed = 0
            return self._min_s * random.uniform(0.5, 1.0)
        self._failed += 1
        rounds, tried = divmod(self._failed, len(self._endpoints))
        if tried:
            return 0.0  # endpoints left to try in this round
        # Jitter: nodes must not reconnect in step.
        return min(self._max_s, self._min_s * 2.0 ** (rounds - 1)) * random.uniform(0.5, 1.0)
