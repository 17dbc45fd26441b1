"""The WasmEdge engine adapter, on our own ctypes binding.

A compiled module is a parsed and validated AST (with native code when AOT-compiled),
shared by its instances; each instance is a VM of its own, so its memory cap, WASI
context and statistics are its own. Fuel is WasmEdge's cost limit, cleared before
each call. WasmEdge's result codes become the agent's errors in `_call_error` (and
`_instantiation_error` while linking), and only there.

Deadlines: `VMAsyncExecute` starts a thread per call (about 45 us), more than a whole
AOT-compiled call. Calls therefore run synchronously, and a watchdog stops an overrunning
VM. AOT code from WasmEdge 0.17 carries stop checks of our own in its loops
(`_stopcheck`), and the watchdog sets their flag. Elsewhere (older WasmEdge, the
interpreter, a module the rewrite does not know) it cancels a `WasmEdge_Async` of the
VM, which sets the VM's stop token that interruptible code checks at every block and
loop, five times the cost. That handle is made the first time one of the instance's
calls overruns (its thread would cost more than the rest of an instance start), while
that call holds the VM: both only share its lock.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from agent import errors
from agent.wasm._api import (
    CompiledModule,
    HostFunction,
    Limits,
    ModuleInfo,
    WasiSpec,
)
from agent.wasm.engines._cache import CompileCache, cache_key
from agent.wasm.engines._ticker import Ticker
from agent.wasm.engines.wasmedge import _ffi, _handles
from agent.wasm.engines.wasmedge._callbacks import (
    ErrorSlot,
    FrameMemory,
    bind,
    register,
    unregister,
)
from agent.wasm.rewrite import GUARD_VERSION, STOP_EXPORT, Uncheckable, guarded, memory_minimum

log = logging.getLogger(__name__)

_VALUE_SIZE = ctypes.sizeof(_ffi.Value)
_THREADS_PROPOSAL = {(0, 17): 16}
"""`WasmEdge_Proposal_Threads` (our stop checks load atomically) by release, as the enum
is renumbered between releases; elsewhere AOT code keeps WasmEdge's own checks."""
_INTERNAL = "edge_agent_internal"
"""A host module of our own in every VM; its `nop` clears a stop token left behind."""


def _nop(_memory: object) -> None:
    """The body of `edge_agent_internal.nop`; entering it consumes a stale stop token."""


class _Watchdog:
    """Stops VMs whose synchronous call runs past its deadline."""

    def __init__(self) -> None:
        self._calls: dict[int, list[Any]] = {}
        self._lock = threading.Lock()
        self._ticker = Ticker("wasmedge-deadline", 0.002, self._check)

    def start(self, key: int, deadline_ms: int, stop: Callable[[], None]) -> None:
        with self._lock:
            self._calls[key] = [time.monotonic() + deadline_ms / 1000, stop, False]
        self._ticker.enter()

    def finish(self, key: int) -> bool:
        """End the watch; True when the watchdog stopped the VM."""
        with self._lock:
            fired = bool(self._calls.pop(key)[2])
        self._ticker.leave()
        return fired

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            for call in self._calls.values():
                if not call[2] and now >= call[0]:
                    call[2] = True
                    call[1]()

    def close(self) -> None:
        self._ticker.close()


