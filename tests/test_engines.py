"""Conformance: the guest modules give the same output, and faults the same errors,
on every available engine."""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import statistics
import struct
from typing import Any

import pytest
import wasmtime

from agent import errors
from agent.reading import Reading, Series, Value
from agent.wasm import (
    Emitted,
    Engine,
    Limits,
    ReactorModule,
    WasiSpec,
    create_engine,
    encode_reading,
    run_command,
)

from .conftest import module_bytes

pytestmark = pytest.mark.arm64


def pump_readings(n: int, samples: int = 1000, seed: int = 7) -> list[Reading]:
    rng = random.Random(seed)
    out = []
    for seq in range(n):
        vibration = [math.sin(j / 9) * 0.4 + rng.gauss(0, 0.05) for j in range(samples)]
        out.append(
            Reading(
                device="pump-1",
                ts=1764118800.0 + seq,
                seq=seq,
                values={
                    "temperature": Value(600 + rng.uniform(-20, 20), "degC"),
                    "pressure": Value(2.0 + rng.uniform(-0.5, 0.5), "bar"),
                    "running": Value(True),
                    "model": Value("P-200"),
                },
                series={"vibration": Series.pack("f32", vibration, unit="g")},
            )
        )
    return out


def run(
    engine: Engine,
    name: str,
    config: dict[str, Any],
    readings: list[Reading],
    limits: Limits | None = None,
) -> list[Emitted]:
    module = ReactorModule(engine.compile(module_bytes(name), name), config, limits=limits)
    try:
        return [m for r in readings for m in module.on_reading(r)]
    finally:
        module.close()


def payloads(messages: list[Emitted]) -> list[Any]:
    return [m.to_json()["payload"] for m in messages]


def test_window_stats_computes_the_window(engine: Engine) -> None:
    readings = pump_readings(6, samples=300)
    out = payloads(run(engine, "window-stats", {"window": 500, "every": 3}, readings))
    assert [p["seq"] for p in out] == [2, 5]
    last = out[-1]["channels"]
    # The window holds the last 500 vibration samples: readings 4 and 5, and 200 of 3.
    samples = [v for r in readings[3:] for v in r.series["vibration"].values()][-500:]
    assert last["vibration"]["n"] == 500
    assert last["vibration"]["mean"] == pytest.approx(statistics.fmean(samples), rel=1e-9)
    assert last["vibration"]["std"] == pytest.approx(statistics.pstdev(samples), rel=1e-9)
    assert last["vibration"]["min"] == min(samples)
    assert last["vibration"]["max"] == max(samples)
    rms = math.sqrt(statistics.fmean(v * v for v in samples))
    assert last["vibration"]["rms"] == pytest.approx(rms, rel=1e-9)
    temps = [r.values["temperature"].value for r in readings]
    assert last["temperature"]["n"] == 6
    assert last["temperature"]["mean"] == pytest.approx(statistics.fmean(temps))  # type: ignore[arg-type]
    assert set(last) == {"vibration", "temperature", "pressure"}


def test_scale_converts_and_clamps(engine: Engine) -> None:
    reading = Reading(
        "pump-1",
        1.0,
        0,
        {
            "temperature": Value(1000, "degC"),
            "pressure": Value(2.0, "bar"),
            "running": Value(True),
        },
    )
    config = {
        "channels": {
            "temperature": {"scale": 0.1, "to": "degF"},
            "pressure": {"to": "kPa", "max": 150},
        }
    }
    (message,) = run(engine, "scale", config, [reading])
    values = message.to_json()["payload"]["values"]
    assert message.topic == "scaled"
    assert values["temperature"] == {
        "value": pytest.approx(212.0),
        "unit": "degF",
        "quality": "good",
    }
    assert values["pressure"] == {"value": 150, "unit": "kPa", "quality": "uncertain"}
    assert values["running"]["value"] is True


def test_every_engine_gives_the_same_bytes(engine: Engine, engine_name: str) -> None:
    readings = pump_readings(5)
    reference = create_engine("wasmtime")
    try:
        for name, config in [
            ("window-stats", {"window": 700, "every": 2}),
            ("scale", {"channels": {"temperature": {"scale": 0.5, "offset": -3, "to": "K"}}}),
        ]:
            expected = run(reference, name, config, readings)
            assert expected, name
            assert run(engine, name, config, readings) == expected, (name, engine_name)
    finally:
        reference.close()


