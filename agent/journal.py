"""The reading journal: every polled reading on disk before any module sees it.

A reading is durable once `append` returns, which is after its group commit (every
append and cursor move of one event-loop iteration share one transaction, like the
outbox's). Each consumer (a module fed by devices, or the raw-readings publisher) has
a durable cursor: the id of the last entry whose outputs are safely in the outbox.
After a crash every consumer resumes after its cursor, so each reading is processed
and published at least once, in journal order, which is poll order per device.

Entries every attached consumer has passed are deleted at the next commit; a consumer
that is not attached (its module failed to start, or was removed) does not hold the
journal back. Bounds: `max_readings` and `max_bytes`; past them the oldest entries are
dropped first, counted in the file and logged, as the outbox does.

Sequence numbers: a device's readings are numbered without reset across restarts
(`next_seqs`), so (device, seq) names a reading for good and a subscriber can drop the
duplicates a crash may cause.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from agent._sqlite import open_exclusive
from agent.errors import JournalError
from agent.reading import Reading
from agent.status import JournalStatus

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_SET_CURSOR = (
    "INSERT INTO cursors (consumer, last_id) VALUES (?, ?)"
    " ON CONFLICT (consumer) DO UPDATE SET last_id = excluded.last_id"
)


@dataclass(frozen=True, slots=True)
class JournalLimits:
    max_readings: int = 100_000
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_readings < 1 or self.max_bytes < 1:
            raise ValueError("journal max_readings and max_bytes must be at least 1")


class Journal:
    """One SQLite journal file, held exclusively by this process while open."""

    def __init__(self, db: sqlite3.Connection, path: Path, limits: JournalLimits) -> None:
        self._db: sqlite3.Connection | None = db
        self.path = path
        self._limits = limits
        self._pending: list[tuple[str, bytes]] = []
        self._seqs: dict[str, int] = {}
        self._moves: dict[str, int] = {}
        self._batch: asyncio.Future[int] | None = None
        self._flush_scheduled = False
        self._attached: dict[str, int] = {}
        """Consumers that hold the journal back, by their cursor."""
        self._head = 0
        self._deleted_up_to = 0
        """Every entry up to this id is gone: nothing to look for below it."""
        self._depth = self._bytes = self._dropped = 0
        self._recount(db)

    @classmethod
    def open(
        cls,
        path: Path,
        limits: JournalLimits | None = None,
        *,
        synchronous: Literal["normal", "full"] = "normal",
    ) -> Journal:
        """Open or create the journal at `path`; a second opener of the file is refused."""
        db = open_exclusive(
            path, _SCHEMA, synchronous=synchronous, what="journal", error=JournalError
        )
        return cls(db, path, limits or JournalLimits())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit what is pending and release the file; idempotent."""
        if self._db is None:
            return
        if self._pending or self._moves:
            self._flush()
        self._db.close()
        self._db = None

    def next_seqs(self) -> dict[str, int]:
        """Each device's next sequence number: one past the last it journaled."""
        rows = self._open_db().execute("SELECT device, next_seq FROM devices")
        return {device: int(seq) for device, seq in rows}

    async def append(self, reading: Reading, line: bytes | None = None) -> int:
        """Journal one reading; returns its id once it is on disk. `line` is the
        reading's `to_json_line()` where the caller has it already."""
        self._open_db()
        self._pending.append((reading.device, line or reading.to_json_line()))
        self._seqs[reading.device] = max(self._seqs.get(reading.device, 0), reading.seq + 1)
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        batch = self._batch
        index = len(self._pending)
        self._schedule_flush()
        # Shielded: one cancelled producer must not fail the batch for the others.
        first = await asyncio.shield(batch)
        return first + index - 1

    @property
    def head(self) -> int:
        """The id of the newest committed entry (0 for none yet)."""
        return self._head

    def attach(self, consumer: str) -> int:
        """Hold the journal for `consumer` from its cursor on; returns the cursor.

        A consumer new to the journal starts at its head: a module installed today
        takes today's readings, not the backlog of others.
        """
        row = (
            self._open_db()
            .execute("SELECT last_id FROM cursors WHERE consumer = ?", (consumer,))
            .fetchone()
        )
        cursor = self._head if row is None else int(row[0])
        if row is None:
            self._set_cursor(consumer, cursor)
        self._attached[consumer] = cursor
        return cursor

    def detach(self, consumer: str, *, forget: bool = False) -> None:
        """Stop holding the journal for `consumer`; `forget` also drops its cursor."""
        self._attached.pop(consumer, None)
        if forget:
            self._moves.pop(consumer, None)
            self._set_cursor(consumer, None)

    def advance(self, consumer: str, last_id: int) -> None:
        """`consumer` is done with every entry up to `last_id` (committed with the next
        group: a crash before then replays those entries, at least once)."""
        self._open_db()
        self._moves[consumer] = last_id
        if consumer in self._attached:
            self._attached[consumer] = last_id
        self._schedule_flush()

    def read(
        self, after_id: int, limit: int, devices: frozenset[str] = frozenset()
    ) -> list[tuple[int, Reading]]:
        """Up to `limit` entries after `after_id`, oldest first; only `devices`' if given."""
        db = self._open_db()
        if devices:
            marks = ",".join("?" * len(devices))
            rows = db.execute(
                f"SELECT id, body FROM readings WHERE id > ? AND device IN ({marks})"
                " ORDER BY id LIMIT ?",
                (after_id, *sorted(devices), limit),
            ).fetchall()
        else:
            rows = db.execute(
                "SELECT id, body FROM readings WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return list(_decode(rows))

    def status(self) -> JournalStatus:
        """Dropped counts since the file began, as the outbox's do."""
        return JournalStatus(depth=self._depth, bytes=self._bytes, dropped=self._dropped)

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"journal {self.path} is closed")
        return self._db

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Commit appends and cursor moves, prune and enforce the bounds, in one go."""
        self._flush_scheduled = False
        if self._db is None:
            return
        rows, self._pending = self._pending, []
        seqs, self._seqs = self._seqs, {}
        moves, self._moves = self._moves, {}
        batch, self._batch = self._batch, None
        db = self._db
        try:
            db.execute("BEGIN")
            first = self._insert(db, rows)
            db.executemany(
                "INSERT INTO devices (device, next_seq) VALUES (?, ?) ON CONFLICT (device)"
                " DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)",
                seqs.items(),
            )
            db.executemany(_SET_CURSOR, moves.items())
            dropped = self._prune(db)
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._recount(db)
            failure = JournalError(f"journal {self.path}: write failed: {err}")
            if batch is not None:
                batch.set_exception(failure)
            log.exception("%s", failure)
            return
        if batch is not None:
            batch.set_result(first)
        if dropped:
            log.warning(
                "journal %s full: dropped the %d oldest readings before every module had them",
                self.path,
                dropped,
            )

    def _set_cursor(self, consumer: str, last_id: int | None) -> None:
        """Write one cursor now (or delete it): rare, so outside the group commit."""
        db = self._open_db()
        try:
            with db:
                if last_id is None:
                    db.execute("DELETE FROM cursors WHERE consumer = ?", (consumer,))
                else:
                    db.execute(_SET_CURSOR, (consumer, last_id))
        except sqlite3.Error as err:
            raise JournalError(f"journal {self.path}: write failed: {err}") from err

    def _insert(self, db: sqlite3.Connection, rows: list[tuple[str, bytes]]) -> int:
        """Insert in order; returns the first new id. One writer holds the file and
        AUTOINCREMENT never reuses an id, so the new ids run on from the head."""
        if rows:
            db.executemany("INSERT INTO readings (device, body) VALUES (?, ?)", rows)
            self._head += len(rows)
            self._depth += len(rows)
            self._bytes += sum(len(body) for _, body in rows)
        return self._head - len(rows) + 1

    def _prune(self, db: sqlite3.Connection) -> int:
        """Delete what every attached consumer passed, then drop the oldest past the
        bounds; returns how many were dropped before every consumer had them."""
        floor = min(self._attached.values(), default=self._head)
        self._delete_up_to(db, floor)
        limits = self._limits
        dropped = 0
        last = None
        while self._depth > limits.max_readings or self._bytes > limits.max_bytes:
            rows = db.execute(
                "SELECT id, length(body) FROM readings WHERE id > ? ORDER BY id LIMIT 512",
                (last or 0,),
            ).fetchall()
            for entry, size in rows:
                if self._depth <= limits.max_readings and self._bytes <= limits.max_bytes:
                    break
                dropped += 1
                self._depth -= 1
                self._bytes -= size
                last = entry
            if len(rows) < 512:
                break
        if last is None:
            return 0
        db.execute("DELETE FROM readings WHERE id <= ?", (last,))
        self._deleted_up_to = max(self._deleted_up_to, last)
        db.execute(
            "INSERT INTO counters (name, value) VALUES ('dropped', ?) ON CONFLICT (name)"
            " DO UPDATE SET value = value + excluded.value",
            (dropped,),
        )
        self._dropped += dropped
        return dropped

    def _delete_up_to(self, db: sqlite3.Connection, last_id: int) -> None:
        if last_id <= self._deleted_up_to:
            return
        self._deleted_up_to = last_id
        count, size = db.execute(
            "SELECT count(*), total(length(body)) FROM readings WHERE id <= ?", (last_id,)
        ).fetchone()
        if count:
            db.execute("DELETE FROM readings WHERE id <= ?", (last_id,))
            self._depth -= int(count)
            self._bytes -= int(size)

    def _recount(self, db: sqlite3.Connection) -> None:
        depth, size, oldest, newest = db.execute(
            "SELECT count(*), total(length(body)), min(id), max(id) FROM readings"
        ).fetchone()
        self._depth, self._bytes = int(depth), int(size)
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        self._head = int(seq[0]) if seq else int(newest or 0)
        self._deleted_up_to = self._head if oldest is None else int(oldest) - 1
        row = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        self._dropped = int(row[0]) if row else 0


def _decode(rows: Iterable[tuple[int, bytes]]) -> Iterable[tuple[int, Reading]]:
    for entry, body in rows:
        yield entry, Reading.from_json(json.loads(body))
