"""Reading and writing the WebAssembly binary format: what the module rewrites share."""

from __future__ import annotations

import builtins

HEADER = b"\0asm\1\0\0\0"
# Known sections in the order the binary format requires; custom sections (0) go anywhere.
ORDER = (1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11)
# One-byte value types: numbers, v128 and the abbreviated reference types.
SHORT_VALTYPES = frozenset({0x7F, 0x7E, 0x7D, 0x7C, 0x7B, *range(0x69, 0x75)})
EMPTY_VEC = b"\0"


class Reader:
    """Sequential reads over `data`; every error names `what` was being read."""

    def __init__(self, data: builtins.bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def done(self) -> None:
        if not self.at_end():
            raise ValueError(f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes")

    def bytes(self, n: int) -> builtins.bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated {self.what}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def u8(self) -> int:
        return self.bytes(1)[0]

    def leb(self, bits: int, signed: bool = False) -> int:
        result = shift = 0
        while True:
            byte = self.u8()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift >= bits:
                raise ValueError(f"{self.what}: LEB128 longer than {bits} bits")
        if signed and byte & 0x40:
            result -= 1 << shift
        low, high = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
        if not low <= result < high:
            raise ValueError(f"{self.what}: LEB128 value {result} out of range for {bits} bits")
        return result

    def u32(self) -> int:
        return self.leb(32)


def u32(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def s32(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7  # arithmetic shift: n ends at 0 or -1
        if (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40):
            return bytes([*out, byte])
        out.append(byte | 0x80)


def vec(items: list[bytes]) -> bytes:
    return u32(len(items)) + b"".join(items)


def valtype(r: Reader) -> None:
    t = r.u8()
    if t in (0x63, 0x64):  # (ref null ht) / (ref ht): the heap type is an s33
        r.leb(33, signed=True)
    elif t not in SHORT_VALTYPES:
        raise ValueError(f"{r.what}: unsupported value type 0x{t:02x}")


def limits(r: Reader) -> int:
    """Skip limits; return the minimum."""
    flags = r.u8()
    if flags & ~0x0F:
        raise ValueError(f"{r.what}: unsupported limits flags 0x{flags:02x}")
    bits = 64 if flags & 0x04 else 32  # memory64 sizes are u64
    minimum = r.leb(bits)
    if flags & 0x01:
        r.leb(bits)
    if flags & 0x08:  # custom page size, as its log2
        r.u32()
    return minimum


def sections(wasm: bytes) -> list[tuple[int, bytes]]:
    r = Reader(wasm, "module header")
    if r.bytes(4) != HEADER[:4]:
        raise ValueError("bad magic: not a WebAssembly module")
    if r.bytes(4) != HEADER[4:]:
        raise ValueError("unsupported binary version (only core modules, version 1)")
    sections, rank = [], -1
    while not r.at_end():
        sid = r.u8()
        if sid:
            if sid not in ORDER:
                raise ValueError(f"unknown section id {sid}")
            if ORDER.index(sid) <= rank:
                raise ValueError(f"section {sid} repeated or out of order")
            rank = ORDER.index(sid)
        r.what = f"section {sid}"
        sections.append((sid, r.bytes(r.u32())))
    return sections
