"""One owning Python class per WasmEdge C handle, and the only callers of the C API
besides the host-function trampoline (`_callbacks`).

Each wrapper owns its pointer, frees it exactly once in `close()`, refuses use after
close, works as a context manager, and keeps a reference to whatever must outlive it
(a VM keeps its configure context and the host modules registered into it). A call
that WasmEdge refuses raises `Refused` with its result code; the engine decides what
that means for the module.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agent.errors import EngineUnavailable
from agent.wasm.engines.wasmedge import _ffi
from agent.wasm.engines.wasmedge._callbacks import TRAMPOLINE


class ClosedHandle(RuntimeError):
    """A WasmEdge object was used after it was closed: a bug in the caller."""


class Refused(Exception):
    """WasmEdge returned an error result: `result` is its code, `message` its words."""

    def __init__(self, lib: _ffi.Library, result: int) -> None:
        self.result = result
        self.message = lib.message(result)
        super().__init__(self.message)


def _check(lib: _ffi.Library, result: int) -> None:
    if result:
        raise Refused(lib, result)


class Handle:
    """Owns one C pointer and the function that frees it."""

    def __init__(
        self,
        lib: _ffi.Library,
        ptr: int | None,
        delete: Callable[[int], None],
        what: str,
        keep: tuple[Any, ...] = (),
    ) -> None:
        if not ptr:
            raise EngineUnavailable(f"WasmEdge could not create a {what}")
        self.lib = lib
        self._ptr: int | None = ptr
        self._delete = delete
        self._what = what
        self._keep = keep

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise ClosedHandle(f"{self._what} used after close")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self._delete(ptr)
        self._keep = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort for handles dropped without close(); never raise from __del__.
        with contextlib.suppress(Exception):
            self.close()


class Configure(Handle):
    """Settings for a loader, validator, compiler or VM; WASI is always registered."""

    def __init__(self, lib: _ffi.Library) -> None:
        c = lib.cdll
        super().__init__(
            lib, c.WasmEdge_ConfigureCreate(), c.WasmEdge_ConfigureDelete, "configure context"
        )
        c.WasmEdge_ConfigureAddHostRegistration(self.ptr, _ffi.HOST_REG_WASI)

    def meter(self) -> None:
        """Count instructions and their cost, so a cost limit (fuel) can stop a call."""
        c = self.lib.cdll
        c.WasmEdge_ConfigureStatisticsSetInstructionCounting(self.ptr, True)
        c.WasmEdge_ConfigureStatisticsSetCostMeasuring(self.ptr, True)

    def aot(self, *, interruptible: bool) -> None:
        """Compile at O2 into a wasm file's custom section, and run that native code."""
        c = self.lib.cdll
        c.WasmEdge_ConfigureCompilerSetOptimizationLevel(self.ptr, _ffi.OPT_O2)
        c.WasmEdge_ConfigureCompilerSetOutputFormat(self.ptr, _ffi.OUTPUT_FORMAT_WASM)
        c.WasmEdge_ConfigureCompilerSetInterruptible(self.ptr, interruptible)
        if "WasmEdge_ConfigureSetRunMode" in self.lib.optional:
            c.WasmEdge_ConfigureSetRunMode(self.ptr, _ffi.RUN_MODE_AOT)

    def interpret(self) -> None:
        self.lib.cdll.WasmEdge_ConfigureSetForceInterpreter(self.ptr, True)

    def add_proposal(self, proposal: int) -> None:
        self.lib.cdll.WasmEdge_ConfigureAddProposal(self.ptr, proposal)

    def cap_memory(self, pages: int) -> None:
        self.lib.cdll.WasmEdge_ConfigureSetMaxMemoryPage(self.ptr, pages)


