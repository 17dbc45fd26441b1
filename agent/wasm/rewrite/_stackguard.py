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

from agent.errors import InvalidModule
from agent.wasm.rewrite._binary import (
    EMPTY_VEC,
    HEADER,
    ORDER,
    Reader,
    limits,
    s32,
    sections,
    u32,
    valtype,
    vec,
)
from agent.wasm.rewrite._stopcheck import STOP_EXPORT, Uncheckable, checked_body, stop_check

DEFAULT_MAX_DEPTH = 5000
GUARD_VERSION = f"stackguard-1-{DEFAULT_MAX_DEPTH}"
"""Part of compiled-cache keys: a change to the rewrite must not reuse old code."""
RESET_EXPORT = "__edge_stack_reset"

_RESET_TYPE = b"\x60\x00\x01\x7f"  # () -> i32


def _types(payload: bytes) -> list[tuple[int, bytes]]:
    """(parameter count, encoding) of each type; anything but a plain func type is refused."""
    r, types = Reader(payload, "section 1"), []
    for _ in range(r.u32()):
        start, form = r.pos, r.u8()
        if form != 0x60:
            raise ValueError(f"section 1: unsupported type form 0x{form:02x} (only func types)")
        params = r.u32()
        for _ in range(params):
            valtype(r)
        for _ in range(r.u32()):
            valtype(r)
        types.append((params, payload[start : r.pos]))
    r.done()
    return types


def _imports(payload: bytes) -> tuple[int, int, int, int]:
    """Imported functions, globals and memories (defined ones are numbered after them),
    and the largest minimum of an imported memory."""
    r, funcs, globals_, memories, memory = Reader(payload, "section 2"), 0, 0, 0, 0
    for _ in range(r.u32()):
        r.bytes(r.u32())  # module name
        r.bytes(r.u32())  # field name
        kind = r.u8()
        if kind == 0x00:
            funcs += 1
            r.u32()
        elif kind == 0x01:
            valtype(r)  # a reference type
            limits(r)
        elif kind == 0x02:
            memories += 1
            memory = max(memory, limits(r))
        elif kind == 0x03:
            globals_ += 1
            valtype(r)
            r.u8()  # mutability
        elif kind == 0x04:
            r.u8()  # tag attribute
            r.u32()
        else:
            raise ValueError(f"section 2: unknown import kind 0x{kind:02x}")
    r.done()
    return funcs, globals_, memories, memory


def _func_types(payload: bytes) -> list[int]:
    r = Reader(payload, "section 3")
    indices = [r.u32() for _ in range(r.u32())]
    r.done()
    return indices


def _bodies(payload: bytes) -> list[bytes]:
    """The code entries, each kept verbatim with its size prefix."""
    r, bodies = Reader(payload, "section 10"), []
    for _ in range(r.u32()):
        start = r.pos
        r.bytes(r.u32())
        bodies.append(payload[start : r.pos])
    r.done()
    return bodies


def _counted(payload: bytes, what: str) -> tuple[int, bytes]:
    """A vector section's count and its entries, kept unparsed."""
    r = Reader(payload, what)
    count = r.u32()
    return count, payload[r.pos :]


def _exports(payload: bytes) -> tuple[int, bytes]:
    """The export count and raw entries, refusing a module that already has our exports."""
    r = Reader(payload, "section 7")
    count = r.u32()
    start = r.pos
    for _ in range(count):
        name = r.bytes(r.u32()).decode("utf-8", "replace")
        if name in (RESET_EXPORT, STOP_EXPORT):
            raise ValueError(f"module already exports {name}")
        r.u8()  # kind
        r.u32()  # index
    r.done()
    return count, payload[start:]


def _thunk(params: int, target: int, depth: bytes, max_depth: int) -> bytes:
    code = (
        b"\x00"  # no locals beyond the parameters
        + b"\x23" + depth + b"\x41\x01\x6a\x24" + depth  # depth += 1 (there is no global.tee)
        + b"\x23" + depth + b"\x41" + s32(max_depth) + b"\x4b"  # depth > max_depth (unsigned)
        + b"\x04\x40\x00\x0b"  # if unreachable end
        + b"".join(b"\x20" + u32(i) for i in range(params))
        + b"\x10" + u32(target)
        + b"\x23" + depth + b"\x41\x01\x6b\x24" + depth  # depth -= 1
        + b"\x0b"
    )  # fmt: skip
    return u32(len(code)) + code


