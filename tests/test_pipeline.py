"""The pipeline on a real engine with the real modules: routing, order, faults, swaps."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ModuleError
from agent.journal import Journal
from agent.reading import Reading, Value
from agent.runtime import RAW, ModuleHost, Pipeline, Route
from agent.wasm import Emitted, Engine, Limits, ReactorModule
from tests.brokers import until
from tests.conftest import module_bytes

pytestmark = pytest.mark.arm64

ROOT = "edge/node-1"


class ListSink:
    """Stands in for the outbox: records what would be published, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], int]] = []

    async def put(self, topic: str, payload: bytes, *, qos: int) -> None:
        self.messages.append((topic, json.loads(payload), qos))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [payload for t, payload, _ in self.messages if t == topic]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.sqlite") as j:
        yield j


def reading(device: str, seq: int, temperature: float) -> Reading:
    return Reading(device, 1764118800.0 + seq, seq, {"temperature": Value(temperature, "degC")})


def maker(
    engine: Engine, name: str, config: dict[str, Any], **kw: Any
) -> Callable[[], ReactorModule]:
    return lambda: ReactorModule(engine.compile(module_bytes(name), name), config, **kw)


async def host(engine: Engine, name: str, config: dict[str, Any], **kw: Any) -> ModuleHost:
    module = kw.pop("module", name)
    return await ModuleHost.start(name, maker(engine, module, config, **kw), version="1.0.0")


def test_readings_reach_the_sink_in_order_through_a_chain(engine: Engine, journal: Journal) -> None:
    async def scenario() -> ListSink:
        sink = ListSink()
        qos = {"scaled": 1, "stats": 0}
        pipeline = Pipeline(sink, journal, ROOT, raw_readings=True, qos_for=lambda t: qos.get(t, 0))
        scale = {"topic": "scaled", "channels": {"temperature": {"to": "degF"}}}
        pipeline.add(await host(engine, "scale", scale), Route(devices=frozenset({"pump-1"})))
        stats = {"topic": "stats", "window": 4, "every": 2}
        pipeline.add(await host(engine, "window-stats", stats), Route(after="scale"))
        async with pipeline:
            for seq in range(20):
                await pipeline.on_reading(reading("pump-1", seq, 20.0 + seq))
                await pipeline.on_reading(reading("other", seq, 99.0))
            await pipeline.drain()
        return sink

    sink = asyncio.run(scenario())
    scaled = sink.on(f"{ROOT}/scaled")
    assert [m["seq"] for m in scaled] == list(range(20))
    assert scaled[3]["values"]["temperature"] == {
        "value": pytest.approx(73.4),
        "unit": "degF",
        "quality": "good",
    }
    stats = sink.on(f"{ROOT}/stats")
    assert [m["seq"] for m in stats] == list(range(1, 20, 2))
    # The window holds the last four converted values: 20..23 degC is 68..73.4 degF.
    assert stats[1]["channels"]["temperature"]["mean"] == pytest.approx(
        (68 + 69.8 + 71.6 + 73.4) / 4
    )
    raw = sink.on(f"{ROOT}/devices/other")
    assert [m["seq"] for m in raw] == list(range(20))
    qos = {topic.rsplit("/", 1)[1]: q for topic, _, q in sink.messages}
    assert qos == {"scaled": 1, "stats": 0, "pump-1": 0, "other": 0}


def test_a_faulting_module_is_counted_and_the_others_go_on(
    engine: Engine, journal: Journal
) -> None:
    outcomes: list[tuple[str, str | None]] = []

    async def on_outcome(h: ModuleHost, err: ModuleError | None) -> None:
        outcomes.append((h.name, type(err).__name__ if err else None))

    async def scenario() -> tuple[ListSink, list[Any]]:
        sink = ListSink()
        pipeline = Pipeline(sink, journal, ROOT, on_outcome=on_outcome)
        pipeline.add(await host(engine, "faulty", {"fault": "trap"}), Route())
        pipeline.add(await host(engine, "echo", {"fault": "none"}, module="faulty"), Route())
        async with pipeline:
            for seq in range(5):
                await pipeline.on_reading(reading("pump-1", seq, 1.0))
            await pipeline.drain()
            stats = pipeline.status()
        return sink, stats

    sink, stats = asyncio.run(scenario())
    assert [m["seq"] for m in sink.on(f"{ROOT}/echo")] == list(range(5))
    assert outcomes.count(("faulty", "ModuleTrap")) == 5
    assert outcomes.count(("echo", None)) == 5
    by_name = {s.name: s for s in stats}
    assert (by_name["faulty"].invocations, by_name["faulty"].errors) == (5, 5)
    assert "trap" in (by_name["faulty"].last_error or "")
    assert by_name["echo"].errors == 0
    assert by_name["echo"].p50_ms is not None
    assert by_name["echo"].p99_ms is not None
    assert by_name["echo"].p50_ms <= by_name["echo"].p99_ms


