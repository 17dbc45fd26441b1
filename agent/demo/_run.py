"""`edge-agent demo`: the simulated pump, the agent and the live view, in one process.

The view is an MQTT subscriber like any other: what it shows went through the
device poll, the modules, the durable outbox and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.live import Live

from agent.config import (
    AgentConfig,
    DeviceConfig,
    OpcuaDeviceConfig,
    SparkplugConfig,
    load_config,
)
from agent.demo._setup import prepare
from agent.demo._view import DemoView
from agent.errors import ConfigError
from agent.mqtt import new_client, watch
from agent.runtime import Agent, run_until_stopped
from agent.sim import PumpDevice, PumpModel, SimServer

REPO = Path(__file__).resolve().parent.parent.parent
FIRST_FAULT_S = 45.0
"""A bearing fault this far into the demo, so an anomaly shows within a minute or two."""
SPARKPLUG_GROUP = "demo"
SPARKPLUG_HOST = "demo-view"
"""The view's Sparkplug host id: the node's births wait for it to be online."""

log = logging.getLogger(__name__)


def demo(args: argparse.Namespace) -> int:
    """The `edge-agent demo` handler."""
    config = variant(load_config(args.config), sparkplug=args.sparkplug, opcua=args.opcua)
    if args.log_level is None:
        logging.getLogger().setLevel(logging.WARNING)

    async def main(stop: asyncio.Event) -> None:
        if args.seconds is not None:
            asyncio.get_running_loop().call_later(args.seconds, stop.set)
        await run_demo(config, stop, plain=args.plain)

    asyncio.run(run_until_stopped(main))
    return 0


def variant(config: AgentConfig, *, sparkplug: bool, opcua: bool) -> AgentConfig:
    """The demo's config with `--sparkplug` (Sparkplug B on, group "demo", the view its
    primary host) and `--opcua` (the pump an OPC UA server, with its node map) applied."""
    if sparkplug:
        group = SparkplugConfig(
            enabled=True, group_id=SPARKPLUG_GROUP, primary_host_id=SPARKPLUG_HOST
        )
        config = config.model_copy(update={"sparkplug": group})
    if opcua:
        modbus = _pump_device(config)
        pump = OpcuaDeviceConfig(
            name=modbus.name,
            transport="opcua",
            endpoint=f"opc.tcp://127.0.0.1:{modbus.port}/pump/",  # the Modbus pump's port
            map=REPO / "config" / "devices" / "pump-opcua.toml",
        )
        devices = tuple(pump if d is modbus else d for d in config.devices)
        config = config.model_copy(update={"devices": devices})
    return config


def _pump(config: AgentConfig, model: PumpModel) -> contextlib.AbstractAsyncContextManager[Any]:
    """The server of the simulated pump the config's pump device polls: Modbus TCP, or
    OPC UA when the device is an OPC UA one (`variant(..., opcua=True)`)."""
    for device in config.devices:
        if isinstance(device, OpcuaDeviceConfig):
            # Imported here: asyncua's server loads only when the demo serves OPC UA.
            from agent.sim.opcua_pump import OpcuaPump  # noqa: PLC0415

            # Its notes that a server without security has none say what the demo means.
            logging.getLogger("asyncua").setLevel(logging.ERROR)
            return OpcuaPump(model, port=urlsplit(device.endpoint).port or 4840)
    device = _pump_device(config)
    image = PumpDevice(model).image
    return SimServer({device.unit: image}, host=device.host or "", port=device.port)


async def run_demo(config: AgentConfig, stop: asyncio.Event, *, plain: bool) -> None:
    """Prepare the signed modules, then run pump, agent and view until `stop`."""
    await refresh_modules(config, REPO / "modules")
    model = PumpModel(fault_rate_per_h=20.0)
    asyncio.get_running_loop().call_later(FIRST_FAULT_S, model.inject, "bearing")
    agent = Agent(config)
    sparkplug = config.sparkplug
    view = DemoView(
        f"{config.mqtt.topic_prefix}/{config.node.id}",
        sparkplug_root=f"spBv1.0/{sparkplug.group_id}" if sparkplug.enabled else None,
    )
    async with _pump(config, model):
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
    feed = _feed(config, view)
    if plain:
        async for topic, payload in feed:
            view.update(topic, payload)
            print(f"{topic} {view.plain(topic, payload)}", flush=True)
        return
    console = Console()
    with Live(view.render(), console=console, refresh_per_second=4, screen=False) as live:
        async for topic, payload in feed:
            view.update(topic, payload)
            live.update(view.render())


async def _feed(config: AgentConfig, view: DemoView) -> AsyncIterator[tuple[str, bytes]]:
    """What the view shows: the node's topics, and its Sparkplug topics when it has them."""
    arrived: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def forward() -> None:
        async for message in watch(config.mqtt, f"{view.root}/#"):
            await arrived.put(message)

    tasks = [asyncio.create_task(forward())]
    if view.sparkplug_root is not None:
        tasks.append(asyncio.create_task(_sparkplug_host(config, view.sparkplug_root, arrived)))
    try:
        while True:
            yield await arrived.get()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _sparkplug_host(
    config: AgentConfig, root: str, arrived: asyncio.Queue[tuple[str, bytes]]
) -> None:
    """The view as the node's Sparkplug primary host (`primary_host_id`): it subscribes to
    the group's topics, then says online, so the node's births, which are not retained,
    come when it listens."""
    state = f"spBv1.0/STATE/{SPARKPLUG_HOST}"
    while True:
        try:
            async with new_client(
                config.mqtt, f"{SPARKPLUG_HOST}-{uuid.uuid4().hex[:8]}"
            ) as client:
                await client.subscribe(f"{root}/#", qos=1)
                online = {"online": True, "timestamp": int(time.time() * 1000)}
                await client.publish(state, json.dumps(online), qos=1, retain=True)
                async for message in client.messages:
                    payload = message.payload
                    data = payload if isinstance(payload, bytes) else b""
                    await arrived.put((str(message.topic), data))
        except Exception as err:  # aiomqtt's MqttError: the broker is not up yet, or restarts
            log.debug("Sparkplug host: %s; reconnecting", err)
            await asyncio.sleep(0.5)


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
