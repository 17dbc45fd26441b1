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
        return [
            float(v) for v in struct.unpack(f"<{self.count}{SERIES_TYPES[self.dtype]}", self.data)
        ]

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
        device = _field(doc, "device", str)
        ts = float(_field(doc, "ts", (int, float)))
        if isinstance(doc["ts"], bool) or not math.isfinite(ts):
            raise ValueError(f"'ts' must be a finite number of seconds, got {doc['ts']!r}")
        seq = _field(doc, "seq", int)
        if isinstance(seq, bool) or seq < 0:
            raise ValueError(f"'seq' must be a non-negative integer, got {seq!r}")
        values = {}
        for name, raw in _field(doc, "values", dict, {}).items():
            if not isinstance(raw, dict) or "value" not in raw:
                raise ValueError(f"values.{name} must be an object with a 'value', got {raw!r}")
            v = raw["value"]
            if not isinstance(v, int | float | str) or (
                isinstance(v, float) and not math.isfinite(v)
            ):
                raise ValueError(f"values.{name}.value must be a finite number, bool or string")
            values[name] = Value(v, _unit(raw, f"values.{name}"), _quality(raw, f"values.{name}"))
        series = {}
        for name, raw in _field(doc, "series", dict, {}).items():
            if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
                raise ValueError(f"series.{name} must be an object with a 'data' array")
            dtype = raw.get("type", "f64")
            try:
                series[name] = Series.pack(
                    dtype,
                    raw["data"],
                    unit=_unit(raw, f"series.{name}"),
                    quality=_quality(raw, f"series.{name}"),
                )
            except (struct.error, ValueError) as err:
                raise ValueError(f"series.{name}: {err}") from err
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
                    {"type": s.dtype, "unit": s.unit, "quality": s.quality, "data": s.values()}
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
        raise ValueError(f"{key!r} has the wrong type: {value!r}")
    return value


def _unit(raw: dict[str, Any], where: str) -> str | None:
    unit = raw.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise ValueError(f"{where}.unit must be a string, got {unit!r}")
    return unit


def _quality(raw: dict[str, Any], where: str) -> Quality:
    quality = raw.get("quality", "good")
    if quality not in QUALITIES:
        raise ValueError(f"{where}.quality must be one of {sorted(QUALITIES)}, got {quality!r}")
    return quality  # type: ignore[no-any-return]


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