def test_replace_takes_over_between_two_readings(engine: Engine, journal: Journal) -> None:
    async def scenario() -> ListSink:
        sink = ListSink()
        pipeline = Pipeline(sink, journal, ROOT)
        first = {"topic": "out", "channels": {"temperature": {"scale": 1.0}}}
        pipeline.add(await host(engine, "scale", first), Route())
        async with pipeline:
            # Readings keep arriving while the new version is built and swapped in.
            for seq in range(20):
                await pipeline.on_reading(reading("pump-1", seq, 10.0))
            second = {"topic": "out", "channels": {"temperature": {"scale": 2.0}}}
            scale = pipeline.host("scale")
            assert scale is not None
            swap = asyncio.create_task(
                scale.replace(maker(engine, "scale", second), version="2.0.0", digest="sha256:x")
            )
            for seq in range(20, 40):
                await pipeline.on_reading(reading("pump-1", seq, 10.0))
            await swap
            for seq in range(40, 45):
                await pipeline.on_reading(reading("pump-1", seq, 10.0))
            await pipeline.drain()
            assert scale.status().version == "2.0.0"
        return sink

    out = asyncio.run(scenario()).on(f"{ROOT}/out")
    assert [m["seq"] for m in out] == list(range(45))
    values = [m["values"]["temperature"]["value"] for m in out]
    switch = values.index(20)
    assert switch > 0
    assert values == [10] * switch + [20] * (45 - switch)


def test_a_replacement_that_cannot_start_leaves_the_running_version(
    engine: Engine, journal: Journal
) -> None:
    async def scenario() -> tuple[ListSink, str]:
        sink = ListSink()
        pipeline = Pipeline(sink, journal, ROOT)
        pipeline.add(await host(engine, "scale", {"topic": "out"}), Route())
        async with pipeline:
            scale = pipeline.host("scale")
            assert scale is not None
            bad = maker(engine, "scale", {"no_such_key": 1})
            with pytest.raises(ModuleError, match="edge_configure returned error code"):
                await scale.replace(bad, version="2.0.0", digest="sha256:y")
            await pipeline.on_reading(reading("pump-1", 0, 10.0))
            await pipeline.drain()
            return sink, scale.status().version

    sink, version = asyncio.run(scenario())
    assert version == "1.0.0"
    assert len(sink.on(f"{ROOT}/out")) == 1


def test_a_module_over_its_deadline_does_not_hold_up_the_others(
    engine: Engine, journal: Journal
) -> None:
    async def scenario() -> ListSink:
        sink = ListSink()
        pipeline = Pipeline(sink, journal, ROOT)
        slow = Limits(deadline_ms=200)
        pipeline.add(
            await host(engine, "loop", {"fault": "loop"}, module="faulty", limits=slow), Route()
        )
        pipeline.add(await host(engine, "echo", {"fault": "none"}, module="faulty"), Route())
        async with pipeline:
            for seq in range(3):
                await pipeline.on_reading(reading("pump-1", seq, 1.0))
            # The echo module finishes its three readings while the looping one is
            # still inside its first deadline.
            await until(lambda: len(sink.on(f"{ROOT}/echo")) == 3, 1)
            loop_host = pipeline.host("loop")
            assert loop_host is not None
            assert loop_host.status().invocations < 3
            await pipeline.drain()
        return sink

    sink = asyncio.run(scenario())
    assert [m["seq"] for m in sink.on(f"{ROOT}/echo")] == [0, 1, 2]


def test_after_a_crash_each_module_takes_what_it_missed_then_live_readings(
    engine: Engine, tmp_path: Path
) -> None:
    """The state a SIGKILL leaves: readings journaled after the modules' cursors, never
    processed. The next run processes them first, in order, once, followers included,
    while live readings arrive."""
    path = tmp_path / "journal.sqlite"
    scale = {"topic": "scaled", "channels": {"temperature": {"to": "degF"}}}
    stats = {"topic": "stats", "window": 2, "every": 1}

    async def run(seqs: range) -> ListSink:
        sink = ListSink()
        with Journal.open(path) as journal:
            pipeline = Pipeline(sink, journal, ROOT, raw_readings=True)
            pipeline.add(await host(engine, "scale", scale), Route())
            pipeline.add(await host(engine, "window-stats", stats), Route(after="scale"))
            async with pipeline:
                for seq in seqs:
                    await pipeline.on_reading(reading("pump-1", seq, 20.0 + seq))
                await pipeline.drain()
        return sink

    async def crash_with_unprocessed(seqs: range) -> None:
        with Journal.open(path) as journal:
            for consumer in ("scale", RAW):
                journal.attach(consumer)
            for seq in seqs:
                await journal.append(reading("pump-1", seq, 20.0 + seq))

    first = asyncio.run(run(range(3)))
    asyncio.run(crash_with_unprocessed(range(3, 7)))
    second = asyncio.run(run(range(7, 10)))
    assert [m["seq"] for m in first.on(f"{ROOT}/scaled")] == [0, 1, 2]
    for topic in ("scaled", "stats", "devices/pump-1"):
        assert [m["seq"] for m in second.on(f"{ROOT}/{topic}")] == list(range(3, 10)), topic
    assert second.on(f"{ROOT}/scaled")[0]["values"]["temperature"]["value"] == pytest.approx(
        (20 + 3) * 9 / 5 + 32
    )


