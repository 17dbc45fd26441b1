"""The ctypes binding against the real libwasmedge: layouts, values, results, callbacks."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import pytest
import wasmtime

from agent import errors
from agent.errors import EngineUnavailable
from agent.wasm import HostFunction, Limits, WasiSpec
from agent.wasm.engines.wasmedge import WasmEdgeEngine, _ffi, _handles, find_library

from .conftest import wasmedge_missing

pytestmark = [
    pytest.mark.wasmedge,
    pytest.mark.skipif(wasmedge_missing() is not None, reason=str(wasmedge_missing())),
]

ADDER = bytes(
    wasmtime.wat2wasm(
        """(module
          (import "host" "twice" (func $twice (param i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
          (func (export "via_host") (param i32) (result i32) local.get 0 call $twice)
          (func (export "spin") (loop $l br $l)))"""
    )
)


@pytest.fixture
def engine() -> WasmEdgeEngine:
    return WasmEdgeEngine(find_library(), aot=False)


def twice(_memory: object, x: int) -> int:
    return 2 * x


def test_struct_layouts_match_the_c_api() -> None:
    assert ctypes.sizeof(_ffi.String) == 16
    assert ctypes.sizeof(_ffi.Bytes) == 16
    assert ctypes.sizeof(_ffi.ValType) == 8
    assert ctypes.sizeof(_ffi.Value) == 32
    assert _ffi.Value.Type.offset == 16
    assert bytes(_ffi.i32_type().Data) == bytes([0, 0, 0x7F, 0x40, 0, 0, 0, 0])


def test_version_is_read_from_the_library(engine: WasmEdgeEngine) -> None:
    v = engine.lib.version
    assert _ffi.SUPPORTED[0] <= (v.major, v.minor) <= _ffi.SUPPORTED[1]
    assert engine.lib.cdll.WasmEdge_VersionGet().decode().startswith(str(v))


def test_i32_values_cross_both_ways_as_unsigned_bits(engine: WasmEdgeEngine) -> None:
    inst = engine.compile(ADDER, "adder").instantiate(
        [HostFunction("host", "twice", 1, True, twice)], WasiSpec(), Limits()
    )
    assert inst.call("add", 0xFFFFFFFF, 1) == 0
    assert inst.call("add", 0x7FFFFFFF, 1) == 0x80000000
    assert inst.call("via_host", 0x40000000) == 0x80000000
    inst.close()


def test_result_codes_become_typed_errors(engine: WasmEdgeEngine) -> None:
    assert engine.lib.message(_ffi.COST_LIMIT_EXCEEDED) == "cost limit exceeded"
    inst = engine.compile(ADDER, "adder").instantiate(
        [HostFunction("host", "twice", 1, True, twice)],
        WasiSpec(),
        Limits(deadline_ms=None, fuel=1000),
    )
    with pytest.raises(errors.FuelExhausted):
        inst.call("spin")
    with pytest.raises(errors.InvalidModule, match="exports no function 'nope'"):
        inst.call("nope")
    assert inst.call("add", 1, 2) == 3  # the VM is still usable after a fault
    inst.close()


def test_a_host_exception_is_reraised_after_the_call(engine: WasmEdgeEngine) -> None:
    class Boom(Exception):
        pass

    def explode(_memory: object, x: int) -> int:
        raise Boom(f"host refused {x}")

    inst = engine.compile(ADDER, "adder").instantiate(
        [HostFunction("host", "twice", 1, True, explode)], WasiSpec(), Limits()
    )
    with pytest.raises(Boom, match="host refused 5"):
        inst.call("via_host", 5)
    assert inst.call("add", 2, 2) == 4
    inst.close()


def test_a_stop_token_left_after_a_finished_call_is_cleared(engine: WasmEdgeEngine) -> None:
    """The watchdog may stop a VM just as its call ends; the next call must not pay."""
    inst = engine.compile(ADDER, "adder").instantiate(
        [HostFunction("host", "twice", 1, True, twice)], WasiSpec(), Limits()
    )
    inst._stop()  # what a late watchdog does
    with pytest.raises(errors.ModuleTimeout):
        inst.call("add", 1, 1)  # the pitfall itself: a stale token fails a call
    inst._stop()
    inst._clear_stop()
    assert inst.call("add", 1, 1) == 2
    inst.close()


def test_use_after_close_is_refused(engine: WasmEdgeEngine) -> None:
    conf = _handles.Configure(engine.lib)
    conf.close()
    conf.close()  # idempotent
    with pytest.raises(_handles.ClosedHandle):
        _ = conf.ptr
    inst = engine.compile(ADDER, "adder").instantiate(
        [HostFunction("host", "twice", 1, True, twice)], WasiSpec(), Limits()
    )
    inst.close()
    with pytest.raises(_handles.ClosedHandle):
        inst.call("add", 1, 1)


def test_instances_do_not_leak_descriptors(engine: WasmEdgeEngine) -> None:
    compiled = engine.compile(ADDER, "adder")
    host = [HostFunction("host", "twice", 1, True, twice)]
    compiled.instantiate(host, WasiSpec(), Limits()).close()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        compiled.instantiate(host, WasiSpec(stdin=b"x\n"), Limits()).close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_library_that_is_not_wasmedge_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="cannot load"):
        _ffi.Library(tmp_path / "absent.so")
    libm = Path(ctypes.util.find_library("m") or "libm.so.6")
    with pytest.raises(EngineUnavailable, match="is not libwasmedge"):
        _ffi.Library(libm)


def test_find_library_prefers_the_operators_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    given = tmp_path / "libwasmedge.so"
    given.write_bytes(b"")
    monkeypatch.setenv("WASMEDGE_LIB", "/nonexistent/libwasmedge.so")
    assert find_library(given) == given
    assert _ffi.candidates()[0] == Path("/nonexistent/libwasmedge.so")


@pytest.mark.parametrize("gc", [False, True], ids=["own-checks", "unknown-instruction"])
def test_aot_deadlines_hold_with_our_checks_and_without(gc: bool, tmp_path: Path) -> None:
    """AOT code carries our stop checks where the rewrite knows every instruction, and
    keeps WasmEdge's interruptible code where it does not (here, `ref.i31` from GC)."""
    extra = "(drop (ref.i31 (i32.const 1)))" if gc else ""
    wasm = wasmtime.wat2wasm(
        f"""(module
          (memory (export "memory") 1)
          (func (export "spin") {extra} (loop $l br $l)))"""
    )
    for _ in range(2):  # compiled, then from the compiled cache, which knows which it is
        aot = WasmEdgeEngine(find_library(), cache_dir=tmp_path, aot=True)
        if aot.mode != "aot":
            pytest.skip("this libwasmedge has no AOT compiler")
        own_checks = (aot.lib.version.major, aot.lib.version.minor) >= (0, 17) and not gc
        compiled = aot.compile(bytes(wasm), "spinner")
        inst = compiled.instantiate((), WasiSpec(), Limits(deadline_ms=50))
        assert (inst._flag is not None) is own_checks
        with pytest.raises(errors.ModuleTimeout, match="deadline of 50 ms"):
            inst.call("spin")
        inst.close()
        compiled.close()
        aot.close()
    assert len(list(tmp_path.glob("*.bin"))) == 1


def test_an_overrun_call_that_fails_otherwise_keeps_its_own_error(tmp_path: Path) -> None:
    """The watchdog fires during a slow host call; the guest then exits. That is an
    exit, not a missed deadline: only our stop check's trap becomes a timeout."""
    aot = WasmEdgeEngine(find_library(), cache_dir=tmp_path, aot=True)
    wasm = wasmtime.wat2wasm(
        """(module
          (import "host" "slow" (func $slow))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func (export "run") (call $slow) (call $exit (i32.const 3))))"""
    )

    def slow(_memory: object) -> None:
        time.sleep(0.15)

    compiled = aot.compile(bytes(wasm), "exiter")
    inst = compiled.instantiate(
        [HostFunction("host", "slow", 0, False, slow)], WasiSpec(), Limits(deadline_ms=50)
    )
    with pytest.raises(errors.ModuleExit) as caught:
        inst.call("run")
    assert caught.value.code == 3
    inst.close()
    compiled.close()
    aot.close()