def test_command_module_reads_stdin_and_writes_stdout(engine: Engine) -> None:
    compiled = engine.compile(module_bytes("echo-cmd"), "echo-cmd")
    messages = run_command(compiled, pump_readings(3, samples=50))
    assert [m.topic for m in messages] == ["out"] * 3
    assert payloads(messages)[2] == {
        "device": "pump-1",
        "seq": 2,
        "values": 4,
        "series": 1,
        "samples": 50,
    }


FAULTS = [
    ("trap", Limits(), errors.ModuleTrap, "unreachable"),
    ("oob", Limits(), errors.ModuleTrap, "out of bounds"),
    ("loop", Limits(deadline_ms=100), errors.ModuleTimeout, "deadline of 100 ms"),
    ("loop", Limits(deadline_ms=None, fuel=5_000_000), errors.FuelExhausted, "fuel"),
    ("bomb", Limits(memory_pages=40), errors.MemoryLimitExceeded, "cap of 40 pages"),
    ("recurse", Limits(), errors.StackExhausted, "deeper than 5000 calls"),
    ("exit", Limits(), errors.ModuleExit, "proc_exit(3)"),
    ("big_emit", Limits(), errors.EmitRejected, "the limit is 65536"),
    ("bad_topic", Limits(), errors.EmitRejected, "'a/#'"),
    ("error_code", Limits(), errors.CallFailed, "returned error code 7"),
]


@pytest.mark.parametrize(
    ("fault", "limits", "error", "text"), FAULTS, ids=[f"{f[0]}-{f[2].__name__}" for f in FAULTS]
)
def test_faults_are_contained(
    engine: Engine, fault: str, limits: Limits, error: type[errors.ModuleError], text: str
) -> None:
    bad = ReactorModule(
        engine.compile(module_bytes("faulty"), "faulty"), {"fault": fault}, limits=limits
    )
    good = ReactorModule(engine.compile(module_bytes("faulty"), "healthy"), {"fault": "none"})
    reading = pump_readings(1, samples=10)[0]
    try:
        for _ in range(2):  # the instance is replaced after a fault and faults again
            with pytest.raises(error) as caught:
                bad.on_reading(reading)
            assert type(caught.value) is error
            assert caught.value.module == "faulty"
            assert text in str(caught.value)
            (message,) = good.on_reading(reading)
            assert message == Emitted("echo", b'{"seq":0}')
    finally:
        bad.close()
        good.close()


