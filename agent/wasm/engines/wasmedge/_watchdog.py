"""The deadline watchdog: one ticker thread that stops VMs whose call overran.

Calls run synchronously (`VMAsyncExecute` costs a thread, about 45 us, per call), so
something else must end a call that runs past its deadline: this, every 2 ms while any
call is watched, through the stop function each call gives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.wasm.engines._ticker import Ticker


@dataclass
class _Watch:
    due: float
    stop: Callable[[], None]
    fired: bool = False


class Watchdog:
    """Stops VMs whose synchronous call runs past its deadline."""

    def __init__(self) -> None:
        self._calls: dict[int, _Watch] = {}
        self._lock = threading.Lock()
        self._ticker = Ticker("wasmedge-deadline", 0.002, self._check)

    def start(self, key: int, deadline_ms: int, stop: Callable[[], None]) -> None:
        with self._lock:
            self._calls[key] = _Watch(time.monotonic() + deadline_ms / 1000, stop)
        self._ticker.enter()

    def finish(self, key: int) -> bool:
        """End the watch; True when the watchdog stopped the VM."""
        with self._lock:
            fired = self._calls.pop(key).fired
        self._ticker.leave()
        return fired

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            for watch in self._calls.values():
                if not watch.fired and now >= watch.due:
                    watch.fired = True
                    watch.stop()

    def close(self) -> None:
        self._ticker.close()
