"""A fleet on one machine: agents' memory, rollout time, `fleet status` time, background cost.

`--nodes` agent processes (default 100; each its own config, state dir and process, one
simulated pump polled by all, the module `faulty` from Debian's docker-registry), one
mosquitto. Each figure is printed beside its baseline from the same run:

- resident memory per agent, against a bare `python -c "import agent.runtime"` process;
- `fleet deploy` (waves 1,10%,50%,100%, no soak) from the command to every node serving
  the new version, against the same change made by a script that sends `module.deploy`
  to each node in turn and waits for its answer (mosquitto_rr), to every node serving;
- `fleet status --json` for all nodes, against asking each node's `status` command in
  turn;
- broker messages per node per minute at rest: the fleet's own (reports, statuses,
  documents) against the node's readings (raw and module output) in the same minutes.

    python bench/fleet.py [--nodes 100] [--rest-s 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiomqtt  # noqa: E402

from agent.fleet import parse_report  # noqa: E402
from tests.brokers import Mosquitto  # noqa: E402
from tests.fleet_nodes import MODULE, Fleet, Pump, fleet_command  # noqa: E402
from tests.supply.conftest import _start, make_keys  # noqa: E402

GROUP = "bench"


class Reports:
    """Every node's latest report, and a count of messages by kind while counting."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.running: dict[str, str | None] = {}
        self.counts = {"fleet": 0, "data": 0}
        self.counting = False
        self._changed = asyncio.Event()

    async def follow(self, ready: asyncio.Event) -> None:
        identifier = f"bench-{uuid.uuid4().hex}"
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=identifier) as client:
            await client.subscribe("edge/#", qos=0)
            ready.set()
            async for message in client.messages:
                self._take(str(message.topic), message.payload)

    def _take(self, topic: str, payload: object) -> None:
        levels = topic.split("/")
        fleet = levels[1] == "group" or levels[-1] in ("report", "status", "desired")
        if self.counting and not topic.endswith("/response"):
            self.counts["fleet" if fleet else "data"] += 1
        if levels[-1] == "report" and isinstance(payload, bytes):
            report = parse_report(topic, payload)
            module = next((m for m in report.modules if m.name == MODULE), None)
            self.running[report.node] = module.digest if module else None
            self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def until_all_moved(self, nodes: list[str]) -> None:
        """Until every node runs one version, not the one they all ran when called."""
        old = {self.running.get(n) for n in nodes}
        await self.until(
            lambda: len(now := {self.running.get(n) for n in nodes}) == 1 and not now & old
        )


