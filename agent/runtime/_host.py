"""One module instance on its own thread, fed one reading at a time, in order.

Engine calls are synchronous and may run up to their deadline; on the event loop they
would stall every device and the MQTT link. Each module therefore gets one worker
thread of its own: calls into one instance stay serial (instances are not thread-safe)
and modules do not wait for each other. Replacing the module runs on the same thread,
so a new version takes over exactly between two readings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from agent.errors import ModuleError
from agent.reading import Reading
from agent.status import ModuleStatus
from agent.wasm import Emitted, ReactorModule

_T = TypeVar("_T")
_LATENCY_WINDOW = 1024

log = logging.getLogger(__name__)


class ModuleHost:
    """Owns a `ReactorModule`, its worker thread and its statistics."""

    def __init__(self, name: str, *, version: str = "", digest: str = "") -> None:
        self.name = name
        self.version = version
        self.digest = digest
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"module-{name}")
        self._module: ReactorModule | None = None
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._invocations = 0
        self._errors = 0
        self._last_error: str | None = None
        self._logged_kinds: set[type[ModuleError]] = set()

    @classmethod
    async def start(
        cls,
        name: str,
        make: Callable[[], ReactorModule],
        *,
        version: str = "",
        digest: str = "",
    ) -> ModuleHost:
        """Build the module on its own thread (compiling can take a while) and start it."""
        host = cls(name, version=version, digest=digest)
        try:
            host._module = await host._run(make)
        except BaseException:
            host._executor.shutdown(wait=False)
            raise
        return host

    async def process(self, reading: Reading) -> list[Emitted]:
        """Run one reading; a module fault is counted, logged and raised to the caller."""
        started = time.perf_counter()
        try:
            messages = await self._run(self._on_reading, reading)
        except ModuleError as err:
            self._invocations += 1
            self._errors += 1
            self._last_error = str(err)
            self._log_fault(err)
            raise
        self._invocations += 1
        self._latencies.append(time.perf_counter() - started)
        return messages

    async def replace(
        self, make: Callable[[], ReactorModule], *, version: str, digest: str
    ) -> None:
        """Swap in a new version between two readings; the old one is closed.

        If the new module cannot be built, the running one stays and the error is raised.
        """
        new = await self._run(make)
        old = self._module
        self._module = new
        self.version, self.digest = version, digest
        self._latencies.clear()
        self._invocations = self._errors = 0
        self._last_error = None
        self._logged_kinds.clear()
        if old is not None:
            await self._run(old.close)

    def status(self) -> ModuleStatus:
        """Counters for `edge-agent status`; latencies over the last 1,024 calls."""
        ordered = sorted(self._latencies)
        return ModuleStatus(
            name=self.name,
            version=self.version,
            digest=self.digest,
            state="running" if self._module is not None else "stopped",
            invocations=self._invocations,
            errors=self._errors,
            last_error=self._last_error,
            p50_ms=_percentile(ordered, 0.50),
            p99_ms=_percentile(ordered, 0.99),
        )

    async def close(self) -> None:
        module, self._module = self._module, None
        if module is not None:
            await self._run(module.close)
        self._executor.shutdown(wait=True)

    def _on_reading(self, reading: Reading) -> list[Emitted]:
        if self._module is None:
            raise ModuleError(self.name, "is stopped")
        return self._module.on_reading(reading)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _log_fault(self, err: ModuleError) -> None:
        # The first fault of each kind is news; a module that keeps failing the same
        # way would otherwise fill the journal. Status shows the running count.
        kind = type(err)
        level = logging.DEBUG if kind in self._logged_kinds else logging.WARNING
        self._logged_kinds.add(kind)
        log.log(level, "%s (faults so far: %d)", err, self._errors)


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0
