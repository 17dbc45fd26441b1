"""sd_notify against a real datagram socket set as NOTIFY_SOCKET, as systemd listens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.systemd import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("2 modules, 1 device")
    assert receive(sock) == "READY=1\nSTATUS=2 modules, 1 device"
    assert notifier.status("polling\nslowly")
    assert receive(sock) == "STATUS=polling slowly"
    assert notifier.stopping()
    assert receive(sock) == "STOPPING=1"


def test_abstract_socket_names_start_with_at() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == "READY=1"


def test_watchdog_pings_at_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    # WatchdogSec=0.2 s: a ping every 0.1 s.
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env)
    assert notifier.watchdog_interval_s == pytest.approx(0.1)
    sock.setblocking(False)

    async def main() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(notifier.keep_alive())
        pings: list[tuple[float, str]] = []
        start = loop.time()
        while len(pings) < 3:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
            pings.append((loop.time() - start, data.decode()))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return pings

    pings = asyncio.run(main())
    assert [text for _, text in pings] == ["WATCHDOG=1"] * 3
    # The third ping comes two intervals after the first: not flooding, not late.
    assert pings[2][0] - pings[0][0] >= 0.19


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, "the watchdog is another process's"),
        ({"WATCHDOG_USEC": "soon"}, "not a number"),
        ({}, "no WatchdogSec"),
    ],
)
def test_no_watchdog_when_it_is_not_ours(
    listener: tuple[socket.socket, str], env: dict[str, str], why: str
) -> None:
    _, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, **env})
    assert notifier.watchdog_interval_s is None, why
    asyncio.run(asyncio.wait_for(notifier.keep_alive(), 1))  # returns at once


def test_outside_systemd_nothing_is_sent(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert not Notifier({}).ready()
    # A socket that vanished (systemd restarted) is logged, not raised.
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready()
