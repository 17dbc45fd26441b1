"""A background tick that runs only while calls are in flight.

Both engines enforce deadlines from a helper thread: wasmtime by advancing the epoch,
WasmEdge by stopping a VM whose call overran. An idle gateway should not wake up
hundreds of times a second for that, so the thread sleeps while no call runs; `enter`
and `leave` wrap every call and cost well under a microsecond (a plain lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Ticker:
    def __init__(self, name: str, interval_s: float, on_tick: Callable[[], None]) -> None:
        self.interval_s = interval_s
        self._on_tick = on_tick
        self._active = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            if self._active:
                self._on_tick()
                time.sleep(self.interval_s)
            else:
                self._wake.wait()
                self._wake.clear()

    def enter(self) -> None:
        with self._lock:
            self._active += 1
            if self._active == 1:
                self._wake.set()

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join()
