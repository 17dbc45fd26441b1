"""Register maps: what a device holds, where, and how to read it, as validated data.

A map is a TOML file (`config/devices/*.toml`) of register groups, each polled at its
own interval. This module knows the shape of a map and its rules; it does no I/O on the
bus and no decoding (that is the codec's job).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from agent.validation import StrictModel, check_unique, read_toml, validated

Table = Literal["coil", "discrete_input", "input", "holding"]
ValueType = Literal[
    "bool",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
"""The types a point holds, over any protocol."""
DataType = Literal[ValueType, "bit"]
"""A register's type: a value type, or one bit of a register (Modbus only)."""
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]

BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete_input"})
NUMERIC_TYPES: frozenset[str] = frozenset(
    {"int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}
)
WIDTHS: dict[str, int] = {
    "bool": 1,
    "bit": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
"""Registers (or, for `bool`, bits) one value occupies; strings give their `length`."""

_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"


class RegisterSpec(StrictModel):
    name: str = Field(pattern=_NAME)
    """The value's name in readings and in `write`."""
    table: Table
    address: int = Field(ge=0, le=65535)
    """Zero-based protocol address (a manual's 40001 is holding 0)."""
    type: DataType
    order: ByteOrder = "ABCD"
    """Byte order of the value, A the most significant byte: ABCD big-endian, DCBA
    little-endian, BADC bytes swapped in each register, CDAB registers swapped."""
    bit: int | None = Field(None, ge=0, le=15)
    """For `type = "bit"`: which bit of the register, 0 the least significant."""
    length: int | None = Field(None, ge=1, le=125)
    """For `type = "string"`: registers the string spans (two characters each)."""
    scale: float = Field(1.0, allow_inf_nan=False)
    offset: float = Field(0.0, allow_inf_nan=False)
    """Engineering value = raw * scale + offset (numeric types only); finite, like
    `min` and `max`: TOML has nan and inf, and neither makes a conversion or a range."""
    unit: str | None = None
    writable: bool = False
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    """Accepted range of a written engineering value."""
    on_change: bool = False
    """Send the value only when it changed (report by exception), not with every poll."""
    deadband: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Numbers: a change up to this much (engineering units) is no change."""
    deadband_percent: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)
    """Numbers: a change up to this percent of the last value sent is no change."""
    max_interval_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    """With report by exception: send the value at least this often, changed or not."""

    @property
    def by_exception(self) -> bool:
        """Sent when it changes, not with every poll."""
        return self.on_change or self.deadband is not None or self.deadband_percent is not None

    @property
    def size(self) -> int:
        """Registers (bits in bit tables) the value spans."""
        return self.length if self.type == "string" and self.length else WIDTHS[self.type]

    @property
    def end(self) -> int:
        """One past the last address the value occupies."""
        return self.address + self.size

    @model_validator(mode="after")
    def _consistent(self) -> RegisterSpec:
        bits = self.table in BIT_TABLES
        if bits != (self.type == "bool"):
            raise ValueError(
                "coils and discrete inputs hold type 'bool', and 'bool' lives only there "
                f"(got table {self.table!r} with type {self.type!r})"
            )
        if (self.type == "bit") != (self.bit is not None):
            raise ValueError("type 'bit' needs 'bit' (0-15), and 'bit' needs type 'bit'")
        if (self.type == "string") != (self.length is not None):
            raise ValueError("type 'string' needs 'length' (registers), and only strings take it")
        if self.type == "string" and self.order not in ("ABCD", "BADC"):
            raise ValueError("strings take order 'ABCD' or 'BADC' (bytes within a register)")
        if self.type not in NUMERIC_TYPES and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"scale and offset apply to numeric types, not {self.type!r}")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.end > 65536:
            raise ValueError(f"the value runs past address 65535 (ends at {self.end - 1})")
        if self.writable and self.table not in ("coil", "holding"):
            raise ValueError(f"only coils and holding registers are writable, not {self.table!r}")
        if self.writable and self.type == "bit":
            raise ValueError("one bit of a register cannot be written (it needs read-modify-write)")
        if (self.min is not None or self.max is not None) and (
            not self.writable or self.type not in NUMERIC_TYPES
        ):
            raise ValueError("min and max apply to writable numeric registers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    @model_validator(mode="after")
    def _reporting(self) -> RegisterSpec:
        if (self.deadband is not None or self.deadband_percent is not None) and (
            self.type not in NUMERIC_TYPES
        ):
            raise ValueError(f"a deadband applies to numeric types, not {self.type!r}")
        if self.deadband is not None and self.deadband_percent is not None:
            raise ValueError("give deadband or deadband_percent, not both")
        if self.max_interval_s is not None and not self.by_exception:
            raise ValueError(
                "max_interval_s is the heartbeat of a value sent by exception: "
                "it needs on_change, deadband or deadband_percent"
            )
        return self


class RegisterGroup(StrictModel):
    name: str = Field(pattern=_NAME)
    interval_s: float = Field(ge=0.0001, le=86400)
    """Poll period; ticks that pass while a poll runs are dropped, all but the latest."""
    registers: tuple[RegisterSpec, ...] = Field(min_length=1)


class RegisterMap(StrictModel):
    description: str = ""
    groups: tuple[RegisterGroup, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> RegisterMap:
        check_unique((g.name for g in self.groups), "group name")
        check_unique((r.name for g in self.groups for r in g.registers), "register name")
        return self

    def register(self, name: str) -> RegisterSpec | None:
        for group in self.groups:
            for reg in group.registers:
                if reg.name == name:
                    return reg
        return None


def load_register_map(path: Path) -> RegisterMap:
    """Read and validate a map file; errors name the file, the key and what was expected."""
    return validated(RegisterMap, read_toml(path, "register map"), path)
