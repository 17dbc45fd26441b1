"""A consumer's place in the reading journal, moved only past work that is finished.

A device reading taken by a module is done once the module processed it and every
module after it (`after`) processed what it derived from it, their messages safely in
the outbox. Readings finish in order per consumer almost always; when a later one
finishes first, the cursor waits for the earlier one, so a crash replays it rather
than skipping it.
"""

from __future__ import annotations

from collections import deque

from agent.journal import Journal


class Work:
    """One journal entry's work under one consumer: itself and what is derived from it."""

    __slots__ = ("_cursor", "entry", "pending")

    def __init__(self, cursor: Cursor, entry: int) -> None:
        self._cursor = cursor
        self.entry = entry
        self.pending = 1

    def fork(self) -> Work:
        """One more piece of work (a follower's reading) before this entry is done."""
        self.pending += 1
        return self

    def finish(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self._cursor.settle()


class Cursor:
    def __init__(self, journal: Journal, consumer: str) -> None:
        self._journal = journal
        self.consumer = consumer
        self.start = journal.attach(consumer)
        """Entries after this one are still to be taken (a replay, after a crash)."""
        self._open: deque[Work] = deque()

    def open(self, entry: int) -> Work:
        work = Work(self, entry)
        self._open.append(work)
        return work

    def skip(self, entry: int) -> None:
        """An entry this consumer does not take (another device's): passed as soon as
        the ones before it are, so it does not hold the journal back."""
        self.open(entry).finish()

    def settle(self) -> None:
        """Move past the finished entries at the front; an open one stops the move."""
        last = None
        while self._open and self._open[0].pending == 0:
            last = self._open.popleft().entry
        if last is not None:
            self._journal.advance(self.consumer, last)

    def close(self, *, forget: bool = False) -> None:
        self._journal.detach(self.consumer, forget=forget)
