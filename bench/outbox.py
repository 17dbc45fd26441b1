"""Messages/s through the durable outbox and the MQTT link, QoS 1, to a local mosquitto.

Baseline from the same run, same broker: a bare aiomqtt QoS 1 publish loop with the same
number of messages in flight (32), no disk. Also the cost of `put` alone: one message
per awaited call, and in batches of 100 (`put_many`), with synchronous=normal and full.

    .venv/bin/python bench/outbox.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from agent.config import MqttConfig
from agent.mqtt import MqttLink
from agent.outbox import Outbox, Outgoing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.brokers import Mosquitto, until  # noqa: E402  (the same broker the tests use)

INFLIGHT = 32
PAYLOAD = b'{"device":"pump1","seq":123456,"temperature":41.25,"vibration":0.0312}'


async def bare_aiomqtt(port: int, n: int) -> float:
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=INFLIGHT) as client:
        client.pending_calls_threshold = INFLIGHT + 16
        window = asyncio.Semaphore(INFLIGHT)

        async def one(i: int) -> None:
            try:
                await client.publish(f"bench/bare/{i % 8}", PAYLOAD, qos=1)
            finally:
                window.release()

        started = time.perf_counter()
        tasks = []
        for i in range(n):
            await window.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return n / (time.perf_counter() - started)


async def through_outbox(port: int, n: int, path: Path) -> float:
    config = MqttConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "max_inflight": INFLIGHT}
    )
    with Outbox.open(path) as outbox:
        async with MqttLink(config, outbox, node_id="bench") as link:
            await link.wait_connected()
            started = time.perf_counter()
            for i in range(n):
                await outbox.put(f"bench/outbox/{i % 8}", PAYLOAD)
            await until(lambda: outbox.stats().depth == 0, 600)
            return n / (time.perf_counter() - started)


async def put_cost(path: Path, n: int, synchronous: str, batch: int) -> float:
    """Microseconds per accepted message."""
    with Outbox.open(path, synchronous=synchronous) as outbox:  # type: ignore[arg-type]
        started = time.perf_counter()
        if batch == 1:
            for i in range(n):
                await outbox.put(f"bench/put/{i % 8}", PAYLOAD)
        else:
            for i in range(0, n, batch):
                await outbox.put_many(
                    [Outgoing(f"bench/put/{j % 8}", PAYLOAD) for j in range(i, i + batch)]
                )
        return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    n = parser.parse_args().messages
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            bare = asyncio.run(bare_aiomqtt(broker.port, n))
            ours = asyncio.run(through_outbox(broker.port, n, Path(tmp) / "link.sqlite"))
        finally:
            broker.stop()
        print(f"QoS 1 to mosquitto, {n} messages of {len(PAYLOAD)} bytes, {INFLIGHT} in flight")
        print(f"  bare aiomqtt publish loop    {bare:9.0f} msg/s  (baseline)")
        print(f"  outbox + link (durable)      {ours:9.0f} msg/s  {ours / bare:.2f}x baseline")
        print("put() cost, until on disk:")
        for synchronous in ("normal", "full"):
            for batch in (1, 100):
                path = Path(tmp) / f"put-{synchronous}-{batch}.sqlite"
                count = n if synchronous == "normal" else max(batch, n // 10)
                us = asyncio.run(put_cost(path, count, synchronous, batch))
                label = "put()" if batch == 1 else f"put_many({batch})"
                print(f"  {label:14} synchronous={synchronous:6} {us:8.1f} us/message")


if __name__ == "__main__":
    main()
