"""Nothing lost: a minute of broker restarts and agent SIGKILLs, with real processes.

mosquitto (persistent sessions), two simulated pumps (`python -m agent.sim.pump`), the
agent (`python -m agent run`) and mosquitto_sub as an independent QoS 1 subscriber with
a persistent session. At seeded random moments the broker is stopped and started again
five times, and the agent is SIGKILLed and started again three times. Afterwards every
reading the agent polled (its journal numbers them per device, without reset across
restarts) must have reached the subscriber on every topic: raw, `scale`,
`window-stats` after it and, for pump-1, a slow module; none missing, first
deliveries in order. Duplicates are
allowed (at least once) and counted.

The broker is stopped with SIGTERM, so it keeps what it acknowledged: a broker that
loses acknowledged messages on a SIGKILL is a broker's loss, which no client can undo.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.journal import Journal

from .brokers import Mosquitto
from .conftest import DIST, REPO
from .fleet_nodes import Pump

NODE = "chaos"
SECONDS = 60.0
SEED = 1306
TOPICS = ("devices/{device}", "scaled", "stats")
SLOW_SPINS = 50_000_000
"""About 25 ms a reading here: `slow` is busy most of the time pump-1 gives it, so a
kill almost always finds a reading inside it, the window a journal must cover."""


class AgentProcess:
    """`edge-agent run`, started again after each kill with the same config and state."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = (config.parent / "agent.log").open("a")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--log-level",
                "info",
                "run",
                "--config",
                str(self.config),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def close(self) -> None:
        self.log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def status(self) -> dict[str, object] | None:
        out = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--json", "--config", str(self.config)],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        return json.loads(out.stdout) if out.returncode in (0, 1) else None


def write_config(directory: Path, broker: int, pumps: list[int]) -> Path:
    pump_map = (REPO / "config" / "devices" / "pump.toml").read_text()
    process_group = pump_map.split("[[groups]]")[1]  # one group: one reading per poll
    (directory / "pump.toml").write_text(
        "[[groups]]" + process_group.replace("interval_s = 1.0", "interval_s = 0.05", 1)
    )
    devices = "".join(
        f'[[devices]]\nname = "pump-{i}"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
        f'port = {port}\nmap = "pump.toml"\n\n'
        for i, port in enumerate(pumps, 1)
    )
    config = directory / "agent.toml"
    config.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "{directory}/state"\n\n'
        '[engine]\nkind = "wasmtime"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker}\n\n'
        f'[control]\nsocket = "{directory}/control.sock"\n\n'
        "[pipeline]\nraw_readings = true\n\n"
        "[supply]\nallow_unsigned_paths = true\n\n"
        f"{devices}"
        f'[[modules]]\nname = "scale"\npath = "{DIST}/scale.wasm"\n'
        '[modules.config]\ntopic = "scaled"\n'
        '[modules.config.channels.temperature]\nto = "degF"\n\n'
        f'[[modules]]\nname = "window-stats"\npath = "{DIST}/window-stats.wasm"\n'
        'after = "scale"\n[modules.config]\ntopic = "stats"\nwindow = 10\nevery = 1\n\n'
        f'[[modules]]\nname = "slow"\npath = "{DIST}/faulty.wasm"\ndevices = ["pump-1"]\n'
        f'[modules.config]\nfault = "slow"\nspins = {SLOW_SPINS}\n'
    )
    return config


class Subscriber:
    """mosquitto_sub with a persistent session: it reconnects by itself after a broker
    restart and the broker keeps its QoS 1 messages meanwhile."""

    def __init__(self, broker: Mosquitto, out: Path) -> None:
        self.out = out
        self._file = out.open("w")
        self.proc = subprocess.Popen(
            [
                "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                "-c", "-i", "chaos-subscriber", "-t", f"edge/{NODE}/#", "-F", "%t %p",
            ],
            stdout=self._file,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def messages(self) -> Iterator[tuple[str, dict[str, object]]]:
        for line in self.out.read_text().splitlines():
            topic, _, payload = line.partition(" ")
            if topic.endswith(("/status", "/report")):
                continue
            yield topic.removeprefix(f"edge/{NODE}/"), json.loads(payload)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._file.close()


def chaos(broker: Mosquitto, agent: AgentProcess, rng: random.Random) -> list[str]:
    """Five broker restarts and three agent kills at random moments; what happened."""
    events = sorted(
        [(rng.uniform(2, SECONDS - 5), "broker") for _ in range(5)]
        + [(rng.uniform(2, SECONDS - 5), "agent") for _ in range(3)]
    )
    start = time.monotonic()
    done = []
    for at, what in events:
        time.sleep(max(0.0, start + at - time.monotonic()))
        down = rng.uniform(0.2, 2.5)
        if what == "broker":
            broker.stop()
            time.sleep(down)
            broker.start()
        else:
            agent.kill()
            time.sleep(down)
            agent.start()
        done.append(f"{at:5.1f} s: {what} down {down:.1f} s")
    time.sleep(max(0.0, start + SECONDS - time.monotonic()))
    return done


def drained(status: dict[str, object] | None) -> bool:
    if status is None:
        return False
    mqtt, journal = status["mqtt"], status["journal"]
    return (
        bool(mqtt["connected"])  # type: ignore[index]
        and mqtt["outbox_depth"] == 0  # type: ignore[index]
        and journal["depth"] == 0  # type: ignore[index]
    )


@pytest.mark.mosquitto
def test_a_minute_of_broker_restarts_and_agent_kills_loses_no_reading(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rng = random.Random(SEED)
    pumps = [Pump(), Pump()]
    subscriber = Subscriber(mosquitto, tmp_path / "received.txt")
    agent = AgentProcess(write_config(tmp_path, mosquitto.port, [p.port for p in pumps]))
    agent.start()
    try:
        events = chaos(mosquitto, agent, rng)
        # A clean stop, then a run without devices (an offline device still yields
        # readings, of bad quality): what remains is to deliver what was polled.
        agent.kill(signal.SIGTERM)
        write_config(tmp_path, mosquitto.port, [])
        agent.start()
        deadline = time.monotonic() + 60
        while not drained(status := agent.status()):
            assert time.monotonic() < deadline, f"the agent did not drain in 60 s: {status}"
            time.sleep(0.5)
        time.sleep(2)  # the last PUBACKed messages reach the subscriber
        agent.kill(signal.SIGTERM)
    finally:
        for pump in pumps:
            if pump.proc.poll() is None:
                pump.stop()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
        agent.close()
        subscriber.stop()
    with Journal.open(tmp_path / "state" / "journal.sqlite") as journal:
        polled = journal.next_seqs()
    received: dict[tuple[str, str], list[int]] = {}
    for topic, doc in subscriber.messages():
        received.setdefault((topic, str(doc["device"])), []).append(int(doc["seq"]))  # type: ignore[call-overload]
    report = [f"seed {SEED}: " + "; ".join(events)]
    assert set(polled) == {"pump-1", "pump-2"}
    for device, count in polled.items():
        assert count > 0.5 * SECONDS / 0.05, f"{device}: only {count} polls"
        for pattern in (*TOPICS, "slow") if device == "pump-1" else TOPICS:
            topic = pattern.format(device=device)
            seqs = received.get((topic, device), [])
            first_seen = list(dict.fromkeys(seqs))
            missing = sorted(set(range(count)) - set(seqs))
            assert missing == [], f"{device} on {topic}: lost {missing[:20]}"
            assert first_seen == list(range(count)), f"{device} on {topic}: out of order"
            report.append(f"{device} {topic}: {count} readings, {len(seqs) - count} duplicates")
    print("\n".join(report))