class _Tool(Handle):
    """A loader, validator or compiler: made from a configure context, which it keeps."""

    _KIND = ""
    """`Loader`, `Validator` or `Compiler`: the C functions are `WasmEdge_<KIND>Create`
    and `WasmEdge_<KIND>Delete`."""

    def __init__(self, lib: _ffi.Library, conf: Configure) -> None:
        create = getattr(lib.cdll, f"WasmEdge_{self._KIND}Create")
        delete = getattr(lib.cdll, f"WasmEdge_{self._KIND}Delete")
        super().__init__(lib, create(conf.ptr), delete, self._KIND.lower(), keep=(conf,))


class Loader(_Tool):
    _KIND = "Loader"

    def parse(self, code: bytes) -> ASTModule:
        out = ctypes.c_void_p()
        data, keep = _ffi.bytes_of(code)
        result = self.lib.cdll.WasmEdge_LoaderParseFromBytes(self.ptr, ctypes.byref(out), data)
        del keep
        _check(self.lib, result)
        return ASTModule(self.lib, out.value)


class Validator(_Tool):
    _KIND = "Validator"

    def validate(self, ast: ASTModule) -> None:
        _check(self.lib, self.lib.cdll.WasmEdge_ValidatorValidate(self.ptr, ast.ptr))


class ASTModule(Handle):
    """A parsed module; with AOT it also holds the mapped native code."""

    def __init__(self, lib: _ffi.Library, ptr: int | None) -> None:
        super().__init__(lib, ptr, lib.cdll.WasmEdge_ASTModuleDelete, "AST module")

    def imports(self) -> frozenset[tuple[str, str]]:
        """(module, name) of every import."""
        c = self.lib.cdll
        n = c.WasmEdge_ASTModuleListImportsLength(self.ptr)
        items = (ctypes.c_void_p * max(n, 1))()
        c.WasmEdge_ASTModuleListImports(self.ptr, items, n)
        return frozenset(
            (
                _ffi.read_string(c.WasmEdge_ImportTypeGetModuleName(items[i])),
                _ffi.read_string(c.WasmEdge_ImportTypeGetExternalName(items[i])),
            )
            for i in range(n)
        )

    def function_exports(self) -> dict[str, tuple[int, int]]:
        """Each exported function's (parameter, result) counts, by export name."""
        c = self.lib.cdll
        n = c.WasmEdge_ASTModuleListExportsLength(self.ptr)
        items = (ctypes.c_void_p * max(n, 1))()
        c.WasmEdge_ASTModuleListExports(self.ptr, items, n)
        signatures: dict[str, tuple[int, int]] = {}
        for i in range(n):
            if c.WasmEdge_ExportTypeGetExternalType(items[i]) != _ffi.EXTERNAL_FUNCTION:
                continue
            ftype = c.WasmEdge_ExportTypeGetFunctionType(self.ptr, items[i])
            signatures[_ffi.read_string(c.WasmEdge_ExportTypeGetExternalName(items[i]))] = (
                c.WasmEdge_FunctionTypeGetParametersLength(ftype),
                c.WasmEdge_FunctionTypeGetReturnsLength(ftype),
            )
        return signatures


class FunctionType(Handle):
    def __init__(self, lib: _ffi.Library, params: int, returns: int) -> None:
        i32 = _ffi.i32_type()
        p = (_ffi.ValType * params)(*([i32] * params))
        r = (_ffi.ValType * returns)(*([i32] * returns))
        c = lib.cdll
        super().__init__(
            lib,
            c.WasmEdge_FunctionTypeCreate(p, params, r, returns),
            c.WasmEdge_FunctionTypeDelete,
            "function type",
        )


class HostModule(Handle):
    """A module instance of host functions, e.g. `edge`, registered into one VM.

    Function instances added to it belong to it; the module frees them.
    """

    def __init__(self, lib: _ffi.Library, name: str) -> None:
        self.name = name
        s, self._name_bytes = _ffi.string(name)
        c = lib.cdll
        super().__init__(
            lib,
            c.WasmEdge_ModuleInstanceCreate(s),
            c.WasmEdge_ModuleInstanceDelete,
            f"host module {name!r}",
        )

    def add_function(self, name: str, params: int, returns: int, data: int) -> None:
        c = self.lib.cdll
        with FunctionType(self.lib, params, returns) as ftype:
            func = c.WasmEdge_FunctionInstanceCreate(ftype.ptr, TRAMPOLINE, data, 0)
        if not func:
            raise EngineUnavailable(f"WasmEdge could not create host function {name!r}")
        s, keep = _ffi.string(name)
        c.WasmEdge_ModuleInstanceAddFunction(self.ptr, s, func)
        del keep


