"""`edge-agent status`: the snapshot for people or scripts, and a health probe.

Exit codes: 0 healthy, 1 unhealthy (the reasons are printed), 3 the agent is not
running (no socket, or nothing listening), 4 the agent answered nonsense or not at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.config import ControlConfig, load_config
from agent.control._client import fetch_status
from agent.errors import AgentNotRunning, ControlError

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_NOT_RUNNING = 3
EXIT_NO_ANSWER = 4


def add_status_command(commands: Any) -> None:
    """Add `status` to the CLI's subcommands (an argparse `_SubParsersAction`)."""
    status = commands.add_parser(
        "status",
        help="show a running agent's status; exits non-zero when it is unhealthy",
        description="Asks the running agent over its control socket and shows agent, MQTT, "
        "devices, modules and models. Exit codes: 0 healthy, 1 unhealthy, "
        "3 agent not running, 4 no usable answer.",
    )
    status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    where = status.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, metavar="PATH", help="the control socket")
    where.add_argument(
        "--config", type=Path, metavar="PATH", help="take control.socket from this config"
    )
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    if args.socket is not None:
        path = args.socket
    elif args.config is not None:
        path = load_config(args.config).control.socket
    else:
        path = ControlConfig().socket
    try:
        snapshot = fetch_status(path)
    except AgentNotRunning as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except ControlError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.json:
        sys.stdout.write(json.dumps(snapshot.model_dump(mode="json"), indent=2) + "\n")
    else:
        # Imported here: the daemon, which imports this module too, never needs rich.
        from rich.console import Console  # noqa: PLC0415

        from agent.control._render import render_status  # noqa: PLC0415

        render_status(snapshot, Console())
    return EXIT_HEALTHY if snapshot.health.healthy else EXIT_UNHEALTHY
