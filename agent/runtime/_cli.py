"""`edge-agent run`: the daemon, in the foreground (systemd runs it as `Type=notify`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.runtime._agent import Agent
from agent.runtime._lifecycle import run_until_stopped

log = logging.getLogger(__name__)


def add_run_command(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run the agent: poll devices, run modules, publish to MQTT",
        description="Runs the agent in the foreground until SIGTERM or SIGINT (a second "
        "one, or the grace period, forces the stop). SIGHUP, or `config.reload` over MQTT, "
        "restarts it in place with the re-read file, if that file is valid.",
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


async def serve(config: AgentConfig, config_path: Path | None, *, grace_s: float = 15.0) -> None:
    """Run agents one after another while `config.reload` or SIGHUP asks for a fresh
    start with the re-read file. A file that does not validate changes nothing."""
    loop = asyncio.get_running_loop()
    while True:
        agent = Agent(config, config_path=config_path)
        if config_path is not None:
            loop.add_signal_handler(signal.SIGHUP, _reload, agent, config_path)
        try:
            reloaded = await run_until_stopped(agent.run, grace_s=grace_s)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
        if reloaded is None:
            return
        log.info("config reloaded from %s: starting again", config_path)
        config = reloaded


def _reload(agent: Agent, config_path: Path) -> None:
    try:
        agent.restart(load_config(config_path))
    except ConfigError as err:
        log.error("SIGHUP: the config was not reloaded, the agent goes on as it was: %s", err)
