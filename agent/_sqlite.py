"""Opening the agent's own SQLite files: WAL, held by one process, schema applied.

The outbox and the reading journal are each written by one agent at a time: a second
agent draining the same outbox would publish twice, and one replaying the same journal
would feed modules twice. So each file is opened with an exclusive lock that lasts as
long as the connection, and every way that can fail becomes the caller's typed error.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from agent.errors import AgentError


def open_exclusive(
    path: Path,
    schema: str,
    *,
    synchronous: Literal["normal", "full"],
    what: str,
    error: type[AgentError],
) -> sqlite3.Connection:
    """The database at `path` (created if need be) with `schema` applied; `what` names
    it in errors (`outbox`, `journal`), raised as `error`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=0)
    except (OSError, sqlite3.Error) as err:
        raise error(f"{what} {path}: cannot open: {err}") from err
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute("PRAGMA journal_size_limit=67108864")
        db.execute("BEGIN IMMEDIATE")
        db.executescript(schema)  # commits, and keeps the exclusive lock
    except sqlite3.OperationalError as err:
        db.close()
        if "locked" in str(err):
            raise error(f"{what} {path} is in use by another process") from err
        raise error(f"{what} {path}: {err}") from err
    except sqlite3.DatabaseError as err:
        db.close()
        raise error(f"{what} {path} is not a usable SQLite database: {err}") from err
    return db
