"""A publishing agent in its own process, for the SIGKILL test: outbox plus link.

`python -m tests.outbox_publisher DB PORT PROTOCOL NODE FIRST COUNT` puts sequence
numbers FIRST..FIRST+COUNT-1, printing each once `put` returned (accepted), then waits
until the outbox is empty and prints "drained".
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.config import MqttConfig
from agent.mqtt import MqttLink
from agent.outbox import Outbox

from .brokers import until


async def main(db: str, port: str, protocol: str, node: str, first: str, count: str) -> None:
    config = MqttConfig.model_validate(
        {"host": "127.0.0.1", "port": int(port), "protocol": protocol,
         "reconnect_min_s": 0.05, "reconnect_max_s": 0.5}
    )  # fmt: skip
    with Outbox.open(Path(db)) as outbox:
        async with MqttLink(config, outbox, node_id=node, engine={"kind": "test"}):
            for seq in range(int(first), int(first) + int(count)):
                await outbox.put(f"edge/{node}/seq", str(seq))
                print(seq, flush=True)
            await until(lambda: outbox.stats().depth == 0, 30)
            print("drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
