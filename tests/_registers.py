"""Register images built without the codec: `struct` and byte layouts written out letter
by letter (A the most significant byte), as device manuals show them."""

from __future__ import annotations

import struct

LAYOUTS = {
    2: {"ABCD": "AB", "CDAB": "AB", "BADC": "BA", "DCBA": "BA"},
    4: {"ABCD": "ABCD", "CDAB": "CDAB", "BADC": "BADC", "DCBA": "DCBA"},
    8: {"ABCD": "ABCDEFGH", "CDAB": "GHEFCDAB", "BADC": "BADCFEHG", "DCBA": "HGFEDCBA"},
}
"""Where each byte of the value sits on the wire, per order and value size."""


def image(code: str, value: float, order: str) -> list[int]:
    big = struct.pack(">" + code, value)
    wire = bytes(big["ABCDEFGH".index(c)] for c in LAYOUTS[len(big)][order])
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]
