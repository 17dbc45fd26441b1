"""`edge-agent run`: the daemon, in the foreground (systemd runs it as `Type=notify`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.runtime._agent import Agent
from agent.runtime._lifecycle import run_until_stopped

log = logging.getLogger(__name__)


def add_run_command(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run the agent: poll devices, run modules, publish to MQTT",
        description="Runs the agent in the foreground until SIGTERM or SIGINT (a second "
        "one, or the grace period, forces the stop). `config.reload` over MQTT restarts "
        "it in place with the re-read file.",
    )
    run.add_argument("--config", type=Path, required=True, metavar="agent.toml")
    run.add_argument(
        "--grace", type=float, default=15.0, metavar="SECONDS", help="stop timeout (15)"
    )
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.log_level is None:
        logging.getLogger().setLevel(config.logging.level.upper())
    asyncio.run(serve(config, args.config, grace_s=args.grace))
    return 0


async def serve(config: Any, config_path: Path | None, *, grace_s: float = 15.0) -> None:
    """Run agents one after another while `config.reload` asks for a fresh start."""
    while True:
        agent = Agent(config, config_path=config_path)
        await run_until_stopped(agent.run, grace_s=grace_s)
        if agent.reload is None:
            return
        log.info("config reloaded from %s: starting again", config_path)
        config = agent.reload