class WasmEdgeEngine:
    """WasmEdge through libwasmedge: AOT where the library has the compiler."""

    def __init__(self, path: Path, *, cache_dir: Path | None = None, aot: bool = True) -> None:
        self.lib = _ffi.load(path)
        self._aot = aot and self.lib.has_compiler
        version = (self.lib.version.major, self.lib.version.minor)
        self._threads = _THREADS_PROPOSAL.get(version) if self._aot else None
        self._cache = CompileCache(cache_dir) if cache_dir else None
        self.watchdog = _Watchdog()

    @property
    def name(self) -> str:
        return "wasmedge"

    @property
    def version(self) -> str:
        return str(self.lib.version)

    @property
    def mode(self) -> str:
        return "aot" if self._aot else "interpreter"

    def configure(
        self, limits: Limits | None = None, *, metered: bool = False, stop_checked: bool = False
    ) -> _handles.Configure:
        """A configure context for this engine's mode, with the instance's limits.

        Cost measuring (fuel) slows AOT code about twofold, so it is on only for
        instances with a fuel limit; AOT code for them is compiled with metering.
        Code with our own stop checks needs atomics and no interruptible code.
        """
        conf = _handles.Configure(self.lib)
        c = self.lib.cdll
        c.WasmEdge_ConfigureAddHostRegistration(conf.ptr, _ffi.HOST_REG_WASI)
        if metered:
            c.WasmEdge_ConfigureStatisticsSetInstructionCounting(conf.ptr, True)
            c.WasmEdge_ConfigureStatisticsSetCostMeasuring(conf.ptr, True)
        if self._aot:
            c.WasmEdge_ConfigureCompilerSetOptimizationLevel(conf.ptr, _ffi.OPT_O2)
            c.WasmEdge_ConfigureCompilerSetOutputFormat(conf.ptr, _ffi.OUTPUT_FORMAT_WASM)
            c.WasmEdge_ConfigureCompilerSetInterruptible(conf.ptr, not stop_checked)
            if "WasmEdge_ConfigureSetRunMode" in self.lib.optional:
                c.WasmEdge_ConfigureSetRunMode(conf.ptr, _ffi.RUN_MODE_AOT)
        else:
            c.WasmEdge_ConfigureSetForceInterpreter(conf.ptr, True)
        if stop_checked and self._threads is not None:
            c.WasmEdge_ConfigureAddProposal(conf.ptr, self._threads)
        if limits is not None:
            c.WasmEdge_ConfigureSetMaxMemoryPage(conf.ptr, limits.memory_pages)
        return conf

    def compile(self, wasm: bytes, name: str) -> CompiledModule:
        return WasmEdgeModule(self, wasm, self.load(wasm, name, metered=False), name)

    def load(self, wasm: bytes, name: str, *, metered: bool) -> Loaded:
        """A parsed, validated AST: AOT-compiled (and metered, if asked) where we can."""
        if self._aot:
            code, stop_checked = self._aot_compile(wasm, name, metered)
        else:
            code, stop_checked = guarded(wasm, name), False
        ast = self._parse(code, name, metered, stop_checked)
        try:
            with (
                self.configure(metered=metered, stop_checked=stop_checked) as conf,
                _handles.Validator(self.lib, conf) as validator,
            ):
                result = self.lib.cdll.WasmEdge_ValidatorValidate(validator.ptr, ast.ptr)
            if result:
                raise errors.InvalidModule(
                    name, f"is not a valid WebAssembly module: {self.lib.message(result)}"
                )
        except BaseException:
            ast.close()
            raise
        return Loaded(ast, stop_checked)

    def _parse(
        self, code: bytes, name: str, metered: bool, stop_checked: bool
    ) -> _handles.ASTModule:
        out = ctypes.c_void_p()
        data, keep = _ffi.bytes_of(code)
        with (
            self.configure(metered=metered, stop_checked=stop_checked) as conf,
            _handles.Loader(self.lib, conf) as loader,
        ):
            result = self.lib.cdll.WasmEdge_LoaderParseFromBytes(
                loader.ptr, ctypes.byref(out), data
            )
        del keep
        if result or not out.value:
            raise errors.InvalidModule(
                name, f"is not a valid WebAssembly module: {self.lib.message(result)}"
            )
        return _handles.ASTModule(self.lib, out.value)

    def _aot_compile(self, wasm: bytes, name: str, metered: bool) -> tuple[bytes, bool]:
        """The module with native code in a custom section, from the cache if there, and
        whether its loops carry our stop checks."""
        digest = hashlib.sha256(wasm).hexdigest()
        # Where our checks are possible, a module without them is one they cannot
        # stop: its own flavour, so code cached before they existed is not reused.
        flavours = (
            {True: "aot-O2-stop-checks", False: "aot-O2-interruptible-uncheckable"}
            if self._threads is not None
            else {False: "aot-O2-interruptible"}
        )
        keys = {
            checked: cache_key(
                digest,
                "wasmedge",
                self.version,
                flavour + ("-metered" if metered else ""),
                GUARD_VERSION,
            )
            for checked, flavour in flavours.items()
        }
        if self._cache is not None:
            for checked, key in keys.items():
                cached = self._cache.get(key)
                if cached is not None:
                    return cached, checked
        code, stop_checked = self._instrumented(wasm, name)
        # Compiling also validates; a malformed module fails here with the loader's word.
        with tempfile.TemporaryDirectory(prefix="edge-aot-") as tmp:
            out = Path(tmp) / "module.wasm"
            data, keep = _ffi.bytes_of(code)
            with (
                self.configure(metered=metered, stop_checked=stop_checked) as conf,
                _handles.Compiler(self.lib, conf) as compiler,
            ):
                result = self.lib.cdll.WasmEdge_CompilerCompileFromBytes(
                    compiler.ptr, data, str(out).encode()
                )
            del keep
            if result:
                raise errors.InvalidModule(
                    name, f"is not a valid WebAssembly module: {self.lib.message(result)}"
                )
            artifact = out.read_bytes()
        if self._cache is not None:
            self._cache.put(keys[stop_checked], artifact)
        return artifact, stop_checked

    def _instrumented(self, wasm: bytes, name: str) -> tuple[bytes, bool]:
        """The module as it is compiled: guarded, with our stop checks where we can."""
        if self._threads is None:
            return guarded(wasm, name), False
        try:
            return guarded(wasm, name, stop_checks=True), True
        except Uncheckable as err:
            log.info(
                "module %s: %s; its deadline uses WasmEdge's interruptible code (slower)",
                name,
                err,
            )
            return guarded(wasm, name), False

    def close(self) -> None:
        """Stop the watchdog; the library stays loaded, as a process cannot unload it safely."""
        self.watchdog.close()