def test_a_module_removed_for_good_holds_nothing_back(engine: Engine, journal: Journal) -> None:
    async def scenario() -> tuple[int, int]:
        pipeline = Pipeline(ListSink(), journal, ROOT)
        pipeline.add(await host(engine, "echo", {"fault": "none"}, module="faulty"), Route())
        async with pipeline:
            for seq in range(3):
                await pipeline.on_reading(reading("pump-1", seq, 1.0))
            await pipeline.drain()
            await pipeline.remove("echo")
            await pipeline.on_reading(reading("pump-1", 3, 1.0))
        return journal.status().depth, journal.attach("echo")

    depth, cursor = asyncio.run(scenario())
    assert depth == 0
    assert cursor == journal.head  # forgotten: back later, it starts with new readings


def test_a_module_of_one_device_does_not_hold_back_the_others_readings(
    engine: Engine, journal: Journal
) -> None:
    async def scenario() -> int:
        pipeline = Pipeline(ListSink(), journal, ROOT)
        echo = await host(engine, "echo", {"fault": "none"}, module="faulty")
        pipeline.add(echo, Route(devices=frozenset({"pump-1"})))
        async with pipeline:
            await pipeline.on_reading(reading("pump-1", 0, 1.0))
            for seq in range(3):
                await pipeline.on_reading(reading("pump-2", seq, 1.0))
            await pipeline.drain()
            await asyncio.sleep(0)  # the group commit that prunes
            return journal.status().depth

    assert asyncio.run(scenario()) == 0


def test_after_a_crash_only_other_devices_readings_left_do_not_hold_the_journal(
    engine: Engine, tmp_path: Path
) -> None:
    """A module of pump-1 whose cursor is behind pump-2's readings at the restart has
    nothing to replay, and must still pass them (CI's chaos test once never drained)."""
    path = tmp_path / "journal.sqlite"

    async def crash_with_unprocessed() -> None:
        with Journal.open(path) as journal:
            journal.attach("echo")
            for seq in range(3):
                await journal.append(reading("pump-2", seq, 1.0))

    async def restart() -> int:
        with Journal.open(path) as journal:
            pipeline = Pipeline(ListSink(), journal, ROOT)
            echo = await host(engine, "echo", {"fault": "none"}, module="faulty")
            pipeline.add(echo, Route(devices=frozenset({"pump-1"})))
            async with pipeline:
                with contextlib.suppress(TimeoutError):
                    await until(lambda: journal.status().depth == 0, 5)
                return journal.status().depth

    asyncio.run(crash_with_unprocessed())
    assert asyncio.run(restart()) == 0


class _Nesting:
    """A module whose every output nests 60,000 arrays deep (under the emit limit)."""

    def on_reading(self, reading: Reading) -> list[Emitted]:
        return [Emitted("nested", b"[" * 60_000)]

    def close(self) -> None:
        pass


def test_a_module_output_nested_too_deep_for_json_is_not_fed_on(
    engine: Engine, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """Python's json would raise RecursionError; the follower is simply not fed."""

    topics: list[str] = []

    class Sink:
        async def put(self, topic: str, payload: bytes, *, qos: int) -> None:
            topics.append(topic)

    async def scenario() -> None:
        pipeline = Pipeline(Sink(), journal, ROOT)
        nesting = await ModuleHost.start("nesting", _Nesting, version="1")  # type: ignore[arg-type]
        pipeline.add(nesting, Route())
        pipeline.add(await host(engine, "scale", {"topic": "scaled"}), Route(after="nesting"))
        async with pipeline:
            await pipeline.on_reading(reading("pump-1", 0, 1.0))
            await pipeline.drain()

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    assert topics == [f"{ROOT}/nested"]  # published as it is, fed to nobody
    assert "is not a reading document (nested 60000 levels deep" in caplog.text
    assert "ERROR" not in {r.levelname for r in caplog.records}