class HostModuleRejected(Exception):
    """WasmEdge refused to register a host module (a duplicate name, most likely)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"cannot register host module {name!r}: {message}")


class VM(Handle):
    """A VM with WASI over a store of its own, holding the host modules given to it.

    The host modules go into the store before the VM exists: a new VM puts a mock of
    each official plugin's module (`wasi_ephemeral_nn`, ...) into its store, and only
    a module already registered under that name keeps the mock out.
    """

    def __init__(self, lib: _ffi.Library, conf: Configure, modules: list[HostModule]) -> None:
        c = lib.cdll
        self._conf = conf
        self._modules = modules
        self._store: Handle | None = Handle(
            lib, c.WasmEdge_StoreCreate(), c.WasmEdge_StoreDelete, "store"
        )
        try:
            with Handle(
                lib,
                c.WasmEdge_ExecutorCreate(conf.ptr, None),
                c.WasmEdge_ExecutorDelete,
                "executor",
            ) as executor:
                for module in modules:
                    result = c.WasmEdge_ExecutorRegisterImport(
                        executor.ptr, self._store.ptr, module.ptr
                    )
                    if result:
                        raise HostModuleRejected(module.name, lib.message(result))
            super().__init__(
                lib, c.WasmEdge_VMCreate(conf.ptr, self._store.ptr), c.WasmEdge_VMDelete, "VM"
            )
        except BaseException:
            self._release()
            raise

    def instantiate(self, ast: ASTModule) -> None:
        """Load, validate and link the module into this VM."""
        c = self.lib.cdll
        _check(
            self.lib,
            c.WasmEdge_VMLoadWasmFromASTModule(self.ptr, ast.ptr)
            or c.WasmEdge_VMValidate(self.ptr)
            or c.WasmEdge_VMInstantiate(self.ptr),
        )

    def executor(self) -> Callable[[Any, Any, int, Any, int], int]:
        """`(name, params, nparams, returns, nreturns) -> result` for this VM: the call
        path, so a bound C function rather than a method on top of one. It holds the
        pointer: the caller must not use it after `close()`."""
        return functools.partial(self.lib.cdll.WasmEdge_VMExecute, self.ptr)

    def execute_registered(self, module: str, function: str) -> int:
        """Call a function without arguments or results of a registered host module."""
        m, keep_m = _ffi.string(module)
        f, keep_f = _ffi.string(function)
        result: int = self.lib.cdll.WasmEdge_VMExecuteRegistered(self.ptr, m, f, None, 0, None, 0)
        del keep_m, keep_f
        return result

    def start(self, function: str) -> Async:
        """Run `function` on a thread of WasmEdge's; the Async can wait for or cancel it."""
        name, keep = _ffi.string(function)
        job = Async(self.lib, self.lib.cdll.WasmEdge_VMAsyncExecute(self.ptr, name, None, 0), self)
        del keep
        return job

    def statistics(self) -> Statistics:
        return Statistics(self.lib, self.lib.cdll.WasmEdge_VMGetStatisticsContext(self.ptr), self)

    def find_memory(self, name: str) -> int:
        """The exported memory's context in the active module; 0 if there is none."""
        active = self.lib.cdll.WasmEdge_VMGetActiveModule(self.ptr)
        text, keep = _ffi.string(name)
        memory = self.lib.cdll.WasmEdge_ModuleInstanceFindMemory(active, text)
        del keep
        return int(memory or 0)

    def memory_address(self, memory: int, offset: int, length: int) -> int:
        """The host address of `length` bytes at `offset`; valid until the memory grows."""
        return int(self.lib.cdll.WasmEdge_MemoryInstanceGetPointer(memory, offset, length) or 0)

    def init_wasi(
        self,
        args: Sequence[str],
        env: Sequence[str],
        dirs: Sequence[str],
        stdio: Sequence[int] | None,
    ) -> None:
        """WASI's arguments, environment (`K=V`), preopens (`guest:host[:readonly]`),
        and stdin, stdout and stderr as descriptors where the library takes them."""
        c = self.lib.cdll
        module = c.WasmEdge_VMGetImportModuleContext(self.ptr, _ffi.HOST_REG_WASI)
        a, keep_a = c_strings(list(args))
        e, keep_e = c_strings(list(env))
        d, keep_d = c_strings(list(dirs))
        if stdio is None:
            c.WasmEdge_ModuleInstanceInitWASI(module, a, len(args), e, len(env), d, len(dirs))
        else:
            c.WasmEdge_ModuleInstanceInitWASIWithFds(
                module, a, len(args), e, len(env), d, len(dirs), *stdio
            )
        del keep_a, keep_e, keep_d

    @property
    def takes_stdio(self) -> bool:
        """Whether `init_wasi` can give the module descriptors of ours (0.16 and newer)."""
        return "WasmEdge_ModuleInstanceInitWASIWithFds" in self.lib.optional

    def wasi_exit_code(self) -> int:
        c = self.lib.cdll
        wasi = c.WasmEdge_VMGetImportModuleContext(self.ptr, _ffi.HOST_REG_WASI)
        return int(c.WasmEdge_ModuleInstanceWASIGetExitCode(wasi))

    def close(self) -> None:
        super().close()
        self._release()

    def _release(self) -> None:
        # The store and the host modules in it must outlive the VM.
        if self._store is not None:
            self._store.close()
            self._store = None
        for module in self._modules:
            module.close()
        self._modules = []
        self._conf.close()


