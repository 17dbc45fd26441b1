"""Request planning: the fewest reads that cover a group of registers.

Neighbouring values of one table are merged into one read when the hole between them is
at most `max_gap` addresses and the read stays within the protocol's limit (125
registers, 2000 bits). Devices that only answer single-register reads get one read per
address instead. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.config import BIT_TABLES, RegisterSpec, Table

MAX_REGISTERS = 125
MAX_BITS = 2000


@dataclass(frozen=True)
class ReadBlock:
    table: Table
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


def plan_reads(
    registers: Iterable[RegisterSpec], *, max_gap: int, single: bool = False
) -> tuple[ReadBlock, ...]:
    """Reads covering every address of `registers`, ordered by table then address."""
    by_table: dict[Table, list[tuple[int, int]]] = {}
    for reg in registers:
        by_table.setdefault(reg.table, []).append((reg.address, reg.end))
    blocks: list[ReadBlock] = []
    for table in sorted(by_table):
        spans = sorted(by_table[table])
        if single:
            addresses = sorted({a for start, end in spans for a in range(start, end)})
            blocks.extend(ReadBlock(table, a, 1) for a in addresses)
            continue
        limit = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
        start, end = spans[0]
        for s, e in spans[1:]:
            if s - end <= max_gap and max(end, e) - start <= limit:
                end = max(end, e)
            else:
                blocks.append(ReadBlock(table, start, end - start))
                start, end = s, e
        blocks.append(ReadBlock(table, start, end - start))
    return tuple(blocks)
