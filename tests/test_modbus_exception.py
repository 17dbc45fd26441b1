"""Report by exception: deadbands, on-change points and heartbeats, alone and in a poll."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.config import DeviceConfig, RegisterSpec
from agent.modbus import DevicePool
from agent.modbus._exception import ExceptionFilter
from agent.reading import Reading, Value
from agent.sim import DeviceImage, SimServer
from tests.brokers import until


def spec(name: str, **kw: Any) -> RegisterSpec:
    kw.setdefault("type", "float32")
    return RegisterSpec(name=name, table="holding", address=0, **kw)


def sent(flt: ExceptionFilter, steps: list[tuple[float, Value]]) -> list[float]:
    """The times at which the value named `x` was sent."""
    return [now for now, value in steps if "x" in flt.report({"x": value}, now)]


def test_an_absolute_deadband_measures_from_the_last_value_sent() -> None:
    flt = ExceptionFilter([spec("x", deadband=0.5)])
    steps = [(0, 10.0), (1, 10.3), (2, 10.5), (3, 10.6), (4, 10.0), (5, 9.9)]
    # 10.3 and 10.5 are within 0.5 of 10.0; 10.6 is not (a drift adds up); 10.0 is
    # within 0.5 of 10.6? no: 0.6 away, sent; 9.9 is within 0.5 of 10.0.
    assert sent(flt, [(t, Value(v)) for t, v in steps]) == [0, 3, 4]


def test_a_percent_deadband_scales_with_the_value() -> None:
    flt = ExceptionFilter([spec("x", deadband_percent=10)])
    steps = [(0, 200.0), (1, 215.0), (2, 221.0), (3, 230.0), (4, 0.0), (5, 0.0), (6, 0.001)]
    assert sent(flt, [(t, Value(v)) for t, v in steps]) == [0, 2, 4, 6]


def test_on_change_sends_any_change_and_a_heartbeat() -> None:
    flt = ExceptionFilter([spec("x", type="uint16", on_change=True, max_interval_s=10)])
    steps = [(0, 1), (1, 1), (2, 2), (5, 2), (12, 2), (13, 2), (22.5, 2)]
    assert sent(flt, [(t, Value(v)) for t, v in steps]) == [0, 2, 12, 22.5]


def test_a_change_of_quality_is_always_sent() -> None:
    flt = ExceptionFilter([spec("x", deadband=100)])
    steps = [Value(1.0), Value(1.0, quality="bad", reason="timeout"), Value(1.0)]
    assert sent(flt, list(enumerate(steps))) == [0, 1, 2]  # type: ignore[arg-type]


def test_strings_and_booleans_compare_as_they_are() -> None:
    flt = ExceptionFilter(
        [
            spec("x", type="string", length=2, on_change=True),
            RegisterSpec(name="b", table="coil", address=0, type="bool", on_change=True),
        ]
    )
    assert sent(flt, [(0, Value("ok")), (1, Value("ok")), (2, Value("no"))]) == [0, 2]
    got = [list(flt.report({"b": Value(v)}, t)) for t, v in enumerate([True, True, False])]
    assert got == [["b"], [], ["b"]]


def test_points_without_a_rule_go_with_every_poll() -> None:
    flt = ExceptionFilter([spec("x", deadband=5), spec("y")])
    first = flt.report({"x": Value(1.0), "y": Value(1.0)}, 0)
    second = flt.report({"x": Value(2.0), "y": Value(1.0)}, 1)
    assert (list(first), list(second)) == (["x", "y"], ["y"])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"type": "string", "length": 2, "deadband": 1.0}, "deadband applies to numeric"),
        ({"deadband": 1.0, "deadband_percent": 5.0}, "not both"),
        ({"max_interval_s": 5.0}, "needs on_change, deadband or deadband_percent"),
        ({"deadband": -1.0}, "greater than 0"),
        ({"deadband_percent": 150.0}, "less than or equal to 100"),
    ],
)
def test_rules_that_make_no_sense_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec("x", **kw)


def test_a_map_with_a_bad_rule_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "map.toml"
    path.write_text(
        '[[groups]]\nname = "g"\ninterval_s = 1\n[[groups.registers]]\nname = "s"\n'
        'table = "holding"\naddress = 0\ntype = "string"\nlength = 2\ndeadband = 1.0\n'
    )
    with pytest.raises(ValueError, match=r"map.toml: groups.0.registers.0: .*deadband applies"):
        DeviceConfig(name="d", transport="tcp", host="127.0.0.1", map=path)


def test_a_polled_device_sends_a_steady_point_only_when_due(tmp_path: Path) -> None:
    """The counter changes on every poll; the setpoint never does, so it goes out with
    the first reading and then with its heartbeat only."""
    path = tmp_path / "map.toml"
    path.write_text(
        '[[groups]]\nname = "g"\ninterval_s = 0.02\n'
        '[[groups.registers]]\nname = "count"\ntable = "holding"\naddress = 0\n'
        'type = "uint16"\n'
        '[[groups.registers]]\nname = "setpoint"\ntable = "holding"\naddress = 1\n'
        'type = "uint16"\non_change = true\nmax_interval_s = 0.5\n'
    )
    img = DeviceImage()
    img.set("holding", 1, [1450])
    polls = 0

    def count() -> None:
        nonlocal polls
        polls += 1
        img.set("holding", 0, [polls % 65536])

    img.before_read = count
    readings: list[Reading] = []

    async def collect(reading: Reading) -> None:
        readings.append(reading)

    async def scenario() -> None:
        async with SimServer({1: img}) as server:
            config = DeviceConfig(
                name="d", transport="tcp", host="127.0.0.1", port=server.port, map=path
            )
            async with DevicePool.create([config], collect):
                await until(lambda: len(readings) >= 60, 20)

    asyncio.run(scenario())
    with_setpoint = [r for r in readings if "setpoint" in r.values]
    assert all("count" in r.values for r in readings)
    assert 2 <= len(with_setpoint) < len(readings) / 5
    assert with_setpoint[0] is readings[0]
    assert [r.seq for r in readings] == list(range(len(readings)))
