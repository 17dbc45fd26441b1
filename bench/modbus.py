"""Readings per second through the poller vs a bare pymodbus read loop, same server.

The server is the simulated pump (`python -m agent.sim.pump`) in its own process on
loopback. The poller polls the pump map's `process` group as fast as it can (interval
0.1 ms: every poll is due when the last ends), planning, decoding and building a `Reading`
per poll. The baseline sends the same two requests per reading (input registers 0-12,
discrete input 0) from a bare `AsyncModbusTcpClient` loop and decodes nothing.

    .venv/bin/python bench/modbus.py [--seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from agent.config import DeviceConfig
from agent.modbus import DevicePool
from agent.reading import Reading

ROOT = Path(__file__).resolve().parent.parent


async def bare(port: int, seconds: float) -> float:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    await client.connect()
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        await client.read_input_registers(0, count=13, device_id=1)
        await client.read_discrete_inputs(0, count=1, device_id=1)
        n += 1
    elapsed = time.perf_counter() - start
    client.close()
    return n / elapsed


async def poller(port: int, seconds: float, map_path: Path) -> float:
    count = 0

    async def on_reading(reading: Reading) -> None:
        nonlocal count
        if "temperature" in reading.values:
            count += 1

    device = DeviceConfig(name="pump", transport="tcp", host="127.0.0.1", port=port, map=map_path)
    async with DevicePool.create([device], on_reading):
        await asyncio.sleep(0.2)  # connected and warm
        first, start = count, time.perf_counter()
        await asyncio.sleep(seconds)
        return (count - first) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "agent.sim.pump", "--port", "0", "--faults-per-hour", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        with tempfile.TemporaryDirectory() as tmp:
            map_path = Path(tmp) / "pump.toml"
            text = (ROOT / "config" / "devices" / "pump.toml").read_text()
            map_path.write_text(text.replace("interval_s = 1.0", "interval_s = 0.0001", 1))
            base = asyncio.run(bare(port, args.seconds))
            ours = asyncio.run(poller(port, args.seconds, map_path))
    finally:
        server.terminate()
        server.wait(5)
    print(f"bare pymodbus loop : {base:8.0f} readings/s (2 requests each)")
    print(f"poller             : {ours:8.0f} readings/s (plan, decode 10 values, Reading)")
    print(f"ratio              : {ours / base:8.2f}x")


if __name__ == "__main__":
    main()
