"""The reading: one poll of one device, as it travels from the poller to the modules.

Bulk numeric blocks (`Series`) stay packed little-endian bytes from the device to the
guest: turning a thousand samples into text and back costs more than the computation.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent._json import quoted

Quality = Literal["good", "uncertain", "bad"]
QUALITIES: frozenset[str] = frozenset({"good", "uncertain", "bad"})

SERIES_TYPES: dict[str, str] = {
    "f32": "f",
    "f64": "d",
    "i16": "h",
    "u16": "H",
    "i32": "i",
    "u32": "I",
}
"""Series element types and their `struct` codes (always little-endian)."""


@dataclass(frozen=True)
class Value:
    value: float | int | bool | str
    unit: str | None = None
    quality: Quality = "good"
    reason: str | None = None
    """Why the quality is not good (a bad value carries the last good one, or zero)."""


@dataclass(frozen=True)
class Series:
    """`count` elements of `dtype`, packed little-endian in `data`."""

    dtype: str
    data: bytes
    unit: str | None = None
    quality: Quality = "good"

    @property
    def itemsize(self) -> int:
        return struct.calcsize(SERIES_TYPES[self.dtype])

    @property
    def count(self) -> int:
        return len(self.data) // self.itemsize

    def values(self) -> list[float]:
        return [float(v) for v in self.samples()]

    def samples(self) -> list[float] | list[int]:
        """The elements as `struct` reads them: integers stay integers."""
        return list(struct.unpack(f"<{self.count}{SERIES_TYPES[self.dtype]}", self.data))

    @classmethod
    def pack(cls, dtype: str, samples: list[float] | list[int], **kw: Any) -> Series:
        if dtype not in SERIES_TYPES:
            raise ValueError(f"series type {dtype!r} is not one of {sorted(SERIES_TYPES)}")
        return cls(dtype, struct.pack(f"<{len(samples)}{SERIES_TYPES[dtype]}", *samples), **kw)


@dataclass(frozen=True)
class Reading:
    device: str
    ts: float
    seq: int
    values: Mapping[str, Value] = field(default_factory=dict)
    series: Mapping[str, Series] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: Any) -> Reading:
        """Parse the JSON-lines form used by `module run` (series given as arrays).

        Raises ValueError naming the field that is wrong and what was expected.
        """
        if not isinstance(doc, dict):
            raise ValueError(f"a reading must be a JSON object, got {type(doc).__name__}")
        device = _text(_field(doc, "device", str), "device")
        ts = _seconds(_field(doc, "ts", (int, float)))
        seq = _field(doc, "seq", int)
        if isinstance(seq, bool) or seq < 0:
            raise ValueError(f"'seq' must be a non-negative integer, got {seq!r}")
        values = {}
        for name, raw in _field(doc, "values", dict, {}).items():
            where = f"values.{_text(name, 'a value name')}"
            if not isinstance(raw, dict) or "value" not in raw:
                raise ValueError(f"{where} must be an object with a 'value', got {quoted(raw)}")
            v = raw["value"]
            if not isinstance(v, int | float | str) or not _finite(v):
                raise ValueError(f"{where}.value must be a finite number, bool or string")
            if isinstance(v, str):
                _text(v, f"{where}.value")
            values[name] = Value(v, _unit(raw, where), _quality(raw, where))
        series = {}
        for name, raw in _field(doc, "series", dict, {}).items():
            where = f"series.{_text(name, 'a series name')}"
            if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
                raise ValueError(f"{where} must be an object with a 'data' array")
            dtype = raw.get("type", "f64")
            if not isinstance(dtype, str):
                raise ValueError(f"{where}.type must be a string, got {quoted(dtype)}")
            unit, quality = _unit(raw, where), _quality(raw, where)
            try:
                series[name] = Series.pack(dtype, raw["data"], unit=unit, quality=quality)
            except (struct.error, ValueError, OverflowError) as err:
                # OverflowError: an integer too large for a float sample (1e400 as digits).
                raise ValueError(f"{where}: {err}") from err
        return cls(device, ts, seq, values, series)

    def to_json_line(self) -> bytes:
        """The form `from_json` reads: one line of JSON, series inline as `data` arrays."""
        doc: dict[str, Any] = {"device": self.device, "ts": self.ts, "seq": self.seq}
        doc["values"] = {
            name: _compact({"value": v.value, "unit": v.unit, "quality": v.quality})
            for name, v in self.values.items()
        }
        if self.series:
            doc["series"] = {
                name: _compact(
                    {"type": s.dtype, "unit": s.unit, "quality": s.quality, "data": s.samples()}
                )
                for name, s in self.series.items()
            }
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _field(doc: dict[str, Any], key: str, kind: Any, default: Any = ...) -> Any:
    if key not in doc:
        if default is not ...:
            return default
        raise ValueError(f"a reading needs {key!r}")
    value = doc[key]
    if not isinstance(value, kind):
        raise ValueError(f"{key!r} has the wrong type: {quoted(value)}")
    return value


def _seconds(ts: float) -> float:
    try:
        seconds = float(ts)
    except OverflowError:  # an integer past float range, such as 1 and 400 zeros
        seconds = math.inf
    if isinstance(ts, bool) or not math.isfinite(seconds):
        raise ValueError(f"'ts' must be a finite number of seconds, got {quoted(ts)}")
    return seconds


def _finite(value: float | str) -> bool:
    """Whether a number is finite, and so is what it becomes as a float."""
    if isinstance(value, str):
        return True
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _text(value: str, where: str) -> str:
    """`value`, once it is text UTF-8 can carry: JSON's `\\ud800` is not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{where} is not valid Unicode: {quoted(value)}") from err
    return value


def _unit(raw: dict[str, Any], where: str) -> str | None:
    unit = raw.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise ValueError(f"{where}.unit must be a string, got {quoted(unit)}")
    return unit if unit is None else _text(unit, f"{where}.unit")


def _quality(raw: dict[str, Any], where: str) -> Quality:
    quality = raw.get("quality", "good")
    if not isinstance(quality, str) or quality not in QUALITIES:
        raise ValueError(
            f"{where}.quality must be one of {sorted(QUALITIES)}, got {quoted(quality)}"
        )
    return quality  # type: ignore[return-value]


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
