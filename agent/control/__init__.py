"""The local control socket: the running agent's status for `edge-agent status`."""

from agent.control._cli import (
    EXIT_HEALTHY,
    EXIT_NO_ANSWER,
    EXIT_NOT_RUNNING,
    EXIT_UNHEALTHY,
    add_status_command,
)
from agent.control._client import fetch_status, request
from agent.control._server import SOCKET_MODE, ControlServer

__all__ = [
    "EXIT_HEALTHY",
    "EXIT_NOT_RUNNING",
    "EXIT_NO_ANSWER",
    "EXIT_UNHEALTHY",
    "SOCKET_MODE",
    "ControlServer",
    "add_status_command",
    "fetch_status",
    "request",
]