def instrument(
    wasm: bytes, max_depth: int = DEFAULT_MAX_DEPTH, *, stop_checks: bool = False
) -> bytes:
    """`wasm` with every defined function entered through a depth-counting thunk, and,
    with `stop_checks`, every loop starting with a check of a stop flag (`_stopcheck`)
    kept in a memory of its own, exported as `STOP_EXPORT`."""
    if not 0 < max_depth < 2**31 - 1:  # so the reset's max_depth + 1 is still a positive i32
        raise ValueError(f"max_depth must be between 1 and 2**31 - 2, not {max_depth}")
    parts = sections(wasm)
    payloads = {sid: payload for sid, payload in parts if sid}
    types = _types(payloads.get(1, EMPTY_VEC))
    imported_funcs, imported_globals, imported_memories, _ = _imports(payloads.get(2, EMPTY_VEC))
    func_types = _func_types(payloads.get(3, EMPTY_VEC))
    bodies = _bodies(payloads.get(10, EMPTY_VEC))
    if len(func_types) != len(bodies):
        raise ValueError(f"{len(func_types)} functions declared but {len(bodies)} bodies")
    global_count, global_entries = _counted(payloads.get(6, EMPTY_VEC), "section 6")
    export_count, export_entries = _exports(payloads.get(7, EMPTY_VEC))

    n = len(func_types)
    depth = u32(imported_globals + global_count)  # the new global comes after all others
    thunks = []
    for k, type_index in enumerate(func_types):
        if type_index >= len(types):
            raise ValueError(f"section 3: function {imported_funcs + k} has no type {type_index}")
        thunks.append(_thunk(types[type_index][0], imported_funcs + n + k, depth, max_depth))
    encodings = [encoding for _, encoding in types]
    if _RESET_TYPE not in encodings:
        encodings.append(_RESET_TYPE)
    func_section = [u32(t) for t in func_types]
    name = RESET_EXPORT.encode()
    reset_body = b"\x00\x23" + depth + b"\x41\x00\x24" + depth + b"\x0b"  # old value stays
    exports = [u32(len(name)) + name + b"\x00" + u32(imported_funcs + 2 * n)]
    new = {
        1: vec(encodings),
        3: vec([*func_section, *func_section, u32(encodings.index(_RESET_TYPE))]),
        6: u32(global_count + 1) + global_entries + b"\x7f\x01\x41\x00\x0b",  # mut i32 = 0
    }  # fmt: skip
    if stop_checks:
        memory_count, memory_entries = _counted(payloads.get(5, EMPTY_VEC), "section 5")
        flag = imported_memories + memory_count  # the new memory comes after all others
        if flag == 0:
            raise Uncheckable("no memory of its own: the flag's would become its memory 0")
        check = stop_check(flag)
        bodies = [checked_body(body, check) for body in bodies]
        new[5] = u32(memory_count + 1) + memory_entries + b"\x01\x01\x01"  # 1 page, max 1
        stop = STOP_EXPORT.encode()
        exports.append(u32(len(stop)) + stop + b"\x02" + u32(flag))
    new[7] = u32(export_count + len(exports)) + export_entries + b"".join(exports)
    new[10] = vec([*thunks, *bodies, u32(len(reset_body)) + reset_body])
    out = [(sid, new.pop(sid, payload)) for sid, payload in parts]
    for sid in sorted(new, key=ORDER.index):  # sections the module lacked
        rank = ORDER.index(sid)
        at = max((i + 1 for i, (s, _) in enumerate(out) if s and ORDER.index(s) < rank), default=0)
        out.insert(at, (sid, new[sid]))
    return HEADER + b"".join(bytes([sid]) + u32(len(p)) + p for sid, p in out)


def memory_minimum(wasm: bytes) -> int:
    """The most pages any memory of the module asks for at instantiation.

    WasmEdge silently shrinks a declared minimum to its page cap; checking here keeps
    the cap's meaning the same on both engines: a module that needs more is refused.
    """
    pages = 0
    for sid, payload in sections(wasm):
        if sid == 2:
            pages = max(pages, _imports(payload)[3])
        elif sid == 5:
            r = Reader(payload, "section 5")
            pages = max([pages, *(limits(r) for _ in range(r.u32()))])
    return pages


def guarded(wasm: bytes, name: str, *, stop_checks: bool = False) -> bytes:
    """`instrument`, with malformed input reported as the module's fault; with
    `stop_checks`, `Uncheckable` is left to the caller, whose module is fine."""
    try:
        return instrument(wasm, stop_checks=stop_checks)
    except Uncheckable:
        raise
    except ValueError as err:
        raise InvalidModule(name, f"is not a valid WebAssembly module: {err}") from err
