"""Desired and actual module state in SQLite, so a restarted agent resumes where it was.

`modules` holds, per module name, the active (current) and the previous digest;
`desired` the deploy requests not yet done (a node offline keeps them until it can
pull); `watches` the rollout guard's counts for versions still being watched. Every
change is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agent.supply._rollout import Watch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS modules (
    name TEXT PRIMARY KEY, current TEXT NOT NULL, previous TEXT,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS desired (
    ref TEXT PRIMARY KEY, allow_downgrade INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS watches (
    name TEXT PRIMARY KEY, digest TEXT NOT NULL,
    invocations INTEGER NOT NULL, faults TEXT NOT NULL);
"""


@dataclass(frozen=True)
class ModuleState:
    name: str
    current: str
    previous: str | None
    status: str
    """`active`, or `rolled-back` after the guard or an operator reverted a version."""
    reason: str


@dataclass(frozen=True)
class DesiredState:
    ref: str
    allow_downgrade: bool
    status: str
    """`pending` until deployed, `done`; `failed` for good, with the reason; `cancelled`:
    replaced before its registry answered."""
    reason: str


class StateDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def modules(self) -> list[ModuleState]:
        rows = self._db.execute(
            "SELECT name, current, previous, status, reason FROM modules ORDER BY name"
        )
        return [ModuleState(*row) for row in rows]

    def module(self, name: str) -> ModuleState | None:
        row = self._db.execute(
            "SELECT name, current, previous, status, reason FROM modules WHERE name = ?", (name,)
        ).fetchone()
        return ModuleState(*row) if row else None

    def activate(
        self, name: str, digest: str, previous: str | None, status: str, reason: str
    ) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO modules VALUES (?, ?, ?, ?, ?, ?)",
                (name, digest, previous, status, reason, time.time()),
            )

    def remove(self, name: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM modules WHERE name = ?", (name,))

    def want(self, ref: str, allow_downgrade: bool) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO desired VALUES (?, ?, 'pending', '', ?)",
                (ref, int(allow_downgrade), time.time()),
            )

    def settle(self, ref: str, status: str, reason: str = "") -> None:
        with self._db:
            self._db.execute(
                "UPDATE desired SET status = ?, reason = ?, updated = ? WHERE ref = ?",
                (status, reason, time.time(), ref),
            )

    def cancel(self, ref: str, reason: str) -> None:
        """A pending request no longer wanted: `run` must not install it later."""
        with self._db:
            self._db.execute(
                "UPDATE desired SET status = 'cancelled', reason = ?, updated = ? "
                "WHERE ref = ? AND status = 'pending'",
                (reason, time.time(), ref),
            )

    def is_pending(self, ref: str) -> bool:
        row = self._db.execute("SELECT status FROM desired WHERE ref = ?", (ref,)).fetchone()
        return row is not None and row[0] == "pending"

    def desired(self, status: str | None = None) -> list[DesiredState]:
        rows = self._db.execute(
            "SELECT ref, allow_downgrade, status, reason FROM desired"
            + (" WHERE status = ?" if status else "")
            + " ORDER BY updated",
            (status,) if status else (),
        )
        return [DesiredState(r, bool(a), s, why) for r, a, s, why in rows]

    def save_watch(self, name: str, watch: Watch) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO watches VALUES (?, ?, ?, ?)",
                (name, watch.digest, watch.invocations, json.dumps(watch.faults)),
            )

    def drop_watch(self, name: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM watches WHERE name = ?", (name,))

    def watches(self) -> dict[str, Watch]:
        rows = self._db.execute("SELECT name, digest, invocations, faults FROM watches")
        return {
            name: Watch(digest, n, list(json.loads(faults))) for name, digest, n, faults in rows
        }
