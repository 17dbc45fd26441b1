"""Polling and writing against real Modbus servers on loopback (and a socat pty pair).

The servers are `agent.sim.SimServer`s (pymodbus) whose register images are filled by
`tests._registers`, not by the codec under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Connection, DeviceConfig
from agent.errors import (
    ModbusError,
    ModbusExceptionResponse,
    ModbusTimeout,
    ReadbackMismatch,
    WriteRefused,
)
from agent.modbus import DevicePool
from agent.modbus._link import Link
from agent.modbus._pool import _Device
from agent.reading import Reading
from agent.sim import DeviceImage, PumpDevice, PumpModel, SimServer
from tests._registers import image
from tests.brokers import until

GROUPS: dict[str, list[dict[str, Any]]] = {
    "fast": [
        {"name": "temperature", "table": "input", "address": 0, "type": "float32", "unit": "degC"},
        {"name": "vibration", "table": "input", "address": 2, "type": "float32", "order": "CDAB"},
        {"name": "pressure", "table": "input", "address": 4, "type": "int16", "scale": 0.01}
        | {"unit": "bar"},
        {"name": "flow", "table": "input", "address": 5, "type": "uint32", "order": "DCBA"},
        {"name": "energy", "table": "input", "address": 20, "type": "int64", "order": "BADC"},
        {"name": "ratio", "table": "input", "address": 24, "type": "float64", "order": "DCBA"},
        {"name": "label", "table": "input", "address": 30, "type": "string", "length": 3},
        {"name": "door_open", "table": "input", "address": 40, "type": "bit", "bit": 5},
        {"name": "pump_on", "table": "coil", "address": 3, "type": "bool"},
        {"name": "leak", "table": "discrete_input", "address": 7, "type": "bool"},
    ],
    "settings": [
        {"name": "setpoint", "table": "holding", "address": 0, "type": "uint16", "scale": 0.1}
        | {"writable": True, "min": 0, "max": 500},
        {"name": "limit", "table": "holding", "address": 1, "type": "float32", "order": "CDAB"}
        | {"writable": True},
        {"name": "offset", "table": "holding", "address": 3, "type": "int32", "order": "BADC"}
        | {"writable": True, "min": -1000, "max": 1000},
        {"name": "tag", "table": "holding", "address": 5, "type": "string", "length": 2}
        | {"writable": True},
        {"name": "enable", "table": "coil", "address": 10, "type": "bool", "writable": True},
        {"name": "serial", "table": "holding", "address": 9, "type": "uint16"},
    ],
}
"""The test device's register map, written out as TOML by `map_file`."""