class Loaded(NamedTuple):
    """A validated AST, and whether its loops carry our stop checks."""

    ast: _handles.ASTModule
    stop_checked: bool


class WasmEdgeModule:
    """A validated AST module; instances load it into VMs of their own."""

    def __init__(self, engine: WasmEdgeEngine, wasm: bytes, loaded: Loaded, name: str) -> None:
        self._engine = engine
        self._wasm = wasm
        self._min_pages = memory_minimum(wasm)
        self._asts = {False: loaded}  # keyed by `metered`; the metered one made on demand
        self._name = name
        self._info, self._signatures = _describe(engine.lib, loaded.ast)

    @property
    def name(self) -> str:
        return self._name

    @property
    def info(self) -> ModuleInfo:
        return self._info

    def instantiate(
        self, host: Sequence[HostFunction], wasi: WasiSpec, limits: Limits
    ) -> _Instance:
        if self._min_pages > limits.memory_pages:
            # WasmEdge would shrink the declared minimum to the cap and run anyway.
            raise errors.MemoryLimitExceeded(
                self._name, f"needs more memory than its cap of {limits.memory_pages} pages"
            )
        # Only AOT code differs when metered; the interpreter meters through its VM config.
        metered = limits.fuel is not None and self._engine.mode == "aot"
        loaded = self._asts.get(metered)
        if loaded is None:
            loaded = self._engine.load(self._wasm, self._name, metered=metered)
            self._asts[metered] = loaded
        return _Instance(self._engine, self, loaded, host, wasi, limits, self._signatures)

    def close(self) -> None:
        for loaded in self._asts.values():
            loaded.ast.close()
        self._asts = {}


def _describe(
    lib: _ffi.Library, ast: _handles.ASTModule
) -> tuple[ModuleInfo, dict[str, tuple[int, int]]]:
    """Imports, exports and each exported function's (parameter, result) counts."""
    c = lib.cdll
    n = c.WasmEdge_ASTModuleListImportsLength(ast.ptr)
    items = (ctypes.c_void_p * max(n, 1))()
    c.WasmEdge_ASTModuleListImports(ast.ptr, items, n)
    imports = frozenset(
        (
            _ffi.read_string(c.WasmEdge_ImportTypeGetModuleName(items[i])),
            _ffi.read_string(c.WasmEdge_ImportTypeGetExternalName(items[i])),
        )
        for i in range(n)
    )
    n = c.WasmEdge_ASTModuleListExportsLength(ast.ptr)
    items = (ctypes.c_void_p * max(n, 1))()
    c.WasmEdge_ASTModuleListExports(ast.ptr, items, n)
    signatures: dict[str, tuple[int, int]] = {}
    for i in range(n):
        kind = c.WasmEdge_ExportTypeGetExternalType(items[i])
        export = _ffi.read_string(c.WasmEdge_ExportTypeGetExternalName(items[i]))
        if kind == _ffi.EXTERNAL_FUNCTION:
            ftype = c.WasmEdge_ExportTypeGetFunctionType(ast.ptr, items[i])
            signatures[export] = (
                c.WasmEdge_FunctionTypeGetParametersLength(ftype),
                c.WasmEdge_FunctionTypeGetReturnsLength(ftype),
            )
    return ModuleInfo(imports, frozenset(signatures)), signatures


