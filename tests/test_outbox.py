"""The durable outbox on its own: order, persistence, exclusive use, bounds and drops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.errors import OutboxError
from agent.outbox import Outbox, OutboxLimits, Outgoing

pytestmark = pytest.mark.arm64


def put_seq(outbox: Outbox, seqs: range, **kw: object) -> None:
    async def go() -> None:
        # Concurrent producers: one group commit, still in call order.
        await asyncio.gather(*(outbox.put("t/seq", str(i), **kw) for i in seqs))  # type: ignore[arg-type]

    asyncio.run(go())


def payloads(outbox: Outbox) -> list[int]:
    return [int(m.payload) for m in outbox.read(0, 1_000_000)]


def test_messages_come_back_in_order_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox.open(path) as outbox:
        put_seq(outbox, range(500))
    with Outbox.open(path) as outbox:
        assert payloads(outbox) == list(range(500))
        first = outbox.read(0, 3)
        assert [m.qos for m in first] == [1, 1, 1]

        async def ack_three() -> None:
            for m in first:
                outbox.ack(m)
            await asyncio.sleep(0)

        asyncio.run(ack_three())
    with Outbox.open(path) as outbox:
        assert payloads(outbox) == list(range(3, 500))
        assert outbox.stats().depth == 497


def test_a_second_opener_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox.open(path), pytest.raises(OutboxError, match="in use by another process"):
        Outbox.open(path)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(OutboxError, match="not a usable SQLite database"):
        Outbox.open(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "a/+/b"}, "must not contain '\\+', '#'"),
        ({"topic": ""}, "must be 1 to 65535 bytes"),
        ({"qos": 2}, "qos must be 0 or 1"),
    ],
)
def test_bad_messages_are_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"topic": "a/b", "payload": b"x", **kwargs}
    with pytest.raises(ValueError, match=message):
        Outgoing(**fields)  # type: ignore[arg-type]


def test_count_limit_drops_oldest_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox.open(path, OutboxLimits(max_messages=100)) as outbox:
        put_seq(outbox, range(250))
        assert payloads(outbox) == list(range(150, 250))
        assert outbox.stats().dropped["messages"] == 150
    with Outbox.open(path, OutboxLimits(max_messages=100)) as outbox:
        stats = outbox.stats()
        assert (stats.depth, stats.dropped_total) == (100, 150)


def test_byte_limit_drops_oldest(tmp_path: Path) -> None:
    with Outbox.open(tmp_path / "o.sqlite", OutboxLimits(max_bytes=10_000)) as outbox:
        asyncio.run(outbox.put_many([Outgoing("t/b", bytes([i]) * 997) for i in range(30)]))
        kept = [m.payload[0] for m in outbox.read(0, 100)]
        stats = outbox.stats()
        assert kept == list(range(20, 30))  # ten messages of 1,000 bytes fit in 10,000
        assert stats.bytes == 10 * 1000
        assert stats.dropped["bytes"] == 20


def test_age_limit_drops_what_is_older(tmp_path: Path) -> None:
    now = [1000.0]
    limits = OutboxLimits(max_age_s=60)
    with Outbox.open(tmp_path / "o.sqlite", limits, clock=lambda: now[0]) as outbox:
        put_seq(outbox, range(10))
        now[0] += 30
        put_seq(outbox, range(10, 15))
        assert outbox.stats().oldest_age_s == 30
        now[0] += 45  # the first ten are 75 s old now, the last five 45 s
        assert payloads(outbox) == list(range(10, 15))  # the publisher never sees stale ones
        stats = outbox.stats()
        assert (stats.dropped["age"], stats.oldest_age_s) == (10, 45)


def test_a_closed_outbox_refuses_use(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path / "o.sqlite")
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.read(0, 1)


def test_an_ack_for_a_message_dropped_meanwhile_does_not_miscount(tmp_path: Path) -> None:
    with Outbox.open(tmp_path / "o.sqlite", OutboxLimits(max_messages=5)) as outbox:
        put_seq(outbox, range(5))
        in_flight = outbox.read(0, 2)  # being published while new data pushes them out
        put_seq(outbox, range(5, 8))

        async def ack() -> None:
            for m in in_flight:
                outbox.ack(m)
            await asyncio.sleep(0)

        asyncio.run(ack())
        stats = outbox.stats()
        assert payloads(outbox) == [3, 4, 5, 6, 7]
        assert (stats.depth, stats.bytes) == (5, 5 * len("t/seq0"))
