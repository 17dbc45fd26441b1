"""Stop checks in loops: every loop gets one, nothing else changes, and setting the flag
stops a running loop. Run on wasmtime with the proposals the checks use; WasmEdge runs
the same rewrite through the conformance suite (`test_engines.py`) where it is present."""

from __future__ import annotations

import threading
import time

import pytest
import wasmtime

from agent.errors import InvalidModule
from agent.wasm.rewrite._binary import u32
from agent.wasm.rewrite._stackguard import guarded, instrument
from agent.wasm.rewrite._stopcheck import STOP_EXPORT, Uncheckable, checked_body, stop_check

from .conftest import DIST

pytestmark = pytest.mark.arm64

CONFIG = wasmtime.Config()
CONFIG.wasm_multi_memory = True  # what the checks need beyond wasmtime's defaults
CONFIG.wasm_threads = True
ENGINE = wasmtime.Engine(CONFIG)

# Loops among instructions of every immediate kind the decoder reads. In `threes` every
# immediate holds a byte 0x03, the opcode of `loop`: a misread immediate shows up as a
# check too many, or a module that no longer validates.
MIXED = """(module
  (type $pair (func (param i32 i32) (result i32)))
  (type $t1 (func))
  (type $t2 (func (result i32)))
  (type $three (func (param i32 i32) (result i32)))
  (memory 1)
  (table 4 funcref)
  (table $t1 1 funcref)
  (table $t2 1 funcref)
  (table $t3 4 funcref)
  (elem (i32.const 0) $add $add $add $add)
  (elem (table $t3) (i32.const 0) func $add $add $add $add)
  (global $g (mut i64) (i64.const -5))
  (global $g1 i32 (i32.const 1))
  (global $g2 i32 (i32.const 2))
  (global $g3 i32 (i32.const 3))
  (func $add (type $pair) (i32.add (local.get 0) (local.get 1)))
  (func (export "mixed") (param $n i32) (result i32)
    (local $i i32) (local $acc i32) (local $v v128)
    (memory.fill (i32.const 0) (i32.const 7) (i32.const 64))
    (memory.copy (i32.const 64) (i32.const 0) (i32.const 64))
    (local.set $v (v128.const i32x4 1 2 3 4))
    (block $out (result i32)
      (loop $l (param) (result)
        (local.set $acc (i32.add (local.get $acc)
          (call_indirect (type $pair) (local.get $i) (i32.const 3) (i32.const 1))))
        (local.set $acc (i32.add (local.get $acc) (i32x4.extract_lane 2
          (i32x4.add (local.get $v) (v128.load offset=64 (i32.const 0))))))
        (local.set $acc (i32.add (local.get $acc) (i32.atomic.load (i32.const 8))))
        (i64.store (i32.const 16) (global.get $g))
        (local.set $acc (select (result i32) (local.get $acc) (i32.const 0) (i32.const 1)))
        (block $a (block $b (block $c
          (br_table $a $b $c (i32.and (local.get $i) (i32.const 3))))
          (local.set $acc (i32.sub (local.get $acc) (i32.const 1))))
          (local.set $acc (i32.xor (local.get $acc) (i32.const 0x7fffffff))))
        (drop (f64.const 2.5))
        (drop (f32.const -1.5))
        (drop (ref.is_null (ref.null func)))
        (drop (i64.trunc_sat_f64_s (f64.const 1e30)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
      (local.get $acc)))
  (func (export "nested") (param $n i32) (result i32)
    (local $i i32) (local $j i32) (local $sum i32)
    (loop $outer
      (local.set $j (i32.const 0))
      (loop $inner
        (local.set $sum (i32.add (local.get $sum) (i32.mul (local.get $i) (local.get $j))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br_if $inner (i32.lt_u (local.get $j) (local.get $n))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $outer (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $sum))
  (func (export "spin")
    (loop $forever (br $forever)))
  (func (export "threes") (param $x i32) (result i32)
    (local $a i32) (local $b i32) (local $c i32)
    (local.set $c (i32.add (local.get 3) (global.get 3)))
    (local.set $c (i32.add (local.get $c) (i32.load8_u offset=3 (i32.const 0))))
    (local.set $c (i32.add (local.get $c) (i32.atomic.load offset=3 (i32.const 1))))
    (local.set $c (i32.add (local.get $c) (i32x4.extract_lane 3
      (i8x16.shuffle 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3
        (v128.const i32x4 3 3 3 3) (v128.load offset=3 (i32.const 0))))))
    (local.set $c (i32.add (local.get $c) (i32.wrap_i64 (i64.const 3))))
    (local.set $c (i32.add (local.get $c) (i32.trunc_f32_s (f32.const 0x3p-149))))
    (local.set $c (i32.add (local.get $c) (i32.trunc_f64_s (f64.const 0x3p-1074))))
    (local.set $c (i32.add (local.get $c)
      (call_indirect $t3 (type $three) (i32.const 3) (local.get $x) (i32.const 3))))
    (block $l0 (block $l1 (block $l2 (block $l3
      (br_table $l3 $l3 $l3 $l0 (local.get $x)))
      (local.set $c (i32.add (local.get $c) (i32.const 3))))))
    (local.get $c))
)"""


