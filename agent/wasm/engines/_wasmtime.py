"""The wasmtime engine adapter: the only module that imports `wasmtime`.

Deadlines use epoch interruption driven by one `Ticker` per engine; fuel uses
wasmtime's fuel metering; the memory cap uses store limits. Compiled code is cached by
serialization, keyed by module digest, wasmtime version and the engine settings that
change code generation.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import os
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import wasmtime
from wasmtime import _ffi as wt_ffi  # pinned (<51): the unchecked call path
from wasmtime._func import maybe_raise_last_exn

from agent import errors
from agent.wasm._api import (
    PAGE_SIZE,
    CompiledModule,
    HostFunction,
    Limits,
    ModuleInfo,
    WasiSpec,
)
from agent.wasm.engines._cache import CompileCache, cache_key
from agent.wasm.engines._memory import CachedMemory
from agent.wasm.engines._ticker import Ticker
from agent.wasm.rewrite import GUARD_VERSION, guarded

log = logging.getLogger(__name__)

_TICK_S = 0.002
"""Epoch tick: deadlines are enforced to within about two ticks."""

_UNLIMITED_FUEL = 2**62
_I32 = wasmtime.ValType.i32()


# Our own prototypes of two functions wasmtime-py also declares: with plain integer
# arguments and results they skip the pointer objects its declarations build per call.
_memory_data = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
    ("wasmtime_memory_data", wt_ffi.dll)
)
_memory_size = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p)(
    ("wasmtime_memory_data_size", wt_ffi.dll)
)
_func_call_unchecked = ctypes.CFUNCTYPE(
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
)(("wasmtime_func_call_unchecked", wt_ffi.dll))
_set_epoch_deadline = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64)(
    ("wasmtime_context_set_epoch_deadline", wt_ffi.dll)
)
_RESULT = struct.Struct("<I")


class _Memory(CachedMemory):
    """An instance's exported memory, valid inside and outside calls."""

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        super().__init__()
        self._keep = (store, memory)  # what the two addresses below point into
        self._context = ctypes.cast(store._context(), ctypes.c_void_p).value
        self._memory = ctypes.addressof(memory._memory)

    def _locate(self) -> tuple[int, int]:
        size = _memory_size(self._context, self._memory)
        return (_memory_data(self._context, self._memory) or 0), size


def _classify(name: str, err: Exception, deadline_ms: int | None) -> errors.ModuleError:
    """Turn a wasmtime trap into the agent's error for the same fault."""
    if isinstance(err, wasmtime.ExitTrap):
        return errors.ModuleExit(name, err.code)
    code = getattr(err, "trap_code", None)
    # The text is a backtrace followed by the cause; the cause is what to report.
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    message = lines[-1].removeprefix("wasm trap: ") if lines else type(err).__name__
    if code == wasmtime.TrapCode.INTERRUPT:
        return errors.ModuleTimeout(name, f"missed its deadline of {deadline_ms} ms")
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return errors.FuelExhausted(name, "used up its fuel")
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return errors.StackExhausted(name, "exhausted the call stack")
    return errors.ModuleTrap(name, f"trapped: {message}")


class _Export:
    """An exported i32-only function, called through wasmtime's unchecked entry point.

    `Func.__call__` converts every value through `Val` and costs about 25 us; with the
    signature checked once per compiled module (`_signature`) and the argument array,
    trap slot and addresses made once here, a call costs a few.
    """

    def __init__(
        self, module: str, name: str, func: wasmtime.Func, nparams: int, result: bool
    ) -> None:
        self._keep = func
        self._func = ctypes.addressof(func._func)
        self._nparams = nparams
        self._has_result = result
        self._layout = struct.Struct("<" + "I12x" * nparams)
        self._raw = ctypes.create_string_buffer(16 * max(nparams, 1))
        self._raw_at = ctypes.addressof(self._raw)
        self._trap = ctypes.c_void_p()
        self._trap_at = ctypes.addressof(self._trap)
        self._name = name
        self._module = module

    def call(self, context: int, args: tuple[int, ...]) -> int | None:
        if len(args) != self._nparams:
            raise errors.ModuleError(
                self._module, f"{self._name} takes {self._nparams} arguments, given {len(args)}"
            )
        self._layout.pack_into(self._raw, 0, *[arg & 0xFFFFFFFF for arg in args])
        self._trap.value = None
        error = _func_call_unchecked(
            context, self._func, self._raw_at, self._nparams or 1, self._trap_at
        )
        if self._trap.value:
            trap_obj = wasmtime.Trap._from_ptr(
                ctypes.cast(self._trap.value, ctypes.POINTER(wt_ffi.wasm_trap_t))
            )
            _raise_host_error()  # a host function's own exception comes first
            maybe_raise_last_exn()
            raise trap_obj
        if error:
            error_obj = wasmtime.WasmtimeError._from_ptr(
                ctypes.cast(error, ctypes.POINTER(wt_ffi.wasmtime_error_t))
            )
            _raise_host_error()
            maybe_raise_last_exn()
            raise error_obj
        return _RESULT.unpack_from(self._raw)[0] if self._has_result else None


