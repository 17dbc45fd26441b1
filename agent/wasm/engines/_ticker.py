"""A background tick that runs only while calls are in flight.

Both engines enforce deadlines from a helper thread: wasmtime by advancing the epoch,
WasmEdge by stopping a VM whose call overran. An idle gateway should not wake up
hundreds of times a second for that, so the thread sleeps while no call runs; `enter`
and `leave` wrap every call and cost a plain lock each: the thread is woken only when
it is idle, not on every call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Ticker:
    def __init__(self, name: str, interval_s: float, on_tick: Callable[[], None]) -> None:
        self.interval_s = interval_s
        self._on_tick = on_tick
        self._active = 0
        self._idle = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                self._idle = not self._active
                if self._idle:
                    self._wake.clear()
            if self._idle:
                self._wake.wait()
                continue
            try:
                self._on_tick()
            except Exception:  # one failed tick must not end every deadline after it
                log.exception("%s: a tick failed", self._thread.name)
            time.sleep(self.interval_s)

    def enter(self) -> None:
        with self._lock:
            self._active += 1
            if self._idle:
                self._idle = False
                self._wake.set()

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def close(self) -> None:
        with self._lock:  # under the lock: `_run` must not clear this wake-up
            self._closed = True
            self._wake.set()
        self._thread.join()
