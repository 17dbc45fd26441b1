"""The call-depth guard: instrumented modules behave as before, until recursion runs away.

Every case runs the original and the instrumented module side by side on real wasmtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import wasmtime

from agent.wasm.rewrite._binary import Reader, s32, sections, u32
from agent.wasm.rewrite._stackguard import DEFAULT_MAX_DEPTH, RESET_EXPORT, instrument

from .conftest import DIST

pytestmark = pytest.mark.arm64

ENGINE = wasmtime.Engine()
HEADER = b"\0asm\1\0\0\0"

Link = Callable[[wasmtime.Linker, wasmtime.Store], None]


class Loaded:
    """One validated, instantiated module; call its exports by name."""

    def __init__(self, wasm: bytes, link: Link | None = None, engine: wasmtime.Engine = ENGINE):
        wasmtime.Module.validate(engine, wasm)
        self.store = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        if link:
            link(linker, self.store)
        self.instance = linker.instantiate(self.store, wasmtime.Module(engine, wasm))

    def __call__(self, name: str, *args: Any) -> Any:
        func = self.instance.exports(self.store)[name]
        assert isinstance(func, wasmtime.Func)
        return func(self.store, *args)

    def reset(self) -> int:
        return int(self(RESET_EXPORT))


def same(wat: str, calls: list[tuple[Any, ...]], link: Link | None = None) -> Loaded:
    """Check each (export, *args) gives the same result plain and guarded, depth back at 0."""
    wasm = wat2wasm(wat)
    plain, guarded = Loaded(wasm, link), Loaded(instrument(wasm, 50), link)
    for name, *args in calls:
        assert guarded(name, *args) == plain(name, *args), (name, args)
        assert guarded.reset() == 0
    return guarded


def wat2wasm(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def custom(name: str, data: bytes) -> bytes:
    payload = u32(len(name)) + name.encode() + data
    return b"\0" + u32(len(payload)) + payload


SUM = """(module
  (func $sum (export "sum") (param i32) (result i32)
    (if (result i32) (local.get 0)
      (then (i32.add (local.get 0) (call $sum (i32.sub (local.get 0) (i32.const 1)))))
      (else (i32.const 0))))
  (func $r (export "runaway") (call $r)))"""


def test_values_of_every_type_pass_through() -> None:
    same(
        """(module
          (func (export "i32") (param i32 i32) (result i32) (i32.sub (local.get 0) (local.get 1)))
          (func (export "i64") (param i64) (result i64) (i64.mul (local.get 0) (i64.const 3)))
          (func (export "f32") (param f32) (result f32) (f32.sqrt (local.get 0)))
          (func (export "f64") (param f64 f64) (result f64) (f64.div (local.get 0) (local.get 1)))
          (func (export "multi") (param i32 i64) (result i64 i32) (local.get 1) (local.get 0))
          (func (export "nothing")))""",
        [
            ("i32", 7, 9),
            ("i64", -(2**61)),
            ("f32", 2.0),
            ("f64", 1.0, 3.0),
            ("multi", -1, 2**40),
            ("nothing",),
        ],
    )


@pytest.mark.parametrize(("depth", "max_depth"), [(49, 50), (100, 200)])
def test_recursion_up_to_the_limit_is_unchanged(depth: int, max_depth: int) -> None:
    guarded = Loaded(instrument(wat2wasm(SUM), max_depth))
    assert guarded("sum", depth) == depth * (depth + 1) // 2  # depth + 1 nested calls
    assert guarded.reset() == 0


def test_one_call_past_the_limit_traps() -> None:
    guarded = Loaded(instrument(wat2wasm(SUM), 50))
    with pytest.raises(wasmtime.Trap) as info:
        guarded("sum", 50)
    assert info.value.trap_code == wasmtime.TrapCode.UNREACHABLE
    assert guarded.reset() == 51


def test_unbounded_recursion_traps_and_reset_reports_then_clears() -> None:
    guarded = Loaded(instrument(wat2wasm(SUM), 50))
    with pytest.raises(wasmtime.Trap) as info:
        guarded("runaway")
    assert info.value.trap_code == wasmtime.TrapCode.UNREACHABLE  # not STACK_OVERFLOW
    assert guarded.reset() == 51
    assert guarded.reset() == 0
    assert guarded("sum", 10) == 55  # usable again after the reset
    assert guarded.reset() == 0


def test_default_limit_fires_before_wasmtimes_stack_overflow() -> None:
    guarded = Loaded(instrument(wat2wasm(SUM)))
    with pytest.raises(wasmtime.Trap) as info:
        guarded("runaway")
    assert info.value.trap_code == wasmtime.TrapCode.UNREACHABLE
    assert guarded.reset() == DEFAULT_MAX_DEPTH + 1


def test_calls_through_a_table_are_counted() -> None:
    wat = """(module
      (type $t (func (param i32) (result i32)))
      (table 2 funcref)
      (elem (i32.const 0) $down $double)
      (func $double (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
      (func $down (export "down") (param i32) (result i32)
        (if (result i32) (local.get 0)
          (then (call_indirect (type $t) (i32.sub (local.get 0) (i32.const 1)) (i32.const 0)))
          (else (call_indirect (type $t) (i32.const 21) (i32.const 1))))))"""
    guarded = same(wat, [("down", 0), ("down", 48)])
    with pytest.raises(wasmtime.Trap) as info:
        guarded("down", 49)  # 50 levels of $down, then $double: one past the limit
    assert info.value.trap_code == wasmtime.TrapCode.UNREACHABLE


def test_start_function_and_element_segment_reach_the_thunks() -> None:
    wat = """(module
      (global $runs (mut i32) (i32.const 0))
      (table funcref (elem $bump))
      (func $bump (export "bump") (result i32)
        (global.set $runs (i32.add (global.get $runs) (i32.const 1))) (global.get $runs))
      (func $start (drop (call_indirect (result i32) (i32.const 0))))
      (start $start)
      (func (export "via_table") (result i32) (call_indirect (result i32) (i32.const 0))))"""
    guarded = same(wat, [("bump",), ("via_table",), ("bump",)])
    assert guarded("bump") == 5  # the start function's run counted once


def test_imported_functions_and_globals_keep_their_indices() -> None:
    wat = """(module
      (import "env" "add" (func $add (param i64 i64) (result i64)))
      (import "env" "base" (global $base i64))
      (import "env" "counter" (global $counter (mut i32)))
      (global $own (mut i64) (i64.const 1000))
      (func $tick (result i32)
        (global.set $counter (i32.add (global.get $counter) (i32.const 1))) (global.get $counter))
      (func (export "f") (param i64) (result i64)
        (drop (call $tick))
        (call $add (call $add (local.get 0) (global.get $base)) (global.get $own)))
      (func (export "count") (result i32) (global.get $counter)))"""

    def link(linker: wasmtime.Linker, store: wasmtime.Store) -> None:
        i64 = wasmtime.ValType.i64()
        linker.define_func("env", "add", wasmtime.FuncType([i64, i64], [i64]), lambda a, b: a + b)
        base = wasmtime.Global(store, wasmtime.GlobalType(i64, False), wasmtime.Val.i64(7))
        counter_type = wasmtime.GlobalType(wasmtime.ValType.i32(), True)
        linker.define(store, "env", "base", base)
        linker.define(store, "env", "counter", wasmtime.Global(store, counter_type, 0))

    guarded = same(wat, [("f", 5), ("f", -9), ("count",)], link)
    assert guarded("count") == 2


def test_a_module_without_functions_still_gets_the_reset() -> None:
    for wat in (
        "(module)",
        '(module (memory 1) (global i32 (i32.const 4)) (data (i32.const 0) ""))',
    ):
        assert Loaded(instrument(wat2wasm(wat))).reset() == 0


def test_an_existing_reset_type_is_reused() -> None:
    def type_count(wasm: bytes) -> int:
        return Reader(dict(sections(wasm))[1], "types").u32()

    with_type = wat2wasm('(module (func (export "one") (result i32) (i32.const 1)))')
    without = wat2wasm('(module (func (export "one") (param i32)))')
    assert type_count(instrument(with_type)) == type_count(with_type)
    assert type_count(instrument(without)) == type_count(without) + 1


def test_other_sections_and_custom_sections_stay_in_place() -> None:
    wasm = wat2wasm(
        '(module (memory 1) (data (i32.const 0) "abc") (func (export "f") (result i32) '
        "(i32.load8_u (i32.const 1))))"
    )
    wasm = HEADER + custom("first", b"\1\2") + wasm[8:] + custom("last", b"\3")
    before, after = sections(wasm), sections(instrument(wasm))
    assert [sid for sid, _ in before] == [0, 1, 3, 5, 7, 10, 11, 0]
    assert [sid for sid, _ in after] == [0, 1, 3, 5, 6, 7, 10, 11, 0]  # global section added
    changed = {1, 3, 6, 7, 10}
    assert [s for s in after if s[0] not in changed] == [s for s in before if s[0] not in changed]
    assert after[0] == (0, b"\5first\1\2")
    assert after[-1] == (0, b"\4last\3")


def test_imports_of_every_kind_are_skipped_correctly() -> None:
    # Miscounting the imports before the function would point the thunks' call and the
    # depth global at wrongly typed entries, which validation rejects.
    wat = """(module
      (import "e" "t" (table 3 10 funcref))
      (import "e" "m" (memory i64 1 0x1_0000_0000))
      (import "e" "s" (memory 1 1 shared))
      (import "e" "g" (global i64))
      (import "e" "x" (tag (param i32)))
      (import "e" "h" (func (param f64)))
      (func (export "f") (param i32) (result i32) (local.get 0)))"""
    config = wasmtime.Config()
    config.wasm_memory64 = True
    config.wasm_threads = True
    config.wasm_exceptions = True
    config.wasm_multi_memory = True
    wasmtime.Module.validate(wasmtime.Engine(config), instrument(wat2wasm(wat)))


@pytest.mark.parametrize("path", sorted(DIST.glob("*.wasm")), ids=lambda p: p.stem)
def test_the_guest_modules_instrument_and_validate(path: Any) -> None:
    wasmtime.Module.validate(ENGINE, instrument(path.read_bytes()))


def test_a_return_call_loop_is_bounded_too() -> None:
    # Known cost of the technique: the thunk must decrement after the call, so a tail
    # call through it is not a tail call and a loop written as one counts its depth.
    wat = """(module (func $loop (export "loop") (param i32) (result i32)
      (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 7))
        (else (return_call $loop (i32.sub (local.get 0) (i32.const 1)))))))"""
    guarded = same(wat, [("loop", 40)])
    with pytest.raises(wasmtime.Trap):
        guarded("loop", 100)


def section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + u32(len(payload)) + payload


FUNC_VOID = b"\x01\x60\x00\x00"  # a type section payload: [() -> ()]


@pytest.mark.parametrize(
    ("wasm", "message"),
    [
        (b"\0elf\1\0\0\0", "bad magic"),
        (b"\0asm\1\0", "truncated module header"),
        (b"\0asm\x0d\0\1\0", "unsupported binary version"),
        (HEADER + b"\x0a\x05\x01\x02", "truncated section 10"),
        (HEADER + b"\x0a", "truncated section 10"),
        (HEADER + section(1, b"\x01\x5f\x00"), "type form 0x5f"),
        (HEADER + section(1, b"\x01\x4e\x00"), "type form 0x4e"),
        (HEADER + section(1, b"\x01\x60\x01\x40\x00"), "value type 0x40"),
        (HEADER + section(1, b"\x01\x60\x00\x00\x00"), "section 1: 1 unexpected trailing bytes"),
        (HEADER + section(14, b""), "unknown section id 14"),
        (HEADER + section(3, b"\x00") + section(1, FUNC_VOID), "section 1 repeated or out of"),
        (HEADER + section(1, FUNC_VOID) + section(3, b"\x01\x00"), "1 functions declared but 0"),
        (HEADER + section(3, b"\x01\x00") + section(10, b"\x01\x02\x00\x0b"), "has no type 0"),
        (HEADER + section(2, b"\x01\x00\x00\x07\x00"), "unknown import kind 0x07"),
        (HEADER + section(3, b"\x80\x80\x80\x80\x80\x00"), "LEB128 longer than 32 bits"),
        (HEADER + section(3, b"\xff\xff\xff\xff\x7f"), "out of range for 32 bits"),
    ],
)
def test_malformed_input_is_refused_with_what_was_wrong(wasm: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        instrument(wasm)


def test_a_module_exporting_the_reset_already_is_refused() -> None:
    wasm = wat2wasm(f'(module (func (export "{RESET_EXPORT}") (result i32) i32.const 0))')
    with pytest.raises(ValueError, match=f"already exports {RESET_EXPORT}"):
        instrument(wasm)


@pytest.mark.parametrize("max_depth", [0, -1, 2**31 - 1])
def test_max_depth_must_fit_the_i32_compare(max_depth: int) -> None:
    with pytest.raises(ValueError, match="max_depth"):
        instrument(wat2wasm("(module)"), max_depth)


@pytest.mark.parametrize("value", [0, 1, 63, 64, 127, 128, 5000, 2**31 - 1, -1, -64, -65, -(2**31)])
def test_leb128_round_trips(value: int) -> None:
    assert Reader(s32(value), "s32").leb(32, signed=True) == value
    if value >= 0:
        assert Reader(u32(value), "u32").u32() == value
        assert Reader(u32(value + 2**31), "u32").u32() == value + 2**31
