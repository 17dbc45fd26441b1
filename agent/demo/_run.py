"""`edge-agent demo`: the simulated pump, the agent and the live view, in one process.

The view is an MQTT subscriber like any other: what it shows went through the
device poll, the modules, the durable outbox and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

from rich.console import Console
from rich.live import Live

from agent.config import AgentConfig, DeviceConfig, load_config
from agent.demo._setup import prepare
from agent.demo._view import DemoView
from agent.errors import ConfigError
from agent.mqtt import watch
from agent.runtime import Agent, run_until_stopped
from agent.sim import PumpDevice, PumpModel, SimServer

REPO = Path(__file__).resolve().parent.parent.parent
FIRST_FAULT_S = 45.0
"""A bearing fault this far into the demo, so an anomaly shows within a minute or two."""

log = logging.getLogger(__name__)


def demo(args: argparse.Namespace) -> int:
    """The `edge-agent demo` handler."""
    config = load_config(args.config)
    if args.log_level is None:
        logging.getLogger().setLevel(logging.WARNING)

    async def main(stop: asyncio.Event) -> None:
        if args.seconds is not None:
            asyncio.get_running_loop().call_later(args.seconds, stop.set)
        await run_demo(config, stop, plain=args.plain)

    asyncio.run(run_until_stopped(main))
    return 0


async def run_demo(config: AgentConfig, stop: asyncio.Event, *, plain: bool) -> None:
    """Prepare the signed modules, then run pump, agent and view until `stop`."""
    await refresh_modules(config, REPO / "modules")
    device = _pump_device(config)
    pump = PumpDevice(PumpModel(fault_rate_per_h=20.0))
    asyncio.get_running_loop().call_later(FIRST_FAULT_S, pump.model.inject, "bearing")
    agent = Agent(config)
    view = DemoView(f"{config.mqtt.topic_prefix}/{config.node.id}")
    async with SimServer({device.unit: pump.image}, host=device.host or "", port=device.port):
        agent_task = asyncio.create_task(agent.run(stop), name="agent")
        show = asyncio.create_task(_show(config, view, plain), name="view")
        try:
            await asyncio.wait({agent_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            show.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await show
            stop.set()
            await agent_task


async def refresh_modules(config: AgentConfig, modules: Path) -> None:
    """Package and sign the bundled modules. One rebuilt since the last run keeps its
    version number, which the supply rightly refuses to swap in place: the demo's
    state, disposable, then starts afresh so the new build is the one that runs."""
    state = config.node.state_dir
    if await prepare(_keys_dir(config), _layouts(config), modules) and state.exists():
        shutil.rmtree(state)
        log.info("bundled modules changed: the demo's state in %s starts afresh", state)


async def _show(config: AgentConfig, view: DemoView, plain: bool) -> None:
    feed = watch(config.mqtt, f"{view.root}/#")
    if plain:
        async for topic, payload in feed:
            view.update(topic, payload)
            print(f"{topic} {payload.decode('utf-8', 'replace')}", flush=True)
        return
    console = Console()
    with Live(view.render(), console=console, refresh_per_second=4, screen=False) as live:
        async for topic, payload in feed:
            view.update(topic, payload)
            live.update(view.render())


def _pump_device(config: AgentConfig) -> DeviceConfig:
    pumps = [d for d in config.devices if d.transport == "tcp"]
    if len(pumps) != 1 or pumps[0].host not in ("127.0.0.1", "localhost"):
        raise ConfigError("the demo config needs exactly one tcp device on loopback: the pump")
    return pumps[0]


def _keys_dir(config: AgentConfig) -> Path:
    if len(config.supply.trusted_keys) != 1:
        raise ConfigError("the demo config needs exactly one trusted key: the demo key")
    return config.supply.trusted_keys[0].parent


def _layouts(config: AgentConfig) -> dict[str, Path]:
    layouts = {}
    for module in config.modules:
        if module.ref is None or not module.ref.startswith("oci:"):
            raise ConfigError(f"demo module {module.name!r} must come from an oci: layout")
        layouts[module.name] = Path(module.ref[4:].rpartition(":")[0])
    return layouts
