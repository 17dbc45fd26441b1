"""The control socket and `edge-agent status` against a real server on a temp socket."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from io import StringIO
from pathlib import Path
from typing import TypeVar

import pytest
from rich.console import Console

from agent.control import (
    EXIT_NO_ANSWER,
    EXIT_NOT_RUNNING,
    EXIT_UNHEALTHY,
    ControlServer,
    fetch_status,
    request,
)
from agent.control._render import render_status
from agent.errors import AgentNotRunning, ControlError
from agent.status import StatusSnapshot

from .conftest import REPO
from .snapshots import make_snapshot

T = TypeVar("T")


def serving(
    path: Path, provider: Callable[[], StatusSnapshot], body: Callable[[], Awaitable[T]]
) -> T:
    async def main() -> T:
        async with ControlServer(path, provider):
            return await body()

    return asyncio.run(main())


async def edge_agent(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_status_json_has_every_section_and_exit_0_when_healthy(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    snapshot = make_snapshot()

    async def body() -> tuple[int, str, str, int]:
        mode = stat.S_IMODE(sock.stat().st_mode)
        return (*await edge_agent("status", "--json", "--socket", str(sock)), mode)

    code, out, err, mode = serving(sock, lambda: snapshot, body)
    assert (code, err) == (0, "")
    assert mode == 0o660
    doc = json.loads(out)
    assert {"agent", "mqtt", "devices", "modules", "models", "health"} <= doc.keys()
    assert StatusSnapshot.model_validate(doc) == snapshot
    assert not sock.exists(), "the server removes its socket on exit"


def test_status_exits_1_and_names_the_offline_device(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    snapshot = make_snapshot(device_state="offline")

    async def body() -> tuple[int, str, str]:
        return await edge_agent("status", "--socket", str(sock))

    code, out, _ = serving(sock, lambda: snapshot, body)
    assert code == EXIT_UNHEALTHY
    assert "unhealthy" in out
    assert "device 'pump-1' offline: no response from unit 1" in out


def test_status_exits_3_when_no_agent_runs(tmp_path: Path) -> None:
    code, out, err = asyncio.run(edge_agent("status", "--socket", str(tmp_path / "none.sock")))
    assert (code, out) == (EXIT_NOT_RUNNING, "")
    assert "is edge-agent running?" in err


def test_status_reads_the_socket_path_from_the_config(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    config = tmp_path / "agent.toml"
    config.write_text('[control]\nsocket = "c.sock"\n')
    snapshot = make_snapshot()

    async def body() -> tuple[int, str, str]:
        return await edge_agent("status", "--json", "--config", str(config))

    code, out, _ = serving(sock, lambda: snapshot, body)
    assert code == 0
    assert json.loads(out)["agent"]["node_id"] == "gateway-17"


def test_a_failing_provider_is_reported_and_the_server_keeps_serving(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    snapshot = make_snapshot()
    calls = []

    def provider() -> StatusSnapshot:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("supervisor not started")
        return snapshot

    async def body() -> tuple[tuple[int, str, str], StatusSnapshot]:
        first = await edge_agent("status", "--socket", str(sock))
        return first, await asyncio.to_thread(fetch_status, sock)

    (code, _, err), second = serving(sock, provider, body)
    assert code == EXIT_NO_ANSWER
    assert "supervisor not started" in err
    assert second.agent.node_id == "gateway-17"


def test_unknown_ops_and_garbage_get_an_error_answer(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    snapshot = make_snapshot()

    def raw(line: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock))
            s.sendall(line)
            return s.makefile("rb").readline()

    async def body() -> list[bytes]:
        return [await asyncio.to_thread(raw, line) for line in (b"{nope\n", b'{"op": "reboot"}\n')]

    garbage, unknown = serving(sock, lambda: snapshot, body)
    assert json.loads(garbage) == {"ok": False, "error": "request is not JSON: b'{nope\\n'"}
    assert json.loads(unknown) == {
        "ok": False,
        "error": "unknown op 'reboot'; expected one of: status",
    }

    async def refused() -> None:
        with pytest.raises(ControlError, match="unknown op 'reboot'"):
            await asyncio.to_thread(request, sock, "reboot")

    serving(sock, lambda: snapshot, refused)


def test_a_stale_socket_is_replaced_but_a_live_one_is_not_stolen(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    snapshot = make_snapshot()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()  # the file stays, nobody listens: what a killed agent leaves

    async def second_server() -> None:
        with pytest.raises(ControlError, match="another agent is serving"):
            async with ControlServer(sock, lambda: snapshot):
                pass

    serving(sock, lambda: snapshot, second_server)

    regular = tmp_path / "file"
    regular.write_text("x")

    async def not_a_socket() -> None:
        with pytest.raises(ControlError, match="is not a socket"):
            async with ControlServer(regular, lambda: snapshot):
                pass

    asyncio.run(not_a_socket())
    with pytest.raises(AgentNotRunning):
        fetch_status(sock)


def test_rendering_shows_every_section() -> None:
    out = StringIO()
    render_status(
        make_snapshot(module_failed=True, mqtt_connected=False), Console(file=out, width=160)
    )
    text = out.getvalue()
    for expected in (
        "7 readings not yet taken by every module",
        "3 dropped by its bounds",
        "gateway-17",
        "wasmtime",
        "1h 2m 5s",
        "127.0.0.1:1883",
        "pump-1",
        "scale",
        "sha256:abababababab",
        "faulty",
        "anomaly",
        "24.0 KiB",
        "module 'faulty' failed",
        "Sparkplug B",
        "2 (bdSeq 4)",
        "2 (1 to another broker node)",
    ):
        assert expected in text, expected