def test_module_logs_and_stdio_reach_the_agent_log(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.module")
    reading = pump_readings(1, samples=1)[0]
    for fault in ("log", "stdout"):
        module = ReactorModule(engine.compile(module_bytes("faulty"), "faulty"), {"fault": fault})
        try:
            assert module.on_reading(reading) == [Emitted("echo", b'{"seq":0}')]
        finally:
            module.close()
    records = [(r.name, r.levelno) for r in caplog.records]
    assert ("agent.module.faulty", logging.DEBUG) in records
    assert ("agent.module.faulty", logging.ERROR) in records
    texts = [r.getMessage() for r in caplog.records if r.name == "agent.module.faulty"]
    assert any(t.startswith("stdout: ") for t in texts)
    assert any(t.startswith("stderr: ") for t in texts)


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


@pytest.mark.parametrize(
    ("wasm", "error", "text"),
    [
        (b"\0asm\x01\0\0\0\xff\xff", errors.InvalidModule, "not a valid WebAssembly module"),
        (b"MZ\x90\x00 not wasm", errors.InvalidModule, "not a valid WebAssembly module"),
        (wat("(module (func (result i32) i64.const 0))"), errors.InvalidModule, "not a valid"),
    ],
    ids=["truncated", "not-wasm", "type-error"],
)
def test_malformed_modules_are_refused(
    engine: Engine, wasm: bytes, error: type[errors.ModuleError], text: str
) -> None:
    with pytest.raises(error, match=text):
        engine.compile(wasm, "broken")


def test_missing_import_is_refused_before_running(engine: Engine) -> None:
    module = wat(
        '(module (import "env" "launch_missiles" (func)) (memory (export "memory") 1)'
        ' (func (export "_start")))'
    )
    compiled = engine.compile(module, "m")
    with pytest.raises(errors.MissingImport, match=r"env\.launch_missiles"):
        run_command(compiled, [])
    with pytest.raises(errors.MissingImport, match="launch_missiles"):
        compiled.instantiate((), WasiSpec(), Limits())


def test_module_that_is_not_a_reactor_is_refused(engine: Engine) -> None:
    compiled = engine.compile(wat('(module (memory (export "memory") 1))'), "m")
    with pytest.raises(errors.InvalidModule, match="does not export"):
        ReactorModule(compiled)


def test_memory_above_the_cap_fails_instantiation(engine: Engine) -> None:
    compiled = engine.compile(wat('(module (memory (export "memory") 100))'), "big")
    with pytest.raises(errors.MemoryLimitExceeded, match="cap of 10 pages"):
        compiled.instantiate((), WasiSpec(), Limits(memory_pages=10))


def test_closed_wasmtime_instances_release_their_host_functions() -> None:
    """Host functions live in a registry that must not keep stores alive."""
    from agent.wasm.engines import _wasmtime  # noqa: PLC0415

    eng = create_engine("wasmtime")
    compiled = eng.compile(module_bytes("faulty"), "faulty")
    gc.collect()
    before = len(_wasmtime._HOST_FUNCTIONS)
    for _ in range(20):
        module = ReactorModule(compiled, {"fault": "none"})
        module.on_reading(Reading("d", 0.0, 1))
        module.close()
    gc.collect()
    assert len(_wasmtime._HOST_FUNCTIONS) == before
    eng.close()


def test_reading_layout_aligns_each_series_to_eight_bytes() -> None:
    reading = Reading(
        "d",
        1.5,
        7,
        {"t": Value(20.5, "degC"), "on": Value(True)},
        {"a": Series.pack("i16", [1, -2, 3]), "b": Series.pack("f64", [0.5], unit="g")},
    )
    doc, blob = encode_reading(reading)
    assert json.loads(doc) == {
        "device": "d",
        "ts": 1.5,
        "seq": 7,
        "values": {
            "t": {"value": 20.5, "unit": "degC", "quality": "good"},
            "on": {"value": True, "quality": "good"},
        },
        "series": {
            "a": {"offset": 0, "count": 3, "type": "i16", "quality": "good"},
            "b": {"offset": 8, "count": 1, "type": "f64", "unit": "g", "quality": "good"},
        },
    }
    assert blob == struct.pack("<3h", 1, -2, 3) + b"\0\0" + struct.pack("<d", 0.5)
    assert encode_reading(Reading("d", 1.0, 1))[1] == b""


def test_wasmtime_refuses_to_call_an_export_that_is_not_i32_only() -> None:
    """The raw call path trusts the signature it checked once per compiled module."""
    eng = create_engine("wasmtime")
    compiled = eng.compile(
        wat(
            '(module (memory (export "memory") 1)'
            ' (func (export "wide") (param i64) (result i64) local.get 0)'
            ' (func (export "narrow") (param i32) (result i32) local.get 0))'
        ),
        "m",
    )
    instance = compiled.instantiate((), WasiSpec(), Limits())
    try:
        assert instance.call("narrow", 7) == 7
        for _ in range(2):  # refused again from the cached check
            with pytest.raises(errors.InvalidModule, match=r"'wide' has type .* i32 only"):
                instance.call("wide", 1)
    finally:
        instance.close()
        eng.close()


def test_calls_pass_i32_values_unsigned_and_check_their_count(engine: Engine) -> None:
    """Both call paths pack arguments in bulk: the high bit and the count must survive."""
    compiled = engine.compile(
        wat(
            '(module (memory (export "memory") 1)'
            ' (func (export "second") (param i32 i32) (result i32) local.get 1))'
        ),
        "m",
    )
    instance = compiled.instantiate((), WasiSpec(), Limits())
    try:
        for value in (0, 7, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF):
            assert instance.call("second", 1, value) == value
        assert instance.call("second", 1, -1) == 0xFFFFFFFF
        with pytest.raises(errors.ModuleError, match="takes 2 arguments, given 1"):
            instance.call("second", 1)
    finally:
        instance.close()


def test_numbers_survive_the_guest_reader_and_writer_bit_for_bit(engine: Engine) -> None:
    """`scale` with an identity channel parses each value and writes it back: every
    double must come out as Python wrote it. This covers the SDK's three readers
    (Clinger's fast path, Eisel-Lemire and the strtod fallback) and its writer."""
    rng = random.Random(5)
    numbers = [
        9007199254740993.0,  # 2^53 + 1 rounds to even: a halfway case
        0.1,
        1e23,
        5e-324,
        1.7976931348623157e308,
        2.2250738585072014e-308,
        123456.789,
    ]
    numbers += [rng.uniform(-1000, 1000) for _ in range(150)]
    numbers += [rng.gauss(0, 1) * 10.0 ** rng.randint(-30, 30) for _ in range(150)]
    numbers += [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(63)))[0] for _ in range(100)]
    numbers = [x for x in numbers if math.isfinite(x)]
    readings = [Reading("d", 1.0, i, {"x": Value(x)}) for i, x in enumerate(numbers)]
    messages = run(engine, "scale", {"channels": {"x": {"scale": 1}}}, readings)
    got = [json.loads(m.payload)["values"]["x"]["value"] for m in messages]
    assert [repr(float(g)) for g in got] == [repr(x) for x in numbers]


