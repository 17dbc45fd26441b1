"""The control socket client, for `edge-agent status` and other local tools.

Blocking on purpose: the CLI does one exchange and exits; no event loop is needed.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent._json import parse_json
from agent.control._protocol import encode
from agent.errors import AgentNotRunning, ControlError
from agent.status import StatusSnapshot

MAX_RESPONSE_BYTES = 16 * 1024 * 1024


def request(path: Path, op: str, *, timeout_s: float = 5.0) -> Any:
    """Send `{"op": op}` and return the answer's `data`; raise ControlError otherwise."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise AgentNotRunning(
                f"no agent answers on {path} ({err.strerror}); is edge-agent running?"
            ) from err
        except OSError as err:
            raise ControlError(f"cannot connect to {path}: {err}") from err
        try:
            sock.sendall(encode({"op": op}))
            raw = _read_line(sock)
        except OSError as err:
            raise ControlError(f"{path}: no answer: {err}") from err
    try:
        answer = parse_json(raw, allow_nan=True)
    except ValueError as err:
        raise ControlError(f"{path}: the answer is not JSON: {raw[:80]!r}") from err
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError(f"{path}: the answer has no 'ok' field: {raw[:80]!r}")
    if not answer["ok"]:
        raise ControlError(f"the agent refused {op!r}: {answer.get('error')}")
    return answer.get("data")


def fetch_status(path: Path, *, timeout_s: float = 5.0) -> StatusSnapshot:
    data = request(path, "status", timeout_s=timeout_s)
    try:
        return StatusSnapshot.model_validate(data)
    except ValidationError as err:
        raise ControlError(f"{path}: the status does not match the schema: {err}") from err


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
        if size > MAX_RESPONSE_BYTES:
            raise ControlError(f"the answer is longer than {MAX_RESPONSE_BYTES} bytes")
    return b"".join(chunks)
