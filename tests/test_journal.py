"""The reading journal: durable before any module sees a reading, cursors, pruning, bounds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.errors import JournalError
from agent.journal import Journal, JournalLimits
from agent.reading import Reading, Value
from agent.runtime._cursor import Cursor


def reading(device: str, seq: int) -> Reading:
    return Reading(device, 1764118800.0 + seq, seq, {"t": Value(float(seq), "degC")})


async def append_all(journal: Journal, readings: list[Reading]) -> list[int]:
    return list(await asyncio.gather(*(journal.append(r) for r in readings)))


def test_appends_get_consecutive_ids_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal.open(path) as journal:
        journal_ids = asyncio.run(append_all(journal, [reading("a", i) for i in range(5)]))
        assert journal_ids == [1, 2, 3, 4, 5]
        cursor = journal.attach("scale")  # new: starts at the head, pins from there
        assert cursor == 5
    with Journal.open(path) as journal:
        assert journal.head == 5
        assert journal.attach("late") == 5
        assert journal.read(0, 10) == []  # nothing anyone attached still needs


def test_a_consumer_resumes_after_its_cursor_and_holds_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"

    async def first_run(journal: Journal) -> None:
        journal.attach("scale")
        await append_all(journal, [reading("a", i) for i in range(6)])
        journal.advance("scale", 2)
        await journal.append(reading("b", 0))  # commits the move with this group

    with Journal.open(path) as journal:
        asyncio.run(first_run(journal))
    with Journal.open(path) as journal:
        assert journal.attach("scale") == 2
        got = journal.read(2, 100)
        assert [(e, r.device, r.seq) for e, r in got] == [
            (3, "a", 2),
            (4, "a", 3),
            (5, "a", 4),
            (6, "a", 5),
            (7, "b", 0),
        ]
        assert [r.seq for _, r in journal.read(2, 100, frozenset({"b"}))] == [0]
        assert journal.read(5, 2)[0][1] == reading("a", 5)
        assert journal.status().depth == 5


def test_entries_every_attached_consumer_passed_are_deleted(tmp_path: Path) -> None:
    async def scenario(journal: Journal) -> tuple[int, int]:
        journal.attach("fast")
        journal.attach("slow")
        await append_all(journal, [reading("a", i) for i in range(4)])
        journal.advance("fast", 4)
        journal.advance("slow", 1)
        await journal.append(reading("a", 4))
        kept = journal.status().depth
        journal.detach("slow")  # not running: it holds nothing back
        await journal.append(reading("a", 5))
        return kept, journal.status().depth

    with Journal.open(tmp_path / "journal.sqlite") as journal:
        kept, after_detach = asyncio.run(scenario(journal))
    assert kept == 4  # entries 2..5 wait for `slow`
    assert after_detach == 2  # entries 5 and 6 wait for `fast`


def test_a_forgotten_consumer_starts_again_at_the_head(tmp_path: Path) -> None:
    async def scenario(journal: Journal) -> int:
        journal.attach("gone")
        await append_all(journal, [reading("a", i) for i in range(3)])
        journal.detach("gone", forget=True)
        await journal.append(reading("a", 3))
        return journal.attach("gone")

    with Journal.open(tmp_path / "journal.sqlite") as journal:
        assert asyncio.run(scenario(journal)) == 4


def test_sequence_numbers_go_on_after_every_entry_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal.open(path) as journal:
        asyncio.run(append_all(journal, [reading("a", 7), reading("b", 2), reading("a", 8)]))
        assert journal.status().depth == 0  # nobody attached: nothing kept
    with Journal.open(path) as journal:
        assert journal.next_seqs() == {"a": 9, "b": 3}


def test_past_its_bounds_the_oldest_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"

    async def scenario(journal: Journal) -> None:
        journal.attach("stuck")
        await append_all(journal, [reading("a", i) for i in range(10)])

    with Journal.open(path, JournalLimits(max_readings=4)) as journal:
        asyncio.run(scenario(journal))
        assert journal.status().depth == 4
        assert journal.status().dropped == 6
    with Journal.open(path, JournalLimits(max_readings=4)) as journal:
        assert journal.status().dropped == 6
        assert [r.seq for _, r in journal.read(journal.attach("stuck"), 100)] == [6, 7, 8, 9]
    size = len(reading("a", 0).to_json_line())
    with Journal.open(tmp_path / "bytes.sqlite", JournalLimits(max_bytes=3 * size)) as journal:
        asyncio.run(scenario(journal))
        assert journal.status().depth == 3


def test_one_file_one_agent(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal.open(path), pytest.raises(JournalError, match="in use by another process"):
        Journal.open(path)


def test_a_file_that_is_not_a_journal_is_named(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"not a database, but long enough to look like a header" * 20)
    with pytest.raises(JournalError, match="not a usable SQLite database"):
        Journal.open(path)


@pytest.mark.parametrize("limits", [(0, 1), (1, 0)])
def test_bounds_below_one_are_refused(limits: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        JournalLimits(*limits)


def test_a_cursor_moves_only_past_work_finished_with_its_followers(tmp_path: Path) -> None:
    """Entry 1 forks work to a follower; entry 2 finishes first. The cursor waits for
    the follower, so a crash before it finished replays entry 1 instead of losing it."""

    async def scenario(journal: Journal) -> list[int]:
        cursor = Cursor(journal, "scale")
        await append_all(journal, [reading("a", i) for i in range(3)])
        one, two = cursor.open(1), cursor.open(2)
        follower = one.fork()
        seen = []
        for step in (one.finish, two.finish, follower.finish):
            step()
            await asyncio.sleep(0)  # the group commit
            seen.append(journal.attach("scale"))
        return seen

    with Journal.open(tmp_path / "journal.sqlite") as journal:
        assert asyncio.run(scenario(journal)) == [0, 0, 2]
