"""Point values: what a node map's types accept on write, and how a sample becomes a `Value`.

Pure functions over the node map and plain Python values; no I/O, no asyncua.
"""

from __future__ import annotations

import math
import struct

from agent.config import NUMERIC_TYPES, NodeSpec, NodeType
from agent.errors import WriteRefused
from agent.reading import Value

PointValue = bool | int | float | str

_INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
ZERO: dict[NodeType, PointValue] = {"bool": False, "string": "", "float32": 0.0, "float64": 0.0}
ZERO.update(dict.fromkeys(_INT_RANGES, 0))  # type: ignore[arg-type]
"""What a bad value carries when the point never had a good one: the type's zero."""


def coerce(device: str, point: NodeSpec, value: PointValue) -> PointValue:
    """`value` as the point's type takes it; `WriteRefused` when it does not fit."""
    name, kind = point.name, point.type
    if kind in {"bool", "string"}:
        if not isinstance(value, bool if kind == "bool" else str):
            raise WriteRefused(device, f"{name} takes a {kind}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WriteRefused(device, f"{name} takes a finite number, got {value!r}")
    low = -math.inf if point.min is None else point.min
    high = math.inf if point.max is None else point.max
    if not low <= value <= high:
        raise WriteRefused(device, f"{name}: {value!r} is outside [{point.min}, {point.max}]")
    if kind in _INT_RANGES:
        if value != int(value):
            raise WriteRefused(device, f"{name} takes a whole number ({kind}), got {value!r}")
        first, last = _INT_RANGES[kind]
        if not first <= int(value) <= last:
            raise WriteRefused(device, f"{name}: {value!r} does not fit {kind}")
        return int(value)
    if kind == "float32" and abs(value) > 3.4028234663852886e38:
        raise WriteRefused(device, f"{name}: {value!r} does not fit float32")
    return float(value)


def stored(point: NodeSpec, value: PointValue) -> PointValue:
    """`value` as the server stores it: a float32 loses precision on the way."""
    if point.type == "float32" and isinstance(value, float):
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    return value


def plain(point: NodeSpec, raw: object) -> PointValue | None:
    """A value the server sent, as the point's Python type; None when it is not one."""
    kind = point.type
    if kind == "bool":
        return raw if isinstance(raw, bool) else None
    if kind == "string":
        return raw if isinstance(raw, str) else None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if kind in NUMERIC_TYPES and kind.startswith("float"):
        return float(raw) if math.isfinite(raw) else None
    return int(raw) if raw == int(raw) else None


def to_value(
    point: NodeSpec, raw: object, quality: str, reason: str | None, last: PointValue
) -> Value:
    """The reading's `Value` of a sample; a bad one carries `last` (the last good value)."""
    value = plain(point, raw)
    if value is None and quality == "good":
        quality, reason = "bad", f"the server sent {raw!r}, not a {point.type}"
    if quality == "bad" or value is None:
        return Value(last, point.unit, "bad", reason)
    return Value(value, point.unit, "uncertain" if quality == "uncertain" else "good", reason)