class _Stdio:
    """The instance's stdin, stdout and stderr as files we can read back after a call."""

    def __init__(self, stdin: bytes) -> None:
        self._read_at = {1: 0, 2: 0}
        stdin_fd = os.memfd_create("edge-stdin")
        os.write(stdin_fd, stdin)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        self.fds = [stdin_fd, os.memfd_create("edge-stdout"), os.memfd_create("edge-stderr")]
        self.given: list[int] = []

    def give(self) -> list[int]:
        """Copies for WasmEdge, which may or may not close what it is given."""
        self.given = [os.dup(fd) for fd in self.fds]
        return self.given

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            size = os.fstat(self.fds[fd]).st_size
            if size > self._read_at[fd]:
                out.append(
                    (stream, os.pread(self.fds[fd], size - self._read_at[fd], self._read_at[fd]))
                )
                self._read_at[fd] = size
        return out

    def close(self) -> None:
        """Close ours, and the copies WasmEdge left open (0.17 leaves them)."""
        for mine, given in zip(self.fds, self.given, strict=False):
            try:
                if os.path.samestat(os.fstat(mine), os.fstat(given)):
                    os.close(given)
            except OSError:
                pass  # WasmEdge closed it already
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.given = []


class _Instance:
    def __init__(
        self,
        engine: WasmEdgeEngine,
        module: WasmEdgeModule,
        loaded: Loaded,
        host: Sequence[HostFunction],
        wasi: WasiSpec,
        limits: Limits,
        signatures: dict[str, tuple[int, int]],
    ) -> None:
        self._lib = lib = engine.lib
        self._watchdog = engine.watchdog
        self._name = module.name
        self._limits = limits
        self._signatures = signatures
        self._execute = lib.cdll.WasmEdge_VMExecute
        self._slot = ErrorSlot()
        self._keys: list[int] = []
        self._stdio: _Stdio | None = None
        self._output = wasi.output
        self._prepared: dict[str, tuple[Any, int, Any, Any, int]] = {}
        self._keep: list[tuple[_ffi.String, bytes]] = []  # the names' buffers
        self._canceller: _handles.Async | None = None
        self._flag: ctypes.c_int32 | None = None  # our stop checks' flag, where they are
        modules = self._host_modules([*host, HostFunction(_INTERNAL, "nop", 0, False, _nop)])
        conf = engine.configure(
            limits, metered=limits.fuel is not None, stop_checked=loaded.stop_checked
        )
        try:
            self._vm = _handles.VM(lib, conf, modules)
        except BaseException as err:
            unregister(self._keys)
            if isinstance(err, _handles.HostModuleRejected):
                raise errors.InvalidModule(self._name, str(err)) from err
            raise
        try:
            self._setup(host, wasi, loaded.ast, module.info.imports)
        except BaseException:
            self.close()
            raise
        self._stats = lib.cdll.WasmEdge_VMGetStatisticsContext(self._vm.ptr)
        memory = self._find_memory("memory")
        self._memory = FrameMemory(lib, memory)
        if memory:
            bind(self._keys, self._memory)
        if loaded.stop_checked:
            # One page that never grows: the address holds for the instance's life.
            address = lib.cdll.WasmEdge_MemoryInstanceGetPointer(
                self._find_memory(STOP_EXPORT), 0, 4
            )
            self._flag = ctypes.c_int32.from_address(address)

    def _find_memory(self, name: str) -> int:
        active = self._lib.cdll.WasmEdge_VMGetActiveModule(self._vm.ptr)
        text, keep = _ffi.string(name)
        memory = self._lib.cdll.WasmEdge_ModuleInstanceFindMemory(active, text)
        del keep
        return int(memory or 0)

    def _host_modules(self, host: Sequence[HostFunction]) -> list[_handles.HostModule]:
        """One host module per import module name, its functions bound to our trampoline."""
        by_module: dict[str, list[HostFunction]] = {}
        for fn in host:
            by_module.setdefault(fn.module, []).append(fn)
        modules = []
        for module_name, fns in by_module.items():
            hm = _handles.HostModule(self._lib, module_name)
            modules.append(hm)
            for fn in fns:
                key = register(self._lib, fn.func, fn.params, fn.returns_value, self._slot)
                self._keys.append(key)
                hm.add_function(fn.name, fn.params, int(fn.returns_value), key)
        return modules

    def _setup(
        self,
        host: Sequence[HostFunction],
        wasi: WasiSpec,
        ast: _handles.ASTModule,
        ast_imports: frozenset[tuple[str, str]],
    ) -> None:
        c, vm = self._lib.cdll, self._vm
        self._init_wasi(wasi)
        self._provided = {(fn.module, fn.name) for fn in host}
        self._imports = ast_imports
        result = (
            c.WasmEdge_VMLoadWasmFromASTModule(vm.ptr, ast.ptr)
            or c.WasmEdge_VMValidate(vm.ptr)
            or c.WasmEdge_VMInstantiate(vm.ptr)
        )
        if result:
            raise self._instantiation_error(result)

    def _make_canceller(self) -> _handles.Async:
        """An Async bound to this VM, finished at once, kept only to cancel with."""
        name, keep = _ffi.string("\0edge-agent-canceller")
        job = _handles.Async(
            self._lib, self._lib.cdll.WasmEdge_VMAsyncExecute(self._vm.ptr, name, None, 0), self._vm
        )
        del keep
        self._lib.cdll.WasmEdge_AsyncWait(job.ptr)
        return job

    def _stop(self) -> None:
        """Stop the running call; on the watchdog's thread, under its lock."""
        if self._flag is not None:
            self._flag.value = 1
            return
        if self._canceller is None:
            self._canceller = self._make_canceller()
        self._lib.cdll.WasmEdge_AsyncCancel(self._canceller.ptr)

    def _clear_stop(self) -> None:
        """Consume a stop token that arrived after the call had already finished."""
        module, keep_m = _ffi.string(_INTERNAL)
        func, keep_f = _ffi.string("nop")
        self._lib.cdll.WasmEdge_VMExecuteRegistered(self._vm.ptr, module, func, None, 0, None, 0)
        del keep_m, keep_f

    def _init_wasi(self, wasi: WasiSpec) -> None:
        c = self._lib.cdll
        module = c.WasmEdge_VMGetImportModuleContext(self._vm.ptr, _ffi.HOST_REG_WASI)
        args, keep_a = _handles.c_strings([self._name, *wasi.args])
        envs, keep_e = _handles.c_strings([f"{k}={v}" for k, v in wasi.env])
        dirs, keep_d = _handles.c_strings(
            [f"{d.guest}:{d.host}" + ("" if d.writable else ":readonly") for d in wasi.dirs]
        )
        counts = (len(keep_a), len(keep_e), len(keep_d))
        if "WasmEdge_ModuleInstanceInitWASIWithFds" in self._lib.optional:
            self._stdio = _Stdio(wasi.stdin)
            c.WasmEdge_ModuleInstanceInitWASIWithFds(
                module, args, counts[0], envs, counts[1], dirs, counts[2], *self._stdio.give()
            )
        elif wasi.stdin:
            raise errors.EngineUnavailable(
                f"WasmEdge {self._lib.version} cannot give a module its own stdin (0.16 can)"
            )
        else:
            c.WasmEdge_ModuleInstanceInitWASI(
                module, args, counts[0], envs, counts[1], dirs, counts[2]
            )

    def _instantiation_error(self, result: int) -> errors.ModuleError:
        code = result & 0xFFFFFF
        message = self._lib.message(result)
        if code in (_ffi.UNKNOWN_IMPORT, _ffi.INCOMPATIBLE_IMPORT):
            missing = sorted(
                f"{m}.{n}"
                for m, n in self._imports
                if m != "wasi_snapshot_preview1" and (m, n) not in self._provided
            )
            return errors.MissingImport(self._name, f"cannot be linked ({message}): {missing}")
        if "memory" in message or "limit" in message:
            return errors.MemoryLimitExceeded(
                self._name, f"needs more memory than its cap of {self._limits.memory_pages} pages"
            )
        return self._call_error(result)

    @property
    def memory(self) -> FrameMemory:
        return self._memory

    def call(self, function: str, *args: int) -> int | None:
        prepared = self._prepared.get(function)
        if prepared is None:
            prepared = self._prepare(function)
        name, nparams, params, returns, nret = prepared
        if len(args) != nparams:
            raise errors.ModuleError(
                self._name, f"{function} takes {nparams} arguments, given {len(args)}"
            )
        for i, arg in enumerate(args):
            _ffi.I32_VALUE.pack_into(params, i * _VALUE_SIZE, arg & 0xFFFFFFFF, _ffi.I32_TYPE)
        if self._limits.fuel is not None:
            c = self._lib.cdll
            c.WasmEdge_StatisticsClear(self._stats)
            c.WasmEdge_StatisticsSetCostLimit(self._stats, self._limits.fuel)
        deadline = self._limits.deadline_ms
        if deadline is not None:
            self._watchdog.start(id(self), deadline, self._stop)
        try:
            result = self._execute(self._vm.ptr, name, params, nparams, returns, nret)
        finally:
            fired = deadline is not None and self._watchdog.finish(id(self))
            if fired and self._flag is not None:
                self._flag.value = 0
            elif fired and result & 0xFFFFFF != _ffi.INTERRUPTED:
                self._clear_stop()
            self._memory.changed()
            self._flush_output()
        error = self._slot.take()
        if error is not None:
            raise error
        if fired and self._flag is not None and result & 0xFFFFFF == _ffi.UNREACHABLE:
            result = _ffi.INTERRUPTED  # our stop check's trap
        if result:
            raise self._call_error(result)
        return int(returns[0].Value[0] & 0xFFFFFFFF) if nret else None

    def _prepare(self, function: str) -> tuple[Any, int, Any, Any, int]:
        """The name and value arrays of an export, made on its first call and reused."""
        signature = self._signatures.get(function)
        if signature is None:
            raise errors.InvalidModule(self._name, f"exports no function {function!r}")
        nparams, nret = signature
        name = _ffi.string(function)
        prepared = (
            name[0],
            nparams,
            (_ffi.Value * max(nparams, 1))(),
            (_ffi.Value * max(nret, 1))(),
            nret,
        )
        self._prepared[function] = prepared
        self._keep.append(name)
        return prepared

    def _call_error(self, result: int) -> errors.ModuleError:
        code = result & 0xFFFFFF
        if code == _ffi.TERMINATED and not result >> 24:
            wasi = self._lib.cdll.WasmEdge_VMGetImportModuleContext(
                self._vm.ptr, _ffi.HOST_REG_WASI
            )
            return errors.ModuleExit(
                self._name, self._lib.cdll.WasmEdge_ModuleInstanceWASIGetExitCode(wasi)
            )
        if code == _ffi.COST_LIMIT_EXCEEDED:
            return errors.FuelExhausted(self._name, "used up its fuel")
        if code == _ffi.INTERRUPTED:
            return errors.ModuleTimeout(
                self._name, f"missed its deadline of {self._limits.deadline_ms} ms"
            )
        if code == _ffi.FUNC_NOT_FOUND:
            return errors.InvalidModule(self._name, "called a function it does not export")
        return errors.ModuleTrap(self._name, f"trapped: {self._lib.message(result)}")

    def _flush_output(self) -> None:
        if self._stdio is None or self._output is None:
            return
        for stream, data in self._stdio.drain():
            self._output(stream, data)

    def close(self) -> None:
        if self._canceller is not None:
            self._canceller.close()
            self._canceller = None
        self._vm.close()
        unregister(self._keys)
        self._keys = []
        if self._stdio is not None:
            self._stdio.close()
            self._stdio = None
