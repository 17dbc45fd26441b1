"""JSON from outside the agent, parsed within bounds.

Python's `json` recurses once per nesting level, so 60,000 `[` (well under any size
limit) raise RecursionError instead of a parse error. `parse_json` measures the nesting with
a linear scan before it parses and refuses anything deeper than `MAX_DEPTH`; it also
refuses NaN and Infinity, which `json` accepts but JSON (RFC 8259) does not have.
Every refusal is a ValueError, like `json`'s own, so callers keep one except clause.
This module owns parsing and quoting input in errors; what a document must contain is
the caller's business.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32
"""Arrays and objects nested deeper than this are refused. Commands, OCI manifests,
indexes and Sigstore bundles nest five levels at most."""

_ESCAPE = re.compile(r"\\.", re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def parse_json(data: bytes | str, *, max_depth: int = MAX_DEPTH, allow_nan: bool = False) -> Any:
    """`data` parsed as JSON; a ValueError naming the problem when it is not, when it
    nests deeper than `max_depth`, or when it holds NaN or Infinity (unless `allow_nan`:
    Python's own JSON, such as the control socket's answers, writes them)."""
    if isinstance(data, bytes | bytearray):
        # Decoded first, as json.loads would: UTF-16 code units can hide `"` and `[`.
        data = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
    depth = nesting(data)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep; the limit is {max_depth}")
    return json.loads(data) if allow_nan else json.loads(data, parse_constant=_no_constant)


def nesting(text: str) -> int:
    """How deep arrays and objects nest in `text`, brackets inside strings not counted.

    Exact for valid JSON. For invalid JSON it is exact up to the first character that
    is invalid (a backslash outside a string), where the parser stops anyway, so it
    never reports less than the depth the parser would reach.
    """
    outside = "".join(_ESCAPE.sub("", text).split('"')[0::2])
    return max(accumulate(map(_STEP.__getitem__, _NOT_BRACKET.sub("", outside))), default=0)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def quoted(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to about `limit` characters: an error message names the bad
    input, it does not repeat a whole document back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
