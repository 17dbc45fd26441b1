"""Many real agents on one machine, for the fleet tests and `bench/fleet.py`.

Each node is its own `python -m agent run` process with its own config and state dir,
one simulated device (a pump process shared by all, each node polls it) and the module
`faulty` from a real registry, in versions signed for the test; all of them in one
group. The operator's side is the real CLI, `python -m agent fleet ...`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt

from agent.config import parse_config
from agent.fleet import Report, parse_report
from tests.conftest import REPO
from tests.supply.conftest import PASSWORD, KeyPair, Registry, module_dir, publish

MODULE = "faulty"


class Pump:
    """`python -m agent.sim.pump` on a free port (the fleet's nodes and the chaos test poll it)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.sim.pump", "--port", "0", "--faults-per-hour", "0"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class Fleet:
    """`size` nodes `n01`, `n02`, ... in `group`, over the broker `endpoints`."""

    def __init__(
        self,
        root: Path,
        *,
        size: int,
        group: str,
        endpoints: list[str],
        registry: Registry,
        key: KeyPair,
        pump_port: int,
        poll_interval_s: float = 0.5,
        report_interval_s: float = 60.0,
    ) -> None:
        self.root = root
        self.group = group
        self.endpoints = endpoints
        self.registry = registry
        self.key = key
        self.nodes = [f"n{i:02d}" for i in range(1, size + 1)]
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        pump_map = (REPO / "config" / "devices" / "pump.toml").read_text()
        group_text = "[[groups]]" + pump_map.split("[[groups]]")[1]  # one reading per poll
        (root / "pump.toml").write_text(
            group_text.replace("interval_s = 1.0", f"interval_s = {poll_interval_s}", 1)
        )
        for node in self.nodes:
            self._write_config(node, pump_port, report_interval_s)

    def config_path(self, node: str) -> Path:
        return self.root / node / "agent.toml"

    def _write_config(self, node: str, pump_port: int, report_interval_s: float) -> None:
        directory = self.root / node
        directory.mkdir(parents=True, exist_ok=True)
        hosts = ", ".join(f'"{e}"' for e in self.endpoints)
        self.config_path(node).write_text(
            f'[node]\nid = "{node}"\nstate_dir = "{directory}/state"\n'
            f'groups = ["{self.group}"]\n\n'
            '[engine]\nkind = "wasmtime"\n\n'
            f'[mqtt]\nhosts = [{hosts}]\nprotocol = "3.1.1"\n'
            "reconnect_min_s = 0.2\nreconnect_max_s = 2.0\n\n"
            "[pipeline]\nraw_readings = true\n\n"
            f'[control]\nsocket = "{directory}/control.sock"\n\n'
            f'[supply]\ntrusted_keys = ["{self.key.public}"]\n'
            "retry_initial_s = 0.2\nretry_max_s = 2.0\n"
            f'[[supply.registries]]\nhost = "{self.registry.host}"\ninsecure = true\n\n'
            f"[fleet]\nreport_interval_s = {report_interval_s}\n\n"
            '[[devices]]\nname = "pump-1"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
            f'port = {pump_port}\nmap = "{self.root}/pump.toml"\n'
        )

    async def push(self, version: str, fault: str = "none") -> str:
        """Package `faulty` as `version` (committing `fault` on every reading, with no
        test readings when it faults, so only the running node finds out), sign and push
        it; its reference."""
        ref = f"{self.registry.host}/edge/{MODULE}:{version}"
        config = parse_config(
            {
                "node": {"state_dir": str(self.root / "publisher")},
                "supply": {"registries": [{"host": self.registry.host, "insecure": True}]},
            },
            self.root / "publisher.toml",
        )
        source = module_dir(self.root / "src", version, fault, test_readings=fault == "none")
        await publish(config, source, ref, self.key)
        return ref

    def start(self, node: str) -> None:
        log = (self.root / node / "agent.log").open("ab")
        self._procs[node] = subprocess.Popen(
            [sys.executable, "-m", "agent", "--log-level", "info", "run", "--config",
             str(self.config_path(node))],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )  # fmt: skip
        log.close()

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def stop(self, node: str, sig: int = signal.SIGTERM) -> None:
        proc = self._procs.pop(node)
        proc.send_signal(sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for proc in self._procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self._procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()

    def alive(self) -> list[str]:
        return [node for node, proc in self._procs.items() if proc.poll() is None]

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each running node, from /proc."""
        sizes = {}
        for node, proc in self._procs.items():
            status = Path(f"/proc/{proc.pid}/status").read_text()
            kb = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
            )
            sizes[node] = kb / 1024
        return sizes

    def log(self, node: str) -> str:
        return (self.root / node / "agent.log").read_text(errors="replace")


def _fleet_argv(args: tuple[str, ...], endpoints: list[str]) -> list[str]:
    """`edge-agent fleet` as an operator runs it, against the same brokers."""
    brokers = [a for e in endpoints for a in ("--broker", e)]
    return [sys.executable, "-m", "agent", "fleet", *brokers, "--protocol", "3.1.1",
            "--timeout", "30", *args]  # fmt: skip


def fleet_command(
    *args: str, endpoints: list[str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _fleet_argv(args, endpoints),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, "EDGE_AGENT_KEY_PASSWORD": PASSWORD.decode()},
        check=False,
    )


async def fleet_command_async(*args: str, endpoints: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *_fleet_argv(args, endpoints),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )


class Observer:
    """An operator's independent view over one broker node: every node's latest report,
    and every raw reading (QoS 1, persistent session) to count what arrived."""

    def __init__(self, endpoint: str, prefix: str = "edge") -> None:
        self.host, port = endpoint.rsplit(":", 1)
        self.port = int(port)
        self.prefix = prefix
        self.reports: dict[str, Report] = {}
        self.readings: dict[str, list[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def __aenter__(self) -> Observer:
        self._task = asyncio.create_task(self._follow())
        await asyncio.wait_for(self._subscribed.wait(), 60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def running(self, node: str, digest: str) -> bool:
        report = self.reports.get(node)
        return report is not None and any(
            m.name == MODULE and m.digest == digest and m.state == "running" for m in report.modules
        )

    def ever_ran(self, digest: str) -> set[str]:
        return {n for n in self.reports if self.running(n, digest)}

    def gaps(self) -> dict[str, list[int]]:
        """Per node, the readings missing between its first and last one seen."""
        missing = {}
        for node, seqs in self.readings.items():
            seen = set(seqs)
            lost = [s for s in range(min(seen), max(seen) + 1) if s not in seen]
            if lost:
                missing[node] = lost
        return missing

    async def _follow(self) -> None:
        reports = f"{self.prefix}/+/report"
        raw = f"{self.prefix}/+/devices/pump-1"
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"observer-{self.port}",
                    protocol=aiomqtt.ProtocolVersion.V311, clean_session=False,
                ) as client:  # fmt: skip
                    await client.subscribe([(reports, 1), (raw, 1)])
                    self._subscribed.set()
                    async for message in client.messages:
                        self._take(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def _take(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload
        assert isinstance(payload, bytes)
        node = topic.split("/")[1]
        if topic.endswith("/report"):
            self.reports[node] = parse_report(topic, payload)
        else:
            self.readings.setdefault(node, []).append(int(json.loads(payload)["seq"]))
