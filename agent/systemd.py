"""systemd's notify protocol without libsystemd: READY, STATUS, STOPPING and the watchdog.

Each notification is one datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET` (a path, or
an abstract socket when it starts with `@`). Outside systemd the variable is unset and
every call does nothing, so the runtime calls these unconditionally. A failed send is
logged, never raised: a notification must not take the agent down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager named by the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval(env)
        """Half of WatchdogSec, or None when systemd expects no pings from this process."""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram; True if it was sent."""
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message, self.address)
        except OSError as err:
            log.warning("sd_notify %r failed: %s", lines, err)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """Ping the watchdog every half WatchdogSec until cancelled; return at once if off.

        Run it as a task on the agent's own loop: if the loop stalls, the pings stop and
        systemd restarts the agent, which is the point of the watchdog.
        """
        interval = self.watchdog_interval_s
        if interval is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + text.replace("\n", " "),)


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if not value.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying", value)
        return None
    return value


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; no watchdog", usec)
        return None
    return value / 2 / 1_000_000 if value > 0 else None
