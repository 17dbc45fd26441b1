"""The codec: register words to typed values and back, as pure functions.

Registers are 16-bit words as the protocol carries them (high byte first on the wire).
A value's byte order names where its bytes sit, A the most significant: ABCD is
big-endian, DCBA little-endian, BADC swaps the bytes inside each register, CDAB swaps
the registers (for 64-bit values: reverses them). Knows nothing of maps or the bus.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from agent.config import ByteOrder, DataType

RawValue = int | float | bool | str

STRUCT_CODES: dict[str, str] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


def _to_big_endian(words: Sequence[int], order: ByteOrder) -> bytes:
    """The value's bytes most significant first; the two swaps are their own inverses."""
    if order in ("CDAB", "DCBA"):
        words = list(reversed(words))
    data = b"".join(w.to_bytes(2, "big") for w in words)
    if order in ("BADC", "DCBA"):
        data = bytes(b for i in range(0, len(data), 2) for b in (data[i + 1], data[i]))
    return data


def _from_big_endian(data: bytes, order: ByteOrder) -> list[int]:
    if order in ("BADC", "DCBA"):
        data = bytes(b for i in range(0, len(data), 2) for b in (data[i + 1], data[i]))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return words


def decode(
    kind: DataType, order: ByteOrder, words: Sequence[int], bit: int | None = None
) -> RawValue:
    """The raw value held in `words` (for `bool`, `words` holds the one bit).

    Raises ValueError when `words` cannot hold a `kind`: a reply of the wrong length,
    or a word outside 0..65535.
    """
    if kind in ("bool", "bit"):
        if len(words) != 1:
            raise ValueError(f"a {kind} is read from one word, got {len(words)}")
        return bool(words[0]) if kind == "bool" else bool((words[0] >> (bit or 0)) & 1)
    try:
        data = _to_big_endian(words, order)
        if kind == "string":
            return data.rstrip(b"\x00 ").decode("latin-1")
        value: RawValue = struct.unpack(">" + STRUCT_CODES[kind], data)[0]
    except (OverflowError, struct.error) as err:  # a word past 16 bits; too few or many
        raise ValueError(f"{len(words)} words cannot hold type {kind}: {err}") from err
    return value


def encode(kind: DataType, order: ByteOrder, value: RawValue, length: int = 0) -> list[int]:
    """The register words (for `bool`, the one bit) that hold `value`.

    Raises ValueError when the value does not fit the type, naming type and value.
    """
    if kind == "bool":
        return [int(bool(value))]
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"a string register takes a string, got {value!r}")
        data = value.encode("latin-1", errors="strict")
        if len(data) > 2 * length:
            raise ValueError(f"{value!r} is longer than {2 * length} characters")
        return _from_big_endian(data.ljust(2 * length, b"\x00"), order)
    if kind == "bit" or isinstance(value, str | bool):
        raise ValueError(f"type {kind!r} cannot hold {value!r}")
    code = STRUCT_CODES[kind]
    if kind.startswith("float"):
        number: int | float = float(value)
    else:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{kind} holds whole numbers, got {value!r}")
        number = int(value)
    try:
        data = struct.pack(">" + code, number)
    except (struct.error, OverflowError) as err:
        raise ValueError(f"{value!r} does not fit {kind}") from err
    return _from_big_endian(data, order)


def to_engineering(raw: RawValue, scale: float, offset: float) -> RawValue:
    """raw * scale + offset for numbers; integers stay integers when nothing scales them."""
    if isinstance(raw, bool | str) or (scale == 1.0 and offset == 0.0):
        return raw
    return raw * scale + offset


def to_raw(kind: DataType, value: RawValue, scale: float, offset: float) -> RawValue:
    """The raw number whose engineering value is `value`, rounded for integer types."""
    if isinstance(value, bool | str) or (scale == 1.0 and offset == 0.0):
        return value
    raw = (value - offset) / scale
    if kind.startswith("float"):
        return raw
    if not math.isfinite(raw):
        raise ValueError(f"{value!r} has no raw {kind} value")
    return round(raw)
