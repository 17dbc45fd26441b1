"""Status snapshots for the ops tests, built from real components where there are any.

The engine part comes from a real wasmtime engine and the module figures from a real
`ModuleHost` running the `scale` module; devices and MQTT are described as their pollers
and client will report them, since those components live on other branches.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time

from agent import __version__
from agent.reading import Reading, Value
from agent.runtime import ModuleHost
from agent.status import (
    AgentStatus,
    DeviceState,
    DeviceStatus,
    EngineStatus,
    JournalStatus,
    ModelStatus,
    ModuleStatus,
    MqttStatus,
    SparkplugStatus,
    StatusSnapshot,
)
from agent.wasm import ReactorModule, create_engine

from .conftest import module_bytes

SCALE_CONFIG = {"topic": "scaled", "channels": {"temperature": {"scale": 0.1, "to": "degF"}}}


@functools.cache
def run_scale(calls: int) -> tuple[EngineStatus, ModuleStatus]:
    """Run `scale` `calls` times in a module host and report it as the runtime would.

    Cached: the figures are what they are, and compiling once keeps the tests quick.
    """
    engine = create_engine("wasmtime")
    compiled = engine.compile(module_bytes("scale"), "scale")

    async def run() -> ModuleStatus:
        host = await ModuleHost.start(
            "scale",
            lambda: ReactorModule(compiled, SCALE_CONFIG),
            version="1.0.0",
            digest="sha256:" + "ab" * 32,
        )
        try:
            for seq in range(calls):
                temperature = {"temperature": Value(600.0 + seq, "degC")}
                await host.process(Reading("pump-1", 1764118800.0 + seq, seq, temperature))
            return host.status()
        finally:
            await host.close()

    try:
        stats = asyncio.run(run())
        return EngineStatus.of(engine), stats.model_copy(update={"memory_pages": 17})
    finally:
        compiled.close()
        engine.close()


def make_snapshot(
    *,
    device_state: DeviceState = "online",
    mqtt_connected: bool = True,
    module_failed: bool = False,
    calls: int = 5,
) -> StatusSnapshot:
    engine, scale = run_scale(calls)
    now = time.time()
    modules = [scale]
    if module_failed:
        modules.append(
            ModuleStatus(name="faulty", state="failed", errors=3, last_error="trap: unreachable")
        )
    return StatusSnapshot(
        agent=AgentStatus(
            version=__version__,
            node_id="gateway-17",
            pid=os.getpid(),
            started_at=now - 3725,
            uptime_s=3725,
            engine=engine,
        ),
        mqtt=MqttStatus(
            broker="127.0.0.1:1883",
            connected=mqtt_connected,
            outbox_depth=0 if mqtt_connected else 42,
            oldest_age_s=None if mqtt_connected else 12.5,
            dropped=1,
            reconnects=2,
            failovers=1,
            last_error=None if mqtt_connected else "connection refused",
        ),
        journal=JournalStatus(depth=7, bytes=2100, dropped=0 if mqtt_connected else 3),
        sparkplug=SparkplugStatus(
            connected=mqtt_connected,
            bd_seq=4,
            births=2,
            commands_refused=1,
            last_error=None if mqtt_connected else "connection refused",
        ),
        devices=(
            DeviceStatus(
                name="pump-1",
                state=device_state,
                poll_interval_s=1.0,
                last_poll=now - 2,
                polls=120,
                errors=0 if device_state == "online" else 4,
                last_error=None if device_state == "online" else "no response from unit 1",
            ),
        ),
        modules=tuple(modules),
        models=(ModelStatus(name="anomaly", size=24_576, digest="sha256:" + "cd" * 32),),
    )