def rss_of_bare_import() -> float:
    out = subprocess.run(
        [sys.executable, "-c", "import agent.runtime, agent.cli\n"
         "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    return int(out.stdout) / 1024


def rr(port: int, topic: str, args: dict[str, object]) -> dict[str, object]:
    out = subprocess.run(
        ["mosquitto_rr", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-e",
         f"{topic}/response", "-m", json.dumps({"id": uuid.uuid4().hex, "args": args}),
         "-W", "120"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)  # type: ignore[no-any-return]


async def main(nodes: int, rest_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        root = Path(tmp)
        broker = Mosquitto(root)
        broker.start()
        (root / "registry").mkdir()
        registry_gen = _start(root / "registry", secure=False)
        registry = next(registry_gen)
        pump = Pump()
        endpoint = f"127.0.0.1:{broker.port}"
        fleet = Fleet(
            root, size=nodes, group=GROUP, endpoints=[endpoint], registry=registry,
            key=make_keys(root / "keys"), pump_port=pump.port, poll_interval_s=1.0,
        )  # fmt: skip
        reports = Reports(broker.port)
        ready = asyncio.Event()
        follower = asyncio.create_task(reports.follow(ready))
        await ready.wait()
        try:
            refs = {v: await fleet.push(v) for v in ("1.0.0", "1.1.0", "1.2.0")}
            await start_fleet(fleet, reports, refs["1.0.0"], endpoint)
            report_memory(fleet)
            await rollouts(fleet, reports, refs, broker.port, endpoint)
            await statuses(fleet, broker.port, endpoint)
            await at_rest(reports, nodes, rest_s)
        finally:
            fleet.stop_all()
            follower.cancel()
            pump.stop()
            registry_gen.close()
            broker.stop()


async def start_fleet(fleet: Fleet, reports: Reports, first: str, endpoint: str) -> None:
    """Every node up (ten at a time) and running `first` from the group's document."""
    started = time.perf_counter()
    for i, node in enumerate(fleet.nodes, 1):
        fleet.start(node)
        if i % 10 == 0 or i == len(fleet.nodes):
            await reports.until(lambda i=i: len(reports.running) >= i)  # type: ignore[misc]
    print(f"{len(fleet.nodes)} agents up in {time.perf_counter() - started:.0f} s")
    done = await asyncio.to_thread(
        fleet_command,
        "desired", "set", "--group", GROUP, "--module", MODULE, "--ref", first,
        endpoints=[endpoint],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    await reports.until(
        lambda: None not in reports.running.values() and len(set(reports.running.values())) == 1
    )


def report_memory(fleet: Fleet) -> None:
    rss = list(fleet.rss_mb().values())
    bare = rss_of_bare_import()
    mean = statistics.mean(rss)
    print(
        f"memory per agent: mean {mean:.1f} MB, max {max(rss):.1f} MB; a bare "
        f"`import agent.runtime` {bare:.1f} MB ({mean / bare:.2f}x); "
        f"{len(rss)} agents {sum(rss) / 1024:.2f} GB"
    )


async def rollouts(
    fleet: Fleet, reports: Reports, refs: dict[str, str], port: int, endpoint: str
) -> None:
    """`fleet deploy` of 1.1.0 vs a script deploying 1.2.0 node by node."""
    moved = asyncio.create_task(reports.until_all_moved(fleet.nodes))
    start = time.perf_counter()
    done = await asyncio.to_thread(
        fleet_command,
        "deploy", refs["1.1.0"], "--group", GROUP, "--waves", "1,10%,50%,100%", "--soak", "0",
        endpoints=[endpoint],
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    await moved
    fleet_s = time.perf_counter() - start

    moved = asyncio.create_task(reports.until_all_moved(fleet.nodes))
    start = time.perf_counter()
    for node in fleet.nodes:
        topic = f"edge/{node}/cmd/module.deploy"
        answer = await asyncio.to_thread(rr, port, topic, {"reference": refs["1.2.0"]})
        assert answer["status"] == "ok", answer
    await moved
    script_s = time.perf_counter() - start
    print(
        f"rollout to {len(fleet.nodes)} nodes: fleet deploy (4 waves, no soak) {fleet_s:.1f} s; "
        f"a script of module.deploy per node {script_s:.1f} s ({fleet_s / script_s:.2f}x)"
    )


async def statuses(fleet: Fleet, port: int, endpoint: str) -> None:
    """`fleet status` vs the status command of each node in turn."""
    start = time.perf_counter()
    done = await asyncio.to_thread(fleet_command, "status", "--json", endpoints=[endpoint])
    status_s = time.perf_counter() - start
    assert len(json.loads(done.stdout)) == len(fleet.nodes), done.stdout[:200]
    start = time.perf_counter()
    await asyncio.to_thread(fleet_command, "--help", endpoints=[endpoint])
    startup_s = time.perf_counter() - start
    start = time.perf_counter()
    for node in fleet.nodes:
        await asyncio.to_thread(rr, port, f"edge/{node}/cmd/status", {})
    each_s = time.perf_counter() - start
    print(
        f"fleet status for {len(fleet.nodes)} nodes: {status_s:.2f} s (a process, one "
        f"retained read; `fleet --help` alone {startup_s:.2f} s); each node's status "
        f"command in turn {each_s:.2f} s ({status_s / each_s:.2f}x)"
    )


async def at_rest(reports: Reports, nodes: int, rest_s: float) -> None:
    """The fleet's own messages at rest, against the readings in the same minutes."""
    reports.counts = {"fleet": 0, "data": 0}
    reports.counting = True
    await asyncio.sleep(rest_s)
    reports.counting = False
    per_min = {k: v / nodes / (rest_s / 60) for k, v in reports.counts.items()}
    print(
        f"at rest, per node per minute: {per_min['fleet']:.2f} fleet messages (reports, "
        f"statuses, documents); {per_min['data']:.1f} data messages "
        f"({per_min['fleet'] / per_min['data']:.3f}x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rest-s", type=float, default=120.0)
    args = parser.parse_args()
    asyncio.run(main(args.nodes, args.rest_s))