def instance(wasm: bytes) -> tuple[wasmtime.Store, wasmtime.Instance]:
    wasmtime.Module.validate(ENGINE, wasm)
    store = wasmtime.Store(ENGINE)
    return store, wasmtime.Instance(store, wasmtime.Module(ENGINE, wasm), [])


def call(store: wasmtime.Store, inst: wasmtime.Instance, name: str, *args: int) -> object:
    func = inst.exports(store)[name]
    assert isinstance(func, wasmtime.Func)
    return func(store, *args)


def test_checked_modules_compute_what_they_did() -> None:
    wasm = bytes(wasmtime.wat2wasm(MIXED))
    plain = instance(wasm)
    checked = instance(instrument(wasm, stop_checks=True))
    calls = [("mixed", 1), ("mixed", 37), ("nested", 0), ("nested", 12), ("threes", 0)]
    for name, n in [*calls, ("threes", 3)]:
        assert call(*checked, name, n) == call(*plain, name, n), (name, n)


def test_every_loop_gets_one_check_and_nothing_else_does() -> None:
    wasm = bytes(wasmtime.wat2wasm(MIXED))
    checked = instrument(wasm, stop_checks=True)
    assert checked.count(stop_check(1)) == 4  # mixed, the two nested, spin
    assert instrument(wasm).count(stop_check(1)) == 0
    for module in sorted(DIST.glob("*.wasm")):
        out = instrument(module.read_bytes(), stop_checks=True)
        wasmtime.Module.validate(ENGINE, out)
        assert out.count(b"\xfe\x10\x42") > 10, module.name  # C code is full of loops


def test_setting_the_flag_stops_a_running_loop() -> None:
    store, inst = instance(instrument(bytes(wasmtime.wat2wasm(MIXED)), stop_checks=True))
    flag = inst.exports(store)[STOP_EXPORT]
    assert isinstance(flag, wasmtime.Memory)

    def stop_later() -> None:
        time.sleep(0.05)
        flag.write(store, b"\1\0\0\0", 0)

    threading.Thread(target=stop_later).start()
    started = time.monotonic()
    with pytest.raises(wasmtime.Trap, match="unreachable"):
        call(store, inst, "spin")
    assert time.monotonic() - started < 5
    flag.write(store, b"\0\0\0\0", 0)
    assert call(store, inst, "nested", 3) == 9  # cleared, the instance goes on


def test_modules_our_checks_could_not_stop_are_named() -> None:
    waits = bytes(
        wasmtime.wat2wasm(
            """(module (memory 1 1 shared)
              (func (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"""
        )
    )
    with pytest.raises(Uncheckable, match=r"memory\.atomic\.wait"):
        instrument(waits, stop_checks=True)
    no_memory = bytes(wasmtime.wat2wasm("(module (func (loop $l (br $l))))"))
    with pytest.raises(Uncheckable, match="no memory of its own"):
        instrument(no_memory, stop_checks=True)


def test_unknown_instructions_are_named_not_guessed() -> None:
    gc_opcode = b"\x00" + b"\xfb\x01\x00" + b"\x0b"  # no locals; a GC prefix opcode
    with pytest.raises(Uncheckable, match="0xfb"):
        checked_body(u32(len(gc_opcode)) + gc_opcode, stop_check(0))
    bad_simd = b"\x00" + b"\xfd" + u32(0x200) + b"\x0b"
    with pytest.raises(Uncheckable, match="0xfd 512"):
        checked_body(u32(len(bad_simd)) + bad_simd, stop_check(0))


def test_a_module_that_claims_our_export_is_refused() -> None:
    wasm = bytes(wasmtime.wat2wasm(f'(module (memory (export "{STOP_EXPORT}") 1))'))
    with pytest.raises(InvalidModule, match=f"already exports {STOP_EXPORT}"):
        guarded(wasm, "m", stop_checks=True)