def test_emits_outside_the_granted_topics_are_refused_every_time(engine: Engine) -> None:
    """Checked topics are remembered; refused ones must not be."""
    reading = Reading("d", 1.0, 1, {"t": Value(20.0, "degC")})
    compiled = engine.compile(module_bytes("scale"), "scale")
    refused = ReactorModule(compiled, {}, emit_topics=("stats/#",))
    granted = ReactorModule(compiled, {}, emit_topics=("stats/#", "+"))
    try:
        for _ in range(2):
            with pytest.raises(errors.EmitRejected, match=r"may not emit to 'scaled'"):
                refused.on_reading(reading)
            assert [m.topic for m in granted.on_reading(reading)] == ["scaled"]
    finally:
        refused.close()
        granted.close()


def test_reading_document_is_what_json_dumps_writes() -> None:
    """The document is written by hand for speed: it must stay byte for byte what
    `json.dumps` makes of the documented shape, escapes and numbers included."""
    rng = random.Random(3)
    samples: list[float | int | bool | str] = [True, False, 0, -(10**12), 1e-300, 'a "q" \\ \n é']
    names = ["t", "b☃", 'q"', "x/y"]
    for seq in range(300):
        values = {
            rng.choice(names) + str(j): Value(
                rng.choice([*samples, rng.random() * 1e6]),
                rng.choice([None, "degC", "°C"]),
                rng.choice(["good", "bad", "uncertain"]),
            )
            for j in range(rng.randint(0, 4))
        }
        series = {
            f"s{j}": Series.pack(
                rng.choice(["f32", "f64", "i16", "u16", "i32", "u32"]),
                [rng.randint(0, 100) for _ in range(rng.randint(0, 7))],
                unit=rng.choice([None, "g"]),
            )
            for j in range(rng.randint(0, 3))
        }
        reading = Reading("dév", rng.random() * 1e9, seq, values, series)
        expected: dict[str, Any] = {
            "device": reading.device,
            "ts": reading.ts,
            "seq": seq,
            "values": {
                name: {"value": v.value}
                | ({"unit": v.unit} if v.unit is not None else {})
                | {"quality": v.quality}
                for name, v in values.items()
            },
        }
        blob, layout = b"", {}
        for name, s in series.items():
            blob += b"\0" * (-len(blob) % 8)
            layout[name] = {"offset": len(blob), "count": s.count, "type": s.dtype}
            layout[name] |= ({"unit": s.unit} if s.unit is not None else {}) | {"quality": "good"}
            blob += s.data
        if series:
            expected["series"] = layout
        document = json.dumps(expected, separators=(",", ":")).encode()
        assert encode_reading(reading) == (document, blob)
