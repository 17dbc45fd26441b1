"""Values per second through the agent's OPC UA devices vs a bare asyncua subscription,
same server, same data changes.

The server is asyncua's, in its own process on loopback (this file run with `--serve`):
`--variables` Doubles under ns=2 (`Bench.V0`, `Bench.V1`, ...), every one of them given
a new value every `--tick` seconds. Both clients subscribe to all of them with the same
monitored items (sampling interval 0, queue size 1, discard oldest) and the same
publishing interval, so the server offers both the same data changes:

- the agent: `OpcuaPool` with a node map of those variables, a session and subscription
  as the agent makes them, each publish response's changes turned into a `Reading`
  (points typed and checked, quality from the status code, sequence numbered), counted
  by the `on_reading` handler the pipeline would get;
- the baseline: a bare `asyncua.Client` with `subscribe_data_change` and a handler that
  counts `datachange_notification` calls and does nothing else.

Each figure is values received per second over `--seconds`, after a second of warm-up,
and this process's CPU time per value.

    .venv/bin/python bench/opcua.py [--seconds N] [--variables N] [--publishing-ms N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncua import Client, Server, ua

from agent.config import OpcuaDeviceConfig
from agent.opcua import OpcuaPool
from agent.reading import Reading

ROOT = Path(__file__).resolve().parent.parent


async def serve(variables: int, tick: float) -> None:
    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/bench/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace("urn:edge-agent:bench")
    folder = await server.nodes.objects.add_object(ua.NodeId("Bench", index), "Bench")
    nodes = [
        await folder.add_variable(ua.NodeId(f"Bench.V{i}", index), f"V{i}", 0.0)
        for i in range(variables)
    ]
    async with server:
        assert server.bserver is not None
        print(f"opc.tcp://127.0.0.1:{server.bserver.port}/bench/", flush=True)
        step = 0
        while True:
            step += 1
            for i, node in enumerate(nodes):
                value = ua.DataValue(ua.Variant(step + i / variables, ua.VariantType.Double))
                await server.write_attribute_value(node.nodeid, value)
            await asyncio.sleep(tick)


async def measure(count: Callable[[], int], seconds: float) -> tuple[float, float]:
    """Values per second, and CPU microseconds per value, over `seconds`."""
    await asyncio.sleep(1.0)  # subscribed, first publish (every value) behind us
    first, start, cpu = count(), time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    values = count() - first
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    return values / elapsed, used / max(values, 1) * 1e6


async def bare(endpoint: str, variables: int, publishing_ms: float, seconds: float) -> Any:
    class Handler:
        values = 0

        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            self.values += 1

    handler = Handler()
    async with Client(endpoint) as client:
        nodes = [client.get_node(f"ns=2;s=Bench.V{i}") for i in range(variables)]
        subscription = await client.create_subscription(publishing_ms, handler)
        await subscription.subscribe_data_change(nodes, queuesize=1, sampling_interval=0)
        return await measure(lambda: handler.values, seconds)


async def agent(config: OpcuaDeviceConfig, seconds: float) -> tuple[float, float]:
    values = 0

    async def on_reading(reading: Reading) -> None:
        nonlocal values
        values += len(reading.values)

    async with OpcuaPool.create([config], on_reading):
        return await measure(lambda: values, seconds)


def node_map(variables: int, publishing_ms: float) -> str:
    points = "".join(
        f'[[points]]\nname = "v{i}"\nnode = "ns=2;s=Bench.V{i}"\ntype = "float64"\n\n'
        for i in range(variables)
    )
    return f"publishing_interval_s = {publishing_ms / 1000}\nsampling_interval_s = 0\n\n{points}"


def run(scenario: Callable[[], Awaitable[tuple[float, float]]]) -> tuple[float, float]:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--variables", type=int, default=200)
    parser.add_argument("--publishing-ms", type=float, default=20.0)
    parser.add_argument("--tick", type=float, default=0.01, help="the server's update period")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # its notes on missing security
    if args.serve:
        asyncio.run(serve(args.variables, args.tick))
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--variables", str(args.variables),
         "--tick", str(args.tick)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    with server, tempfile.TemporaryDirectory() as tmp:
        try:
            assert server.stdout is not None
            endpoint = server.stdout.readline().strip()
            (Path(tmp) / "bench.toml").write_text(node_map(args.variables, args.publishing_ms))
            config = OpcuaDeviceConfig.model_validate(
                {"name": "bench", "transport": "opcua", "endpoint": endpoint, "map": "bench.toml"},
                context={"base_dir": Path(tmp)},
            )
            n, ms = args.variables, args.publishing_ms
            base, base_cpu = run(lambda: bare(endpoint, n, ms, args.seconds))
            ours, ours_cpu = run(lambda: agent(config, args.seconds))
        finally:
            server.terminate()
    offered = args.variables / max(args.publishing_ms / 1000, args.tick)
    print(
        f"server: {args.variables} variables, each changed every {args.tick * 1000:g} ms; "
        f"publishing every {args.publishing_ms:g} ms, at most {offered:.0f} values/s"
    )
    print(f"bare asyncua subscription : {base:8.0f} values/s, {base_cpu:6.1f} us CPU per value")
    print(f"agent (OpcuaPool, Reading): {ours:8.0f} values/s, {ours_cpu:6.1f} us CPU per value")
    print(f"ratio                     : {ours / base:8.2f}x values/s, "
          f"{ours_cpu / base_cpu:6.2f}x CPU per value")  # fmt: skip


if __name__ == "__main__":
    main()
