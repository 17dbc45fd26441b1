"""Bounding guest call depth by rewriting each module before it is compiled.

WasmEdge has no call-depth limit: unbounded recursion grows the interpreter's heap
without bound and, under AOT, overflows the native stack and kills the whole agent.
So every module, on every engine alike, is rewritten here: each defined function is
entered through a thunk that counts depth in a new global and traps (`unreachable`)
past the limit. The thunks take the original function indices, so calls, tables,
exports, `ref.func` and the start function all reach them without a single
instruction being decoded or rewritten; the original bodies move, unchanged, behind
them. After a trap the host calls `RESET_EXPORT`: it returns the depth (above the
limit means the guard fired) and zeroes it, since a trap leaves the count unbalanced.
"""

from __future__ import annotations

import builtins

from agent.errors import InvalidModule

DEFAULT_MAX_DEPTH = 5000
GUARD_VERSION = f"stackguard-1-{DEFAULT_MAX_DEPTH}"
"""Part of compiled-cache keys: a change to the rewrite must not reuse old code."""
RESET_EXPORT = "__edge_stack_reset"

_HEADER = b"\0asm\1\0\0\0"
# Known sections in the order the binary format requires; custom sections (0) go anywhere.
_ORDER = (1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11)
_RESET_TYPE = b"\x60\x00\x01\x7f"  # () -> i32
# One-byte value types: numbers, v128 and the abbreviated reference types.
_SHORT_VALTYPES = frozenset({0x7F, 0x7E, 0x7D, 0x7C, 0x7B, *range(0x69, 0x75)})
_EMPTY_VEC = b"\0"


class _Reader:
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