class _Instance:
    def __init__(
        self,
        module: WasmtimeModule,
        store: wasmtime.Store,
        instance: wasmtime.Instance,
        limits: Limits,
        ticker: Ticker,
    ) -> None:
        self._module = module
        self._store: wasmtime.Store | None = store
        self._limits = limits
        self._ticker = ticker
        self._exports = exports = instance.exports(store)
        self._funcs: dict[str, _Export] = {}  # filled on first call: most are never called
        memory = exports.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            raise errors.InvalidModule(module.name, "exports no memory named 'memory'")
        self._memory = _Memory(store, memory)
        self._context = store._context()
        self._context_at: int = ctypes.cast(self._context, ctypes.c_void_p).value or 0
        deadline = limits.deadline_ms
        self._deadline_ticks = 2**62 if deadline is None else int(deadline / 1000 / _TICK_S) + 2
        store.set_fuel(_UNLIMITED_FUEL)

    @property
    def memory(self) -> _Memory:
        return self._memory

    def call(self, function: str, *args: int) -> int | None:
        if self._store is None:
            raise errors.ModuleError(self._module.name, "instance is closed")
        export = self._funcs.get(function)
        if export is None:
            func = self._exports.get(function)
            if not isinstance(func, wasmtime.Func):
                raise errors.InvalidModule(self._module.name, f"exports no function {function!r}")
            nparams, result = self._module.signature(function)
            export = _Export(self._module.name, function, func, nparams, result)
            self._funcs[function] = export
        if self._limits.fuel is not None:
            wt_ffi.wasmtime_context_set_fuel(self._context, self._limits.fuel)
        _set_epoch_deadline(self._context_at, self._deadline_ticks)
        self._ticker.enter()
        try:
            return export.call(self._context_at, args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as err:
            raise _classify(self._module.name, err, self._limits.deadline_ms) from err
        finally:
            self._ticker.leave()
            self._memory.changed()

    def close(self) -> None:
        self._store = None
        self._funcs.clear()


class WasmtimeModule:
    """A compiled module, shared by all its instances."""

    def __init__(self, engine: WasmtimeEngine, module: wasmtime.Module, name: str) -> None:
        self._engine = engine
        self._module: wasmtime.Module | None = module
        self._name = name
        imports = frozenset((imp.module, imp.name or "") for imp in module.imports)
        exports = [(e.name, e.type) for e in module.exports]
        self._types = {n: t for n, t in exports if isinstance(t, wasmtime.FuncType)}
        self._info = ModuleInfo(imports, frozenset(self._types))
        self._signatures: dict[str, tuple[int, bool]] = {}

    def signature(self, function: str) -> tuple[int, bool]:
        """(parameter count, has a result) of an export, checked once: i32 only."""
        known = self._signatures.get(function)
        if known is not None:
            return known
        ftype = self._types[function]
        params, results = list(ftype.params), list(ftype.results)
        if any(t != _I32 for t in (*params, *results)) or len(results) > 1:
            raise errors.InvalidModule(
                self._name,
                f"export {function!r} has type {params} -> {results}; the ABI passes i32 only",
            )
        signature = self._signatures[function] = (len(params), bool(results))
        return signature

    @property
    def name(self) -> str:
        return self._name

    @property
    def info(self) -> ModuleInfo:
        return self._info

    def instantiate(
        self, host: Sequence[HostFunction], wasi: WasiSpec, limits: Limits
    ) -> _Instance:
        if self._module is None:
            raise errors.ModuleError(self._name, "module is closed")
        engine = self._engine.wasmtime_engine
        store = wasmtime.Store(engine)
        store.set_limits(memory_size=limits.memory_pages * PAGE_SIZE)
        store.set_wasi(_wasi_config(self._name, wasi))
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        binding = _Binding(self._name)
        for fn in host:
            _define(linker, fn, binding)
        try:
            instance = linker.instantiate(store, self._module)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as err:
            _raise_host_error()
            raise _instantiation_error(self._name, err, limits) from err
        created = _Instance(self, store, instance, limits, self._engine.ticker)
        binding.memory = weakref.ref(created.memory)
        return created

    def close(self) -> None:
        self._module = None


def _instantiation_error(name: str, err: Exception, limits: Limits) -> errors.ModuleError:
    text = str(err)
    if "unknown import" in text:
        return errors.MissingImport(name, text.splitlines()[0])
    if "memory" in text and ("limit" in text or "minimum" in text):
        return errors.MemoryLimitExceeded(
            name, f"needs more memory than its cap of {limits.memory_pages} pages"
        )
    return _classify(name, err, limits.deadline_ms)


class _Binding:
    """What one instance's host functions see: its memory, set once it exists.

    A weak reference: the registry below must not keep the store alive, since only
    the store's end runs the finalizer that removes the registry entry.
    """

    def __init__(self, module: str) -> None:
        self.module = module
        self.memory: Callable[[], _Memory | None] = _no_memory


def _no_memory() -> _Memory | None:
    return None


_HOST_FUNCTIONS: dict[int, tuple[HostFunction, _Binding, struct.Struct]] = {}
_host_ids = itertools.count(1)
_host_error = threading.local()  # module threads call concurrently


def _define(linker: wasmtime.Linker, fn: HostFunction, binding: _Binding) -> None:
    """Define `fn` through the unchecked C entry point with our own trampoline.

    wasmtime-py's `define_func` converts every value through `Val` and looks the
    memory up by name on each call: about half of a reading's cost with `edge.emit`.
    """
    key = next(_host_ids)
    # The i32 parameters, unsigned, in an array of 16-byte `wasmtime_val_raw_t`.
    _HOST_FUNCTIONS[key] = (fn, binding, struct.Struct("<" + "I12x" * fn.params))
    ftype = wasmtime.FuncType([_I32] * fn.params, [_I32] if fn.returns_value else [])
    module, name = fn.module.encode(), fn.name.encode()
    error = wt_ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), module, len(module), name, len(name), ftype.ptr(), _TRAMPOLINE, key, _forget
    )
    if error:
        del _HOST_FUNCTIONS[key]
        raise wasmtime.WasmtimeError._from_ptr(error)


_HostCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t
)


@_HostCallback  # type: ignore[untyped-decorator]
def _trampoline(env: int | None, _caller: int | None, values: int, _count: int) -> int:
    # Plain integers in, one read of all arguments: ctypes pointer and union objects
    # per argument cost more than a small host function's whole body.
    try:
        fn, binding, layout = _HOST_FUNCTIONS[env or 0]
        memory = binding.memory()
        if memory is None:
            raise errors.InvalidModule(
                binding.module, f"called {fn.module}.{fn.name} before instantiation finished"
            )
        memory.changed()
        result = fn.func(memory, *layout.unpack(ctypes.string_at(values, layout.size)))
    except BaseException as err:
        _host_error.value = err
        trap = wasmtime.Trap("host function raised")._consume()
        return ctypes.cast(trap, ctypes.c_void_p).value or 0
    if fn.returns_value:
        ctypes.memmove(values, _RESULT.pack(int(result or 0) & 0xFFFFFFFF), 4)
    return 0


_TRAMPOLINE = ctypes.cast(_trampoline, wt_ffi.wasmtime_func_unchecked_callback_t)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # type: ignore[untyped-decorator]
def _forget(env: int | None) -> None:
    _HOST_FUNCTIONS.pop(env or 0, None)


def _raise_host_error() -> None:
    err = getattr(_host_error, "value", None)
    if err is not None:
        _host_error.value = None
        raise err


def _wasi_config(name: str, spec: WasiSpec) -> wasmtime.WasiConfig:
    config = wasmtime.WasiConfig()
    config.argv = [name, *spec.args]
    config.env = [list(pair) for pair in spec.env]
    for d in spec.dirs:
        config.preopen_dir(str(d.host), d.guest, fs_mutable=d.writable)
    if spec.stdin:
        # wasmtime reads stdin from a file it opens now; the name can go at once.
        fd, path = tempfile.mkstemp(prefix="edge-stdin-")
        try:
            os.write(fd, spec.stdin)
            config.stdin_file = path
        finally:
            os.close(fd)
            os.unlink(path)
    sink = spec.output
    if sink is not None:
        config.stdout_custom = lambda data: sink("stdout", data)
        config.stderr_custom = lambda data: sink("stderr", data)
    return config


class WasmtimeEngine:
    """wasmtime with Cranelift, fuel metering and epoch deadlines."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.cranelift_opt_level = "speed"
        self.wasmtime_engine = wasmtime.Engine(config)
        self._settings = "fuel=1,epoch=1,opt=speed"
        self._cache = CompileCache(cache_dir) if cache_dir else None
        self._version = wasmtime_version()
        self.ticker = Ticker("wasmtime-epoch", _TICK_S, self.wasmtime_engine.increment_epoch)

    @property
    def name(self) -> str:
        return "wasmtime"

    @property
    def version(self) -> str:
        return self._version

    @property
    def mode(self) -> str:
        return "cranelift"

    def compile(self, wasm: bytes, name: str) -> CompiledModule:
        digest = hashlib.sha256(wasm).hexdigest()
        key = cache_key(digest, "wasmtime", self.version, self._settings, GUARD_VERSION)
        path = self._cache.verified_path(key) if self._cache is not None else None
        if path is not None:
            try:
                module = wasmtime.Module.deserialize_file(self.wasmtime_engine, str(path))
                return WasmtimeModule(self, module, name)
            except wasmtime.WasmtimeError as err:
                log.warning("compiled cache entry %s is unusable (%s); recompiling", path, err)
        try:
            module = wasmtime.Module(self.wasmtime_engine, guarded(wasm, name))
        except wasmtime.WasmtimeError as err:
            reason = str(err).splitlines()[0]
            raise errors.InvalidModule(
                name, f"is not a valid WebAssembly module: {reason}"
            ) from err
        if self._cache is not None:
            self._cache.put(key, bytes(module.serialize()))
        return WasmtimeModule(self, module, name)

    def close(self) -> None:
        self.ticker.close()


def wasmtime_version() -> str:
    from importlib.metadata import version  # noqa: PLC0415 - only needed for reports

    return version("wasmtime")
