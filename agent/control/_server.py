"""The control socket server: answers local clients with the status snapshot.

It owns the socket file (created with mode 0660, removed on close) and nothing else:
what the snapshot says comes from the provider the runtime injects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

from agent._json import parse_json
from agent._oneshot import OneShotServer
from agent.control._protocol import MAX_REQUEST_BYTES, OPS, encode
from agent.errors import ControlError
from agent.status import SnapshotProvider

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
"""Owner and group (operators added to the agent's group) may ask; nobody else."""


class ControlServer(OneShotServer):
    """`async with ControlServer(path, provider):` serves `{"op": "status"}` on `path`."""

    def __init__(
        self, path: Path, provider: SnapshotProvider, *, request_timeout_s: float = 5.0
    ) -> None:
        super().__init__(request_timeout_s)
        self.path = path
        self._provider = provider

    async def __aenter__(self) -> ControlServer:
        _remove_stale(self.path)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_REQUEST_BYTES
            )
            os.chmod(self.path, SOCKET_MODE)
        except OSError as err:
            await self._stop()
            raise ControlError(f"cannot serve the control socket {self.path}: {err}") from err
        log.info("control socket: %s", self.path)
        return self

    async def _stop(self) -> None:
        await super()._stop()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        return await reader.readline()

    def _answer(self, request: bytes) -> bytes:
        return encode(self._reply(request))

    def _reply(self, line: bytes) -> dict[str, object]:
        try:
            request = parse_json(line)
        except ValueError:
            return _refuse(f"request is not JSON: {line[:80]!r}")
        op = request.get("op") if isinstance(request, dict) else None
        if op not in OPS:
            return _refuse(f"unknown op {op!r}; expected one of: {', '.join(OPS)}")
        try:
            snapshot = self._provider()
        except Exception as err:
            # The probe must answer even when the runtime is broken: say so, keep serving.
            log.exception("control socket: the status provider failed")
            return _refuse(f"the agent could not build its status: {err}")
        return {"ok": True, "data": snapshot.model_dump(mode="json")}


def _refuse(message: str) -> dict[str, object]:
    return {"ok": False, "error": message}


def _remove_stale(path: Path) -> None:
    """Remove a socket left by an agent that died; refuse to steal a live one's."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ControlError(f"another agent is serving {path}; is edge-agent already running?")