def _u32(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def _s32(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7  # arithmetic shift: n ends at 0 or -1
        if (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40):
            return bytes([*out, byte])
        out.append(byte | 0x80)


def _vec(items: list[bytes]) -> bytes:
    return _u32(len(items)) + b"".join(items)


def _valtype(r: _Reader) -> None:
    t = r.u8()
    if t in (0x63, 0x64):  # (ref null ht) / (ref ht): the heap type is an s33
        r.leb(33, signed=True)
    elif t not in _SHORT_VALTYPES:
        raise ValueError(f"{r.what}: unsupported value type 0x{t:02x}")


def _limits(r: _Reader) -> int:
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


def _sections(wasm: bytes) -> list[tuple[int, bytes]]:
    r = _Reader(wasm, "module header")
    if r.bytes(4) != _HEADER[:4]:
        raise ValueError("bad magic: not a WebAssembly module")
    if r.bytes(4) != _HEADER[4:]:
        raise ValueError("unsupported binary version (only core modules, version 1)")
    sections, rank = [], -1
    while not r.at_end():
        sid = r.u8()
        if sid:
            if sid not in _ORDER:
                raise ValueError(f"unknown section id {sid}")
            if _ORDER.index(sid) <= rank:
                raise ValueError(f"section {sid} repeated or out of order")
            rank = _ORDER.index(sid)
        r.what = f"section {sid}"
        sections.append((sid, r.bytes(r.u32())))
    return sections


def _types(payload: bytes) -> list[tuple[int, bytes]]:
    """(parameter count, encoding) of each type; anything but a plain func type is refused."""
    r, types = _Reader(payload, "section 1"), []
    for _ in range(r.u32()):
        start, form = r.pos, r.u8()
        if form != 0x60:
            raise ValueError(f"section 1: unsupported type form 0x{form:02x} (only func types)")
        params = r.u32()
        for _ in range(params):
            _valtype(r)
        for _ in range(r.u32()):
            _valtype(r)
        types.append((params, payload[start : r.pos]))
    r.done()
    return types


def _imports(payload: bytes) -> tuple[int, int, int]:
    """Imported functions and globals (defined ones are numbered after them), and the
    largest minimum of an imported memory."""
    r, funcs, globals_, memory = _Reader(payload, "section 2"), 0, 0, 0
    for _ in range(r.u32()):
        r.bytes(r.u32())  # module name
        r.bytes(r.u32())  # field name
        kind = r.u8()
        if kind == 0x00:
            funcs += 1
            r.u32()
        elif kind == 0x01:
            _valtype(r)  # a reference type
            _limits(r)
        elif kind == 0x02:
            memory = max(memory, _limits(r))
        elif kind == 0x03:
            globals_ += 1
            _valtype(r)
            r.u8()  # mutability
        elif kind == 0x04:
            r.u8()  # tag attribute
            r.u32()
        else:
            raise ValueError(f"section 2: unknown import kind 0x{kind:02x}")
    r.done()
    return funcs, globals_, memory


def _func_types(payload: bytes) -> list[int]:
    r = _Reader(payload, "section 3")
    indices = [r.u32() for _ in range(r.u32())]
    r.done()
    return indices


def _bodies(payload: bytes) -> list[bytes]:
    """The code entries, each kept verbatim with its size prefix."""
    r, bodies = _Reader(payload, "section 10"), []
    for _ in range(r.u32()):
        start = r.pos
        r.bytes(r.u32())
        bodies.append(payload[start : r.pos])
    r.done()
    return bodies


def _global_count(payload: bytes) -> tuple[int, bytes]:
    """The count of defined globals and their entries, kept unparsed."""
    r = _Reader(payload, "section 6")
    count = r.u32()
    return count, payload[r.pos :]


def _exports(payload: bytes) -> tuple[int, bytes]:
    """The export count and raw entries, refusing a module that already has our export."""
    r = _Reader(payload, "section 7")
    count = r.u32()
    start = r.pos
    for _ in range(count):
        if r.bytes(r.u32()) == RESET_EXPORT.encode():
            raise ValueError(f"module already exports {RESET_EXPORT}")
        r.u8()  # kind
        r.u32()  # index
    r.done()
    return count, payload[start:]


def _thunk(params: int, target: int, depth: bytes, max_depth: int) -> bytes:
    code = (
        b"\x00"  # no locals beyond the parameters
        + b"\x23" + depth + b"\x41\x01\x6a\x24" + depth  # depth += 1 (there is no global.tee)
        + b"\x23" + depth + b"\x41" + _s32(max_depth) + b"\x4b"  # depth > max_depth (unsigned)
        + b"\x04\x40\x00\x0b"  # if unreachable end
        + b"".join(b"\x20" + _u32(i) for i in range(params))
        + b"\x10" + _u32(target)
        + b"\x23" + depth + b"\x41\x01\x6b\x24" + depth  # depth -= 1
        + b"\x0b"
    )  # fmt: skip
    return _u32(len(code)) + code


def instrument(wasm: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """`wasm` with every defined function entered through a depth-counting thunk."""
    if not 0 < max_depth < 2**31 - 1:  # so the reset's max_depth + 1 is still a positive i32
        raise ValueError(f"max_depth must be between 1 and 2**31 - 2, not {max_depth}")
    sections = _sections(wasm)
    payloads = {sid: payload for sid, payload in sections if sid}
    types = _types(payloads.get(1, _EMPTY_VEC))
    imported_funcs, imported_globals, _ = _imports(payloads.get(2, _EMPTY_VEC))
    func_types = _func_types(payloads.get(3, _EMPTY_VEC))
    bodies = _bodies(payloads.get(10, _EMPTY_VEC))
    if len(func_types) != len(bodies):
        raise ValueError(f"{len(func_types)} functions declared but {len(bodies)} bodies")
    global_count, global_entries = _global_count(payloads.get(6, _EMPTY_VEC))
    export_count, export_entries = _exports(payloads.get(7, _EMPTY_VEC))

    n = len(func_types)
    depth = _u32(imported_globals + global_count)  # the new global comes after all others
    thunks = []
    for k, type_index in enumerate(func_types):
        if type_index >= len(types):
            raise ValueError(f"section 3: function {imported_funcs + k} has no type {type_index}")
        thunks.append(_thunk(types[type_index][0], imported_funcs + n + k, depth, max_depth))
    encodings = [encoding for _, encoding in types]
    if _RESET_TYPE not in encodings:
        encodings.append(_RESET_TYPE)
    func_section = [_u32(t) for t in func_types]
    name = RESET_EXPORT.encode()
    reset_body = b"\x00\x23" + depth + b"\x41\x00\x24" + depth + b"\x0b"  # old value stays
    new = {
        1: _vec(encodings),
        3: _vec([*func_section, *func_section, _u32(encodings.index(_RESET_TYPE))]),
        6: _u32(global_count + 1) + global_entries + b"\x7f\x01\x41\x00\x0b",  # mut i32 = 0
        7: _u32(export_count + 1)
        + export_entries
        + _u32(len(name)) + name + b"\x00" + _u32(imported_funcs + 2 * n),
        10: _vec([*thunks, *bodies, _u32(len(reset_body)) + reset_body]),
    }  # fmt: skip
    out = [(sid, new.pop(sid, payload)) for sid, payload in sections]
    for sid in sorted(new, key=_ORDER.index):  # sections the module lacked
        rank = _ORDER.index(sid)
        at = max((i + 1 for i, (s, _) in enumerate(out) if s and _ORDER.index(s) < rank), default=0)
        out.insert(at, (sid, new[sid]))
    return _HEADER + b"".join(bytes([sid]) + _u32(len(p)) + p for sid, p in out)


def memory_minimum(wasm: bytes) -> int:
    """The most pages any memory of the module asks for at instantiation.

    WasmEdge silently shrinks a declared minimum to its page cap; checking here keeps
    the cap's meaning the same on both engines: a module that needs more is refused.
    """
    pages = 0
    for sid, payload in _sections(wasm):
        if sid == 2:
            pages = max(pages, _imports(payload)[2])
        elif sid == 5:
            r = _Reader(payload, "section 5")
            pages = max([pages, *(_limits(r) for _ in range(r.u32()))])
    return pages


def guarded(wasm: bytes, name: str) -> bytes:
    """`instrument`, with malformed input reported as the module's fault."""
    try:
        return instrument(wasm)
    except ValueError as err:
        raise InvalidModule(name, f"is not a valid WebAssembly module: {err}") from err
