"""The deadline ticker: it ticks only while calls are in flight, and wakes again."""

from __future__ import annotations

import threading
import time

from agent.wasm.engines._ticker import Ticker


def wait_for(condition: threading.Event, timeout: float = 2.0) -> bool:
    return condition.wait(timeout)


def test_ticks_only_while_entered_and_wakes_after_idling() -> None:
    ticked = threading.Event()
    ticker = Ticker("test-ticker", 0.001, ticked.set)
    try:
        time.sleep(0.05)
        assert not ticked.is_set(), "ticked with no call in flight"
        for _ in range(3):  # each round: idle, then a call wakes the thread again
            ticker.enter()
            assert wait_for(ticked), "no tick while a call was in flight"
            ticker.leave()
            time.sleep(0.02)  # the thread notices it is idle and waits
            ticked.clear()
            time.sleep(0.02)
            assert not ticked.is_set(), "kept ticking after the last call left"
    finally:
        started = time.monotonic()
        ticker.close()
        assert time.monotonic() - started < 1.0


def test_a_failing_tick_does_not_stop_the_ticks_after_it() -> None:
    ticks: list[int] = []
    again = threading.Event()

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 1:
            raise RuntimeError("the first tick fails")
        again.set()

    ticker = Ticker("test-ticker", 0.001, tick)
    try:
        ticker.enter()
        assert wait_for(again), "ticking stopped after a failed tick"
    finally:
        ticker.leave()
        ticker.close()
