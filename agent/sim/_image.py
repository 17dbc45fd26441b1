"""A simulated device's memory: four tables of words, plus the faults it can feign.

Pure data; the server serves it, the pump model writes into it. Bits are stored as 0/1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

TABLES = ("coil", "discrete_input", "holding", "input")

Fault = int | Literal["silent"] | None
"""None: answers normally; "silent": never answers (the client times out); an int: answers
every request with that Modbus exception code."""


@dataclass
class DeviceImage:
    size: int = 256
    """Addresses per table, 0 to size - 1 (a multiple of 16)."""
    tables: dict[str, list[int]] = field(default_factory=dict)
    fault: Fault = None
    before_read: Callable[[], None] | None = None
    """Called before each read is answered, e.g. to bring a model's values up to date."""
    after_write: Callable[[str, int, list[int]], None] | None = None
    """Called with (table, address, words) after a write request changed the image."""

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size % 16:
            raise ValueError(f"size must be a positive multiple of 16, got {self.size}")
        for table in TABLES:
            self.tables.setdefault(table, [0] * self.size)

    def set(self, table: str, address: int, words: list[int]) -> None:
        self.tables[table][address : address + len(words)] = words

    def get(self, table: str, address: int, count: int) -> list[int]:
        return self.tables[table][address : address + count]