def toml_map(interval: float) -> str:
    lines = []
    for group, registers in GROUPS.items():
        lines += ["[[groups]]", f'name = "{group}"', f"interval_s = {interval}"]
        for reg in registers:
            lines.append("[[groups.registers]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in reg.items()]
    return "\n".join(lines) + "\n"


EXPECTED = {
    "temperature": 61.25,
    "vibration": -3.5,
    "pressure": 6.12,
    "flow": 123456,
    "energy": -9876543210,
    "ratio": 0.1,
    "label": "ABCDE",
    "door_open": True,
    "pump_on": True,
    "leak": True,
    "setpoint": 42.0,
    "limit": 80.5,
    "offset": -7,
    "tag": "ok",
    "enable": False,
    "serial": 777,
}


def fill(img: DeviceImage) -> DeviceImage:
    img.set("input", 0, image("f", 61.25, "ABCD"))
    img.set("input", 2, image("f", -3.5, "CDAB"))
    img.set("input", 4, image("h", 612, "ABCD"))
    img.set("input", 5, image("I", 123456, "DCBA"))
    img.set("input", 20, image("q", -9876543210, "BADC"))
    img.set("input", 24, image("d", 0.1, "DCBA"))
    img.set("input", 30, [0x4142, 0x4344, 0x4500])
    img.set("input", 40, [1 << 5])
    img.set("coil", 3, [1])
    img.set("discrete_input", 7, [1])
    img.set("holding", 0, [420])
    img.set("holding", 1, image("f", 80.5, "CDAB"))
    img.set("holding", 3, image("i", -7, "BADC"))
    img.set("holding", 5, [0x6F6B, 0])
    img.set("holding", 9, [777])
    return img


@pytest.fixture
def map_file(tmp_path: Path) -> Callable[[float], Path]:
    def make(interval: float) -> Path:
        path = tmp_path / f"map-{interval}.toml"
        path.write_text(toml_map(interval))
        return path

    return make


def device(name: str, port: int, map_path: Path, **kw: Any) -> DeviceConfig:
    kw.setdefault("transport", "tcp")
    if kw["transport"] != "rtu":
        kw.setdefault("host", "127.0.0.1")
    return DeviceConfig(name=name, port=port, map=map_path, **kw)


class Collector:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def __call__(self, reading: Reading) -> None:
        self.readings.append(reading)

    def of(self, name: str) -> list[Reading]:
        return [r for r in self.readings if r.device == name]

    async def wait(self, check: Callable[[], bool]) -> None:
        """Until `check()` holds; device state has no event, so this polls (`until`)."""
        try:
            await until(check, 10)
        except TimeoutError:
            raise AssertionError(f"condition not met in 10 s; got {self.readings[-3:]}") from None


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def values(reading: Reading) -> dict[str, object]:
    return {k: v.value for k, v in reading.values.items()}


def check_expected(readings: list[Reading]) -> None:
    got: dict[str, object] = {}
    for r in readings:
        assert all(v.quality == "good" for v in r.values.values()), r
        got |= values(r)
    assert got == pytest.approx(EXPECTED)


def count_reads(img: DeviceImage) -> list[int]:
    reads: list[int] = []
    img.before_read = lambda: reads.append(1)
    return reads


@pytest.mark.parametrize("transport", ["tcp", "rtu-tcp"])
@pytest.mark.arm64
def test_poll_decodes_every_type_and_order(
    transport: str, map_file: Callable[[float], Path]
) -> None:
    async def scenario() -> None:
        img = fill(DeviceImage())
        reads = count_reads(img)
        async with SimServer({5: img}, transport) as server:  # type: ignore[arg-type]
            got = Collector()
            cfg = device("dev", server.port, map_file(0.05), transport=transport, unit=5)
            async with DevicePool.create([cfg], got) as pool:
                await got.wait(lambda: len(got.readings) >= 6)
                status = pool.status()[0]
        check_expected(got.readings)
        assert [r.seq for r in got.readings] == list(range(len(got.readings)))
        fast = [r for r in got.readings if "pressure" in r.values]
        assert fast[0].values["pressure"].unit == "bar"
        assert status.state == "online"
        assert status.errors == 0
        # Merged: a fast poll is 4 requests (inputs 0-6, inputs 20-40 bridging gaps of at
        # most 8, the coil, the discrete input), a settings poll 2 (holding 0-9, the coil).
        # Polls cancelled at shutdown may have sent a few more.
        merged = 4 * len(fast) + 2 * (len(got.readings) - len(fast))
        assert merged <= len(reads) < merged + 6

    run(scenario)


@pytest.mark.arm64
def test_single_register_devices_read_address_by_address(map_file: Callable[[float], Path]) -> None:
    async def scenario() -> None:
        img = fill(DeviceImage())
        reads = count_reads(img)
        async with SimServer({1: img}) as server:
            got = Collector()
            cfg = device("dev", server.port, map_file(30), single_register_reads=True)
            async with DevicePool.create([cfg], got):
                await got.wait(lambda: len(got.readings) == 2)
        check_expected(got.readings)
        # 19 input registers, a coil, a discrete input, 8 holding registers, a coil.
        assert len(reads) == 30

    run(scenario)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not (a.exists() and b.exists()):
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("socat did not create the pty pair")
        time.sleep(0.01)
    yield str(a), str(b)
    proc.terminate()
    proc.wait(5)


@pytest.mark.arm64
def test_rtu_over_a_serial_line(
    pty_pair: tuple[str, str], map_file: Callable[[float], Path]
) -> None:
    server_end, client_end = pty_pair

    async def scenario() -> None:
        img = fill(DeviceImage())
        async with SimServer({7: img}, "rtu", serial_port=server_end, baudrate=115200):
            got = Collector()
            cfg = device(
                "rtu",
                0 + 502,
                map_file(0.05),
                transport="rtu",
                unit=7,
                serial={"port": client_end, "baudrate": 115200},
            )
            async with DevicePool.create([cfg], got) as pool:
                await got.wait(lambda: len(got.readings) >= 4)
                assert await pool.write("rtu", "setpoint", 12.5) == 12.5
        check_expected(got.readings[:2])
        assert img.get("holding", 0, 1) == [125]

    run(scenario)


def test_simulated_pump_reads_as_a_pump() -> None:
    pump_map = Path(__file__).resolve().parent.parent / "config" / "devices" / "pump.toml"

    async def scenario() -> None:
        pump = PumpDevice(PumpModel(seed=3, fault_rate_per_h=0))
        async with SimServer({1: pump.image}) as server:
            got = Collector()
            async with DevicePool.create([device("pump", server.port, pump_map)], got) as pool:
                await got.wait(lambda: len(got.readings) >= 2)
                assert await pool.write("pump", "speed_setpoint", 1000) == 1000
                assert pump.model.setpoint_rpm == 1000
                assert await pool.write("pump", "run", False) is False
                assert pump.model.running is False
        merged: dict[str, object] = {}
        for r in got.readings[:2]:
            merged |= values(r)
        assert 55 <= merged["temperature"] <= 65  # type: ignore[operator]
        assert 2 <= merged["vibration"] <= 4  # type: ignore[operator]
        assert 5 <= merged["pressure"] <= 7  # type: ignore[operator]
        assert merged["model"] == "P-200 pump"
        assert merged["running"] is True
        assert merged["alarm"] is False

    run(scenario)


def test_a_partly_answered_poll_brings_an_offline_device_back_online(
    map_file: Callable[[float], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A device healed between two reads of one poll answers that poll in part: it is
    back online, and says so (CI once missed the line when the heal fell mid-poll)."""
    caplog.set_level(logging.INFO, "agent.modbus")
    config = device("d", 1502, map_file(1.0))
    failure = ModbusExceptionResponse("d", 4)

    async def scenario() -> None:
        unit = _Device(config, Link(config.connection), Collector())  # never connected
        unit._account([failure, failure], requests=2, started=1.0)
        assert unit.state == "offline"
        unit._account([failure], requests=2, started=2.0)
        assert unit.state == "online"

    run(scenario)
    assert [r.getMessage() for r in caplog.records if "back online" in r.getMessage()] == [
        "device d is back online"
    ]


FAULTS: dict[str, Callable[[DeviceImage, SimServer], Awaitable[None]]] = {}


async def _silent(img: DeviceImage, server: SimServer) -> None:
    img.fault = "silent"


async def _exception(img: DeviceImage, server: SimServer) -> None:
    img.fault = 4


async def _drop(img: DeviceImage, server: SimServer) -> None:
    await server.stop()


async def _heal(img: DeviceImage, server: SimServer) -> None:
    img.fault = None
    if server._server is None:
        await server.start()


FAULTS.update(timeout=_silent, exception=_exception, dropped=_drop)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_failing_device_goes_offline_recovers_and_delays_nobody(
    fault: str, map_file: Callable[[float], Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "agent.modbus")

    async def scenario() -> None:
        healthy_img, faulty_img = fill(DeviceImage()), fill(DeviceImage())
        async with SimServer({1: healthy_img}) as healthy, SimServer({1: faulty_img}) as faulty:
            got = Collector()
            devices = [
                device("healthy", healthy.port, map_file(0.05)),
                device(
                    "faulty",
                    faulty.port,
                    map_file(0.02),
                    timeout_s=0.4,
                    retries=1,
                    retry_backoff_s=0.01,
                    reconnect_max_s=0.2,
                ),
            ]
            async with DevicePool.create(devices, got) as pool:
                await got.wait(lambda: len(got.of("faulty")) >= 2)
                await FAULTS[fault](faulty_img, faulty)
                t_fault = time.time()
                await got.wait(lambda: pool.status()[1].state == "offline")
                await got.wait(lambda: len([r for r in got.of("faulty") if r.ts > t_fault]) >= 4)
                await asyncio.sleep(0.6)  # long enough that a blocked healthy device would show
                offline = pool.status()[1]
                await _heal(faulty_img, faulty)
                t_heal = time.time()
                await got.wait(lambda: pool.status()[1].state == "online")
                healed = lambda: [  # noqa: E731
                    r
                    for r in got.of("faulty")
                    if r.ts > t_heal and all(v.quality == "good" for v in r.values.values())
                ]
                await got.wait(
                    lambda: {"temperature", "setpoint"} <= {k for r in healed() for k in r.values}
                )
                end = time.time()

        faulty_fast = [r for r in got.of("faulty") if "temperature" in r.values]
        bad = [r for r in faulty_fast if r.values["temperature"].quality == "bad"]
        assert bad
        assert all(r.values["temperature"].reason for r in bad)
        assert bad[0].values["temperature"].value == 61.25  # the last good value, marked bad
        assert offline.errors > 0
        assert offline.last_error
        check_expected(healed())
        # Logged once at error level however many polls failed.
        errors = [
            r for r in caplog.records if r.levelno == logging.ERROR and "faulty" in r.getMessage()
        ]
        assert len(errors) == 1
        assert any("back online" in r.getMessage() for r in caplog.records)
        # The healthy device: every reading, in order, none late by the faulty one's timeouts.
        healthy_readings = got.of("healthy")
        assert [r.seq for r in healthy_readings] == list(range(len(healthy_readings)))
        assert all(v.quality == "good" for r in healthy_readings for v in r.values.values())
        during = [r.ts for r in healthy_readings if t_fault <= r.ts <= end]
        assert len(during) >= 4
        gaps = [b - a for a, b in itertools.pairwise(during)]
        assert max(gaps) < 0.3, gaps  # < the faulty device's 0.4 s timeout

    run(scenario)


def test_overlapping_polls_are_skipped_not_queued(map_file: Callable[[float], Path]) -> None:
    async def scenario() -> None:
        img = fill(DeviceImage())
        img.fault = "silent"
        async with SimServer({1: img}) as server:
            got = Collector()
            cfg = device("slow", server.port, map_file(0.02), timeout_s=0.2, retries=0)
            async with DevicePool.create([cfg], got) as pool:
                await got.wait(lambda: len(got.readings) >= 6)
                status = pool.status()[0]
        fast = [r.ts for r in got.readings if "temperature" in r.values]
        assert status.skipped > 0
        # Each poll of the group waits out its 0.2 s timeout; skipped ticks do not pile up
        # into back-to-back polls afterwards.
        assert min(b - a for a, b in itertools.pairwise(fast)) >= 0.15

    run(scenario)


@pytest.mark.arm64
def test_writes_are_checked_encoded_and_read_back(map_file: Callable[[float], Path]) -> None:
    async def scenario() -> None:
        img = fill(DeviceImage())
        async with (
            SimServer({1: img}) as server,
            DevicePool.create([device("dev", server.port, map_file(60))], Collector()) as pool,
        ):
            assert await pool.write("dev", "setpoint", 12.3) == pytest.approx(12.3)
            assert img.get("holding", 0, 1) == [123]
            assert await pool.write("dev", "limit", -2.5) == -2.5
            assert img.get("holding", 1, 2) == image("f", -2.5, "CDAB")
            assert await pool.write("dev", "offset", -1000) == -1000
            assert img.get("holding", 3, 2) == image("i", -1000, "BADC")
            assert await pool.write("dev", "tag", "hi") == "hi"
            assert img.get("holding", 5, 2) == [0x6869, 0]
            assert await pool.write("dev", "enable", True) is True
            assert img.get("coil", 10, 1) == [1]

            refused = [
                ("serial", 1, "not writable"),
                ("temperature", 1.0, "not writable"),
                ("setpoint", 500.1, r"outside \[0.0, 500.0\]"),
                ("offset", -1001, "outside"),
                ("setpoint", "12", "takes a number"),
                ("enable", 1, "takes a boolean"),
                ("tag", "toolong", "longer than 4"),
                ("nothing", 1, "no register 'nothing'"),
            ]
            for name, value, message in refused:
                with pytest.raises(WriteRefused, match=message):
                    await pool.write("dev", name, value)  # type: ignore[arg-type]
            with pytest.raises(WriteRefused, match="no such device"):
                await pool.write("other", "setpoint", 1)
            assert img.get("holding", 0, 1) == [123]  # nothing refused reached the device

            def clamp(table: str, address: int, words: list[int]) -> None:
                if table == "holding" and address == 0:
                    img.set("holding", 0, [min(words[0], 1000)])

            img.after_write = clamp
            with pytest.raises(ReadbackMismatch, match=r"wrote \[4000\], read back \[1000\]"):
                await pool.write("dev", "setpoint", 400)
            img.fault = "silent"
            with pytest.raises(ModbusTimeout, match=r"^dev: no answer"):
                await pool.write("dev", "setpoint", 1)

    run(scenario)


@pytest.mark.arm64
def test_a_non_finite_float_is_a_bad_value_that_names_itself(
    map_file: Callable[[float], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Sensors report faults as NaN; JSON cannot carry it and modules must not use it."""

    async def scenario() -> None:
        img = fill(DeviceImage())
        async with SimServer({1: img}) as server:
            got = Collector()
            async with DevicePool.create([device("dev", server.port, map_file(0.02))], got):
                await got.wait(lambda: len(got.readings) >= 2)
                img.set("input", 0, image("f", float("nan"), "ABCD"))
                img.set("input", 2, image("f", float("-inf"), "CDAB"))
                first = len(got.readings)
                await got.wait(
                    lambda: sum("temperature" in r.values for r in got.readings[first:]) >= 4
                )
                img.set("input", 0, image("f", 20.5, "ABCD"))
                after = len(got.readings)
                await got.wait(
                    lambda: any(
                        r.values["temperature"].quality == "good"
                        for r in got.readings[after:]
                        if "temperature" in r.values
                    )
                )
        fast = [r for r in got.readings if "temperature" in r.values]
        bad = [r for r in fast if r.values["temperature"].quality == "bad"]
        assert len(bad) >= 3
        for r in bad:
            temperature, vibration = r.values["temperature"], r.values["vibration"]
            assert temperature.value == 61.25  # the last good value, not NaN
            assert temperature.reason == "float32 register 0 gave nan, not a finite number"
            assert (vibration.value, vibration.quality) == (-3.5, "bad")
            assert vibration.reason == "float32 register 2 gave -inf, not a finite number"
            assert r.values["pressure"].quality == "good"  # the rest of the reading is fine
        assert fast[-1].values["temperature"].value == 20.5
        warnings = [m for m in caplog.messages if "not a finite number" in m]
        assert len(warnings) == 2  # once per register, not once per poll

    with caplog.at_level(logging.WARNING, logger="agent.modbus"):
        run(scenario)


def test_a_stale_poll_does_not_undo_a_newer_ones_verdict(map_file: Callable[[float], Path]) -> None:
    """Groups poll concurrently: a poll sent before the device recovered may finish after
    one sent since. Only the one that started last may set the state (and log)."""
    from agent.modbus._pool import _Device  # noqa: PLC0415 - the accounting alone

    dev = _Device(device("dev", 1, map_file(1)), None, Collector())  # type: ignore[arg-type]
    refused = [ModbusExceptionResponse("dev", 4), ModbusExceptionResponse("dev", 4)]
    dev._account(refused, 2, started=1.0)
    assert dev.state == "offline"
    dev._account([], 2, started=3.0)  # sent after the device recovered
    dev._account(refused, 2, started=2.0)  # sent before, answered last
    assert dev.state == "online"
    assert (dev.polls, dev.errors) == (3, 4)  # still counted
    dev._account(refused, 2, started=4.0)
    assert dev.state == "offline"


def test_an_answer_with_fewer_registers_than_asked_is_a_modbus_error() -> None:
    """pymodbus takes an answer's own byte count; a device that sends one register short
    left the poller without a word it indexes (KeyError). It is a bad answer."""

    async def one_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                request = await reader.readexactly(12)  # MBAP header and a read PDU
                tid, function, count = request[:2], request[7], int.from_bytes(request[10:])
                words = (count - 1) * 2
                pdu = bytes([function, words]) + b"\x00" * words
                writer.write(tid + b"\x00\x00" + (len(pdu) + 1).to_bytes(2) + b"\x01" + pdu)
                await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(one_short, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = Link(
            Connection(
                transport="tcp",
                host="127.0.0.1",
                port=port,
                serial=None,
                timeout_s=1.0,
                reconnect_max_s=1.0,
                connect_pause_s=0.0,
                request_pause_s=0.0,
            )
        )
        try:
            await link.ensure_connected()
            with pytest.raises(ModbusError, match="bad answer: 2 registers for the 3 asked"):
                await link.read(1, "holding", 0, 3)
        finally:
            link.close()
            server.close()
            await server.wait_closed()

    run(scenario)
