"""Signals to a graceful stop: the first asks, a second or the grace period forces."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")


async def run_until_stopped(
    main: Callable[[asyncio.Event], Awaitable[T]], *, grace_s: float = 15.0
) -> T | None:
    """Run `main(stop)`; SIGTERM or SIGINT sets `stop`, and `main` winds down by itself.

    Returns what `main` returned, or None when it had to be cancelled.

    A second signal, or `grace_s` seconds after the first, cancels `main`: an operator
    who presses Ctrl-C twice, or systemd's stop timeout, must always win.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.ensure_future(main(stop))

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: stopping now", sig.name)
            task.cancel()
            return
        log.info("%s: stopping (send it again to force)", sig.name)
        stop.set()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                log.warning("still stopping after %.0f s: stopping now", grace_s)
                task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # the caller itself was cancelled
            return None
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
