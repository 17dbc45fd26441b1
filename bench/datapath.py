"""The data path end to end: poll, module, durable outbox, broker acknowledgement.

Everything runs in its own process on loopback: mosquitto, the simulated pump(s)
(`python -m agent.sim.pump`), the agent (`edge-agent run`) and `mosquitto_sub`, which
stamps each message as it arrives. Three figures, each with its baseline:

1. throughput: readings per second bridged end to end (the pump's `process` group
   polled as fast as it answers, journaled, through `scale`, QoS 1), against a bare
   pymodbus read loop sending the same two requests per reading to the same server;
   and the journal's own cost per reading (append awaited one by one, as one device
   polls, so one commit each), against the bare loop's time per reading;
2. latency: poll to delivery at the subscriber at 100 polls per second, p50 and p99
   (the reading's timestamp is taken when its poll completes);
3. memory: the agent's resident set with 3 devices at 20 polls per second each and
   3 modules, sampled over the run (first, last, peak): scale, window-stats after it
   and a second window-stats; then with anomaly (NumPy and LiteRT) as the third.

    .venv/bin/python bench/datapath.py [--seconds N] [--memory-minutes M]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from modbus import bare  # bench/modbus.py: the same bare loop

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "modules" / "dist"
NODE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process that is always stopped, whatever happens to the bench."""

    def __init__(self, *args: str, **kw: object) -> None:
        self.proc = subprocess.Popen(args, **kw)  # type: ignore[call-overload]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_pump() -> tuple[Process, int]:
    pump = Process(
        sys.executable, "-m", "agent.sim.pump", "--port", "0", "--faults-per-hour", "0",
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert pump.proc.stdout is not None
    return pump, int(pump.proc.stdout.readline().rsplit(":", 1)[1])


class Stamps:
    """`mosquitto_sub` on the node's topics; arrival time and payload of each message."""

    def __init__(self, port: int, topic: str) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self._sub = Process(
            "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1",
            "-F", "%U %p", stdout=subprocess.PIPE,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._sub.proc.stdout is not None
        for line in self._sub.proc.stdout:
            stamp, _, payload = line.partition(b" ")
            self.arrivals.append((float(stamp), payload))

    def between(self, start: float, end: float) -> list[tuple[float, bytes]]:
        return [(t, p) for t, p in self.arrivals if start <= t < end]

    def stop(self) -> None:
        self._sub.stop()


def write_config(
    directory: Path, broker: int, pumps: list[int], interval_s: float, modules: str
) -> Path:
    pump_map = (ROOT / "config" / "devices" / "pump.toml").read_text()
    (directory / "pump.toml").write_text(
        pump_map.replace("interval_s = 1.0", f"interval_s = {interval_s}", 1)
    )
    devices = "".join(
        f'[[devices]]\nname = "pump-{i}"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
        f'port = {port}\nmap = "pump.toml"\n\n'
        for i, port in enumerate(pumps, 1)
    )
    config = directory / "agent.toml"
    config.write_text(
        f'[node]\nid = "{NODE}"\nstate_dir = "state"\n\n'
        f'[engine]\nkind = "wasmtime"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker}\n\n'
        f'[control]\nsocket = "control.sock"\n\n'
        f"[supply]\nallow_unsigned_paths = true\n\n{devices}{modules}"
    )
    return config


SCALE = f"""[[modules]]
name = "scale"
path = "{DIST}/scale.wasm"
emit = ["scaled"]
[modules.config]
topic = "scaled"
[modules.config.channels.temperature]
to = "degF"
"""

STATS = f"""
[[modules]]
name = "window-stats"
path = "{DIST}/window-stats.wasm"
after = "scale"
[modules.config]
topic = "stats"
window = 100
every = 10
"""

THREE_MODULES = {
    "scale, window-stats, window-stats": SCALE
    + STATS
    + f"""
[[modules]]
name = "long-stats"
path = "{DIST}/window-stats.wasm"
[modules.config]
topic = "long-stats"
window = 1000
every = 100
""",
    "scale, window-stats, anomaly (NumPy, LiteRT)": SCALE
    + STATS
    + f"""
[[modules]]
name = "anomaly"
path = "{DIST}/anomaly.wasm"
models = {{ anomaly = "{ROOT}/modules/anomaly/model.tflite" }}
[modules.config]
model = "anomaly"
""",
}


def run_agent(config: Path) -> Process:
    log = (config.parent / "agent.log").open("w")
    return Process(
        sys.executable, "-m", "agent", "run", "--config", str(config),
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def throughput(tmp: Path, broker: int, pump_port: int, seconds: float) -> float:
    stamps = Stamps(broker, f"edge/{NODE}/scaled")
    agent = run_agent(write_config(tmp, broker, [pump_port], 0.0001, SCALE))
    try:
        time.sleep(3.0)  # started, compiled, connected and warm
        start = time.time()
        time.sleep(seconds)
        return len(stamps.between(start, start + seconds)) / seconds
    finally:
        agent.stop()
        stamps.stop()


def journal_us(tmp: Path, count: int = 5000) -> float:
    """Microseconds per reading to journal a pump's reading and have it on disk."""
    from agent.journal import Journal  # noqa: PLC0415
    from agent.reading import Reading, Value  # noqa: PLC0415

    values = {f"r{i}": Value(20.0 + i, "degC") for i in range(9)}
    readings = [Reading("pump-1", time.time(), seq, values) for seq in range(count)]

    async def run(journal: Journal) -> float:
        journal.attach("scale")  # held, as a running module holds it
        start = time.perf_counter()
        for reading in readings:
            await journal.append(reading)
        return (time.perf_counter() - start) / count * 1e6

    with Journal.open(tmp / "journal-bench.sqlite") as journal:
        return asyncio.run(run(journal))


def latency(tmp: Path, broker: int, pump_port: int, seconds: float) -> tuple[float, float, float]:
    stamps = Stamps(broker, f"edge/{NODE}/scaled")
    agent = run_agent(write_config(tmp, broker, [pump_port], 0.01, SCALE))
    try:
        time.sleep(3.0)
        start = time.time()
        time.sleep(seconds)
        delays = sorted(
            (t - json.loads(p)["ts"]) * 1000 for t, p in stamps.between(start, start + seconds)
        )
    finally:
        agent.stop()
        stamps.stop()
    rate = len(delays) / seconds
    return rate, statistics.median(delays), delays[int(0.99 * len(delays))]


def memory(tmp: Path, broker: int, ports: list[int], minutes: float, modules: str) -> list[float]:
    agent = run_agent(write_config(tmp, broker, ports, 0.05, modules))
    samples = []
    try:
        end = time.monotonic() + minutes * 60
        time.sleep(5.0)
        while time.monotonic() < end:
            samples.append(rss_mb(agent.proc.pid))
            time.sleep(min(10.0, minutes * 6))
        samples.append(rss_mb(agent.proc.pid))
    finally:
        agent.stop()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput/latency run")
    parser.add_argument("--memory-minutes", type=float, default=1.0, help="10 for the target")
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(mosquitto) or not shutil.which("mosquitto_sub"):
        print("needs mosquitto and mosquitto_sub (apt-get install mosquitto mosquitto-clients)")
        return 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker_port = free_port()
        (tmp / "mosquitto.conf").write_text(
            f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        children = [
            Process(mosquitto, "-c", str(tmp / "mosquitto.conf"), stderr=subprocess.DEVNULL)
        ]
        try:
            pumps = []
            for _ in range(3):
                pump, port = start_pump()
                children.append(pump)
                pumps.append(port)
            time.sleep(0.5)
            base = asyncio.run(bare(pumps[0], args.seconds))
            ours = throughput(tmp, broker_port, pumps[0], args.seconds)
            print(f"bare pymodbus loop      {base:8.0f} readings/s (2 requests each)")
            print(
                f"end to end, durable     {ours:8.0f} readings/s "
                f"(poll, journal, scale, outbox, PUBACK)   ratio {ours / base:.2f}x "
                "(target 0.30x)"
            )
            cost = journal_us(tmp)
            print(
                f"journal, per reading    {cost:8.1f} us on disk (one commit each) against "
                f"{1e6 / base:.0f} us per bare read: {cost * base / 1e6:.0%} of a poll's time"
            )
            rate, p50, p99 = latency(tmp, broker_port, pumps[0], args.seconds)
            print(
                f"latency at {rate:5.0f} polls/s  p50 {p50:6.2f} ms   p99 {p99:6.2f} ms "
                "(target p99 5 ms at 100 polls/s)"
            )
            for names, modules in THREE_MODULES.items():
                samples = memory(tmp, broker_port, pumps, args.memory_minutes, modules)
                print(
                    f"memory, 3 devices x 20 polls/s, {names}, {args.memory_minutes:g} min: "
                    f"first {samples[0]:.1f} MB, last {samples[-1]:.1f} MB, "
                    f"peak {max(samples):.1f} MB (target 80 MB, flat)"
                )
        finally:
            for child in children:
                child.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
