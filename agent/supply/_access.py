"""How to reach a registry: auth, CA, retry policy. Plain data, without httpx, so the
agent imports the HTTP client only when a module comes from a registry."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry a request that failed for network reasons."""

    attempts: int = 4
    initial_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so many nodes do not retry in step."""
        return random.uniform(0, min(self.max_s, self.initial_s * 2**attempt))


@dataclass(frozen=True)
class RegistryAccess:
    """How to reach one registry host."""

    insecure: bool = False
    """Plain HTTP. Only for loopback test registries."""
    ca: Path | None = None
    username: str | None = None
    password: str | None = None
    retry: Retry = Retry()
    timeout_s: float = 30.0
