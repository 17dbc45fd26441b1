"""Stop checks of our own in loops, so WasmEdge's AOT code can meet deadlines cheaply.

WasmEdge stops a call only in "interruptible" AOT code, which exchanges its stop flag
atomically at every block and loop entry: about 5 ns each, 55 us of window-stats'
85 us reading. Here every loop instead starts by loading a flag from a one-page
memory of its own, which the module's code cannot address (multi-memory), with an
atomic load so the compiler cannot hoist it out of the loop: about 0.3 ns. The
watchdog stops a call by setting the flag; the loop then traps. A loop is the only
way code runs unbounded (the stack guard bounds recursion), so every runaway call
meets a check. Finding the loops means decoding every instruction. `Uncheckable`
leaves WasmEdge's own checks to a module with instructions this decoder does not know,
with an atomic wait (which only WasmEdge's stop token ends), or without a memory (the
flag's would become its memory 0, which host functions and WASI use).
"""

from __future__ import annotations

from collections.abc import Callable

from agent.wasm.rewrite._binary import SHORT_VALTYPES, Reader, u32, valtype

STOP_EXPORT = "__edge_stop"
"""The flag's memory: an i32 at address 0, non-zero to stop."""


class Uncheckable(ValueError):
    """Our checks could not stop this module; the message says why."""


def stop_check(memory: int) -> bytes:
    """`if (i32.atomic.load memory (i32.const 0)) unreachable`."""
    return b"\x41\x00\xfe\x10\x42" + u32(memory) + b"\x00\x04\x40\x00\x0b"


def checked_body(entry: bytes, check: bytes) -> bytes:
    """A code entry (size-prefixed, as in the code section) with `check` at the top
    of each of its loops."""
    r = Reader(entry, "a function body")
    size = r.u32()
    if size != len(entry) - r.pos:
        raise ValueError(f"a function body of {size} bytes has {len(entry) - r.pos}")
    body_start = r.pos
    for _ in range(r.u32()):  # local declarations: count, type
        r.u32()
        valtype(r)
    out = bytearray(entry[body_start : r.pos])
    copied = r.pos
    while not r.at_end():
        opcode = r.u8()
        _skip_immediates(opcode, r)
        if opcode == 0x03:  # loop: the check goes first inside it
            out += entry[copied : r.pos] + check
            copied = r.pos
    out += entry[copied:]
    return u32(len(out)) + bytes(out)


def _skip_immediates(opcode: int, r: Reader) -> None:
    skip = _IMMEDIATES.get(opcode)
    if skip is None:
        raise Uncheckable(f"unknown opcode 0x{opcode:02x}")
    skip(r)


def _none(r: Reader) -> None:
    pass


def _index(r: Reader) -> None:
    r.u32()


def _two_indices(r: Reader) -> None:
    r.u32()
    r.u32()


def _br_table(r: Reader) -> None:
    for _ in range(r.u32() + 1):
        r.u32()


def _typed_select(r: Reader) -> None:
    for _ in range(r.u32()):
        valtype(r)


def _try_table(r: Reader) -> None:
    _block_type(r)
    for _ in range(r.u32()):
        kind = r.u8()
        if kind > 3:
            raise Uncheckable(f"unknown try_table catch kind {kind}")
        if kind < 2:
            r.u32()  # the tag
        r.u32()  # the label


# 0xFC: sub-opcode -> how many indices follow (saturating truncations, bulk memory, tables).
_MISC = {**dict.fromkeys(range(8), 0), 8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2}
_MISC |= {15: 1, 16: 1, 17: 1}


def _misc(r: Reader) -> None:
    sub = r.u32()
    if sub not in _MISC:
        raise Uncheckable(f"unknown opcode 0xfc {sub}")
    for _ in range(_MISC[sub]):
        r.u32()


def _simd(r: Reader) -> None:
    sub = r.u32()
    if sub > 0x113:  # past relaxed SIMD
        raise Uncheckable(f"unknown opcode 0xfd {sub}")
    if sub < 0x0C or sub in (0x5C, 0x5D):  # loads and stores
        _memarg(r)
    elif 0x54 <= sub < 0x5C:  # lane loads and stores
        _memarg(r)
        r.u8()
    elif 0x15 <= sub < 0x23:  # extract and replace lane
        r.u8()
    elif sub in (0x0C, 0x0D):  # v128.const, i8x16.shuffle
        r.bytes(16)


def _atomic(r: Reader) -> None:
    sub = r.u32()
    if sub in (0x01, 0x02):
        raise Uncheckable("memory.atomic.wait, which only WasmEdge's stop token interrupts")
    if sub == 0x03:  # atomic.fence
        r.u8()
    elif sub == 0x00 or 0x10 <= sub < 0x4F:
        _memarg(r)
    else:
        raise Uncheckable(f"unknown opcode 0xfe {sub}")


def _block_type(r: Reader) -> None:
    first = r.data[r.pos] if r.pos < len(r.data) else None
    if first == 0x40 or first in SHORT_VALTYPES:
        r.u8()
    elif first in (0x63, 0x64):
        valtype(r)
    else:
        r.leb(33, signed=True)  # a type index


def _memarg(r: Reader) -> None:
    if r.u32() & 0x40:  # multi-memory: a memory index follows the alignment
        r.u32()
    r.leb(64)  # the offset (u64 with memory64)


_IMMEDIATES: dict[int, Callable[[Reader], object]] = {
    # unreachable, nop, else, throw_ref, end, return, catch_all, drop, select,
    # ref.is_null, ref.eq, ref.as_non_null and the numeric instructions
    **dict.fromkeys([0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B], _none),
    **dict.fromkeys([0xD1, 0xD3, 0xD4, *range(0x45, 0xC5)], _none),
    # catch, throw, rethrow, br, br_if, call, return_call, call_ref, return_call_ref,
    # delegate, local/global/table get and set, memory.size and .grow, ref.func,
    # br_on_null, br_on_non_null
    **dict.fromkeys([0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x18], _index),
    **dict.fromkeys([*range(0x20, 0x27), 0x3F, 0x40, 0xD2, 0xD5, 0xD6], _index),
    **dict.fromkeys([0x02, 0x03, 0x04, 0x06], _block_type),  # block loop if try
    **dict.fromkeys(range(0x28, 0x3F), _memarg),  # loads and stores
    0x0E: _br_table,
    0x11: _two_indices,  # call_indirect: type, table
    0x13: _two_indices,  # return_call_indirect
    0x1C: _typed_select,
    0x1F: _try_table,
    0x41: lambda r: r.leb(32, signed=True),
    0x42: lambda r: r.leb(64, signed=True),
    0x43: lambda r: r.bytes(4),
    0x44: lambda r: r.bytes(8),
    0xD0: lambda r: r.leb(33, signed=True),  # ref.null: a heap type
    0xFC: _misc,
    0xFD: _simd,
    0xFE: _atomic,
}
