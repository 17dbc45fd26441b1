"""Run the simulated pump as a Modbus TCP server: `python -m agent.sim.pump --port 5020`.

Unit id 1; the register map is `config/devices/pump.toml`. Runs until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from agent.sim._pump import PumpDevice, PumpModel
from agent.sim._server import SimServer


async def serve(host: str, port: int, unit: int, seed: int | None, faults_per_h: float) -> None:
    pump = PumpDevice(PumpModel(seed, faults_per_h))
    async with SimServer({unit: pump.image}, host=host, port=port) as server:
        print(f"simulated pump: unit {unit} on {host}:{server.port}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.sim.pump", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020, help="0 picks a free port")
    parser.add_argument("--unit", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--faults-per-hour", type=float, default=6.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.unit, args.seed, args.faults_per_hour))


if __name__ == "__main__":
    main()
