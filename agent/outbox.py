"""The durable outbox: outgoing MQTT messages on disk, in order, until the broker has them.

Owns one SQLite file in WAL mode. A message counts as accepted once `put` returns,
which is after its transaction committed. A publisher reads messages strictly in id
(insertion) order and deletes them with `ack` once the broker acknowledged them, so a
broker outage, a SIGKILL or a restart loses nothing that was accepted. This module knows
nothing about MQTT clients; `agent.mqtt` drives it.

Durability (`synchronous`): "normal" (the default) is WAL with synchronous=NORMAL: a
commit has reached the kernel when `put` returns, so it survives a crash or SIGKILL of
the agent; only a power loss or kernel crash can take the last few commits. "full"
fsyncs the WAL on every commit and survives power loss too, at one fsync per group
commit (slower, and wear on the SD cards and eMMC gateways run from). Process death is
the common failure on a gateway, so "normal" is the default.

Speed: every `put` and `ack` made in one event-loop iteration shares one transaction
(group commit), so concurrent producers pay one commit between them.

Bounds and drop policy: `max_messages`, `max_bytes` (topic plus payload) and `max_age_s`.
When one is exceeded, the oldest messages are dropped first: the newest readings matter
most to an operator, and dropping at the head keeps what remains one contiguous,
ordered stream. Drops are counted per reason in the file itself, so the count
survives restarts, and each dropping commit is logged at warning level.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

from agent._sqlite import open_exclusive
from agent.errors import OutboxError
from agent.topics import name_error

log = logging.getLogger(__name__)

Synchronous = Literal["normal", "full"]
DROP_REASONS = ("messages", "bytes", "age")
"""Why a message was dropped: the count limit, the byte limit or the age limit."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    content_type TEXT,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dropped (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""
_COLUMNS = "id, topic, payload, qos, retain, created, content_type, size"
_HEAD_SCAN = 512
"""Rows read per step when dropping from the head."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to put: what the producer decides."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    content_type: str | None = None
    """Sent as the MQTT 5 content-type property; ignored on MQTT 3.1.1."""

    def __post_init__(self) -> None:
        problem = name_error(self.topic)
        if problem is not None:
            raise ValueError(f"outbox topic {self.topic!r} {problem}")
        if self.qos not in (0, 1):
            raise ValueError(f"outbox qos must be 0 or 1, got {self.qos!r}")
        if not isinstance(self.payload, bytes):
            raise ValueError(f"outbox payload must be bytes, got {type(self.payload).__name__}")


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message, as the publisher reads it."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float
    content_type: str | None
    size: int
    """Bytes counted against `max_bytes`: topic plus payload."""


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    max_messages: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float | None = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ValueError("outbox max_messages and max_bytes must be at least 1")
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ValueError(f"outbox max_age_s must be positive, got {self.max_age_s}")


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_age_s: float | None
    dropped: Mapping[str, int] = field(default_factory=dict)
    """Messages dropped since the file was created, by reason (see `DROP_REASONS`)."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class Outbox:
    """One SQLite outbox file, held exclusively by this process while open."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        limits: OutboxLimits,
        clock: Callable[[], float],
    ) -> None:
        self._db: sqlite3.Connection | None = db
        self.path = path
        self._limits = limits
        self._clock = clock
        self._pending: list[tuple[str, bytes, int, int, float, str | None, int]] = []
        self._acks: dict[int, int] = {}
        self._dropped_up_to = 0
        """Drops take the head: every id up to this one is gone."""
        self._batch: asyncio.Future[None] | None = None
        self._flush_scheduled = False
        self._arrived: asyncio.Event | None = None
        self._next_age_check = 0.0
        self._depth = self._bytes = 0
        self._dropped: dict[str, int] = {}
        self._recount(db)

    @classmethod
    def open(
        cls,
        path: Path,
        limits: OutboxLimits | None = None,
        *,
        synchronous: Synchronous = "normal",
        clock: Callable[[], float] = time.time,
    ) -> Outbox:
        """Open or create the outbox at `path`; a second opener of the same file is refused."""
        if synchronous not in ("normal", "full"):
            raise ValueError(f"outbox synchronous must be 'normal' or 'full', got {synchronous!r}")
        db = open_exclusive(
            path, _SCHEMA, synchronous=synchronous, what="outbox", error=OutboxError
        )
        return cls(db, path, limits or OutboxLimits(), clock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit what is pending and release the file; idempotent."""
        if self._db is None:
            return
        if self._pending or self._acks:
            self._flush()
        self._db.close()
        self._db = None

    async def put(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
    ) -> None:
        """Store one message; when this returns, the message is on disk and accepted."""
        data = payload.encode() if isinstance(payload, str) else payload
        await self.put_many([Outgoing(topic, data, qos, retain, content_type)])

    async def put_many(self, messages: Iterable[Outgoing]) -> None:
        """Store messages in order, in one transaction with whatever else is pending."""
        self._open_db()
        now = self._clock()
        for m in messages:
            size = len(m.topic.encode()) + len(m.payload)
            self._pending.append(
                (m.topic, m.payload, m.qos, int(m.retain), now, m.content_type, size)
            )
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        batch = self._batch
        self._schedule_flush()
        # Shielded: one cancelled producer must not fail the batch for the others.
        await asyncio.shield(batch)

    def ack(self, message: Message) -> None:
        """Delete a message the broker acknowledged (committed with the next group)."""
        self._open_db()
        self._acks[message.id] = message.size
        self._schedule_flush()

    def read(self, after_id: int, limit: int) -> list[Message]:
        """Up to `limit` stored messages with ids above `after_id`, oldest first."""
        db = self._open_db()
        if self._age_check_due():
            self._flush()  # expires old messages before the publisher sees them
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [Message(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7]) for r in rows]

    async def next_batch(self, after_id: int, limit: int) -> list[Message]:
        """Like `read`, but waits until there is at least one message."""
        while True:
            batch = self.read(after_id, limit)
            if batch:
                return batch
            if self._arrived is None:
                self._arrived = asyncio.Event()
            self._arrived.clear()
            await self._arrived.wait()

    def stats(self) -> OutboxStats:
        db = self._open_db()
        head = db.execute("SELECT created FROM messages ORDER BY id LIMIT 1").fetchone()
        age = None if head is None else max(0.0, self._clock() - head[0])
        return OutboxStats(self._depth, self._bytes, age, dict(self._dropped))

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._db

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Commit pending puts and acks, then enforce the bounds, in one transaction."""
        self._flush_scheduled = False
        if self._db is None or not (self._pending or self._acks or self._age_check_due()):
            return
        rows, self._pending = self._pending, []
        acks, self._acks = self._acks, {}
        batch, self._batch = self._batch, None
        db = self._db
        floor = self._dropped_up_to
        try:
            db.execute("BEGIN")
            db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in acks])
            live = [size for i, size in acks.items() if i > floor]  # not dropped already
            self._depth -= len(live)
            self._bytes -= sum(live)
            db.executemany(
                "INSERT INTO messages (topic, payload, qos, retain, created, content_type, size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._depth += len(rows)
            self._bytes += sum(r[6] for r in rows)
            dropped = self._enforce_bounds(db)
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._dropped_up_to = floor
            self._recount(db)
            failure = OutboxError(f"outbox {self.path}: write failed: {err}")
            if batch is not None:
                batch.set_exception(failure)
            log.exception("%s", failure)
            return
        if batch is not None:
            batch.set_result(None)
        if dropped:
            log.warning(
                "outbox %s full or stale: dropped the %d oldest messages (%s)",
                self.path,
                sum(dropped.values()),
                ", ".join(f"{n} by {reason}" for reason, n in dropped.items() if n),
            )
        if rows and self._arrived is not None:
            self._arrived.set()

    def _age_check_due(self) -> bool:
        return self._limits.max_age_s is not None and self._clock() >= self._next_age_check

    def _enforce_bounds(self, db: sqlite3.Connection) -> dict[str, int]:
        """Drop from the head while a bound is exceeded; returns the drops by reason."""
        limits = self._limits
        now = self._clock()
        cutoff = None
        if limits.max_age_s is not None and now >= self._next_age_check:
            cutoff = now - limits.max_age_s
            self._next_age_check = now + min(1.0, limits.max_age_s / 10)
        if (
            cutoff is None
            and self._depth <= limits.max_messages
            and (self._bytes <= limits.max_bytes)
        ):
            return {}
        dropped = dict.fromkeys(DROP_REASONS, 0)
        last_id = None
        for message_id, size, created in self._head(db):
            if cutoff is not None and created < cutoff:
                reason = "age"
            elif self._depth > limits.max_messages:
                reason = "messages"
            elif self._bytes > limits.max_bytes:
                reason = "bytes"
            else:
                break
            dropped[reason] += 1
            self._depth -= 1
            self._bytes -= size
            last_id = message_id
        if last_id is None:
            return {}
        db.execute("DELETE FROM messages WHERE id <= ?", (last_id,))
        self._dropped_up_to = last_id
        for reason, count in dropped.items():
            if count:
                self._dropped[reason] += count
                db.execute(
                    "INSERT INTO dropped (reason, count) VALUES (?, ?)"
                    " ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
                    (reason, count),
                )
        return dropped

    @staticmethod
    def _head(db: sqlite3.Connection) -> Iterator[tuple[int, int, float]]:
        """(id, size, created) of every stored message, oldest first, read in steps."""
        after = 0
        while True:
            rows = db.execute(
                "SELECT id, size, created FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after, _HEAD_SCAN),
            ).fetchall()
            yield from rows
            if len(rows) < _HEAD_SCAN:
                return
            after = rows[-1][0]

    def _recount(self, db: sqlite3.Connection) -> None:
        depth, size = db.execute("SELECT count(*), total(size) FROM messages").fetchone()
        self._depth, self._bytes = int(depth), int(size)
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._dropped.update(db.execute("SELECT reason, count FROM dropped").fetchall())