class Statistics:
    """A VM's statistics context: owned by the VM, so nothing to free, and not to be
    used after the VM's `close()`."""

    def __init__(self, lib: _ffi.Library, ptr: int, vm: VM) -> None:
        self._clear = functools.partial(lib.cdll.WasmEdge_StatisticsClear, ptr)
        self._limit = functools.partial(lib.cdll.WasmEdge_StatisticsSetCostLimit, ptr)
        self._vm = vm

    def refuel(self, fuel: int) -> None:
        """Clear the counts and allow `fuel` more cost before the call is stopped."""
        self._clear()
        self._limit(fuel)


class Async(Handle):
    """An execution started by `VMAsyncExecute`; the VM must outlive it."""

    def __init__(self, lib: _ffi.Library, ptr: int | None, vm: VM) -> None:
        super().__init__(lib, ptr, lib.cdll.WasmEdge_AsyncDelete, "async execution", keep=(vm,))

    def wait(self) -> None:
        self.lib.cdll.WasmEdge_AsyncWait(self.ptr)

    def cancel(self) -> None:
        """Set the VM's stop token: its next interruptible check ends the running call."""
        self.lib.cdll.WasmEdge_AsyncCancel(self.ptr)


class Compiler(_Tool):
    """The AOT compiler; a library built without LLVM cannot make one."""

    _KIND = "Compiler"

    def compile(self, code: bytes, out: Path) -> None:
        """Write `code` with native code in a custom section to `out`; also validates."""
        data, keep = _ffi.bytes_of(code)
        result = self.lib.cdll.WasmEdge_CompilerCompileFromBytes(self.ptr, data, str(out).encode())
        del keep
        _check(self.lib, result)


def c_strings(items: list[str]) -> tuple[Any, list[bytes]]:
    """A `const char *const *` array; keep the returned list alive while it is used."""
    raw = [s.encode() for s in items]
    return (ctypes.c_char_p * max(len(raw), 1))(*raw), raw
