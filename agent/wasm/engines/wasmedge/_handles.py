"""One owning Python class per WasmEdge C handle.

Each wrapper owns its pointer, frees it exactly once in `close()`, refuses use after
close, works as a context manager, and keeps a reference to whatever must outlive it
(a VM keeps its configure context and the host modules registered into it).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from agent.errors import EngineUnavailable
from agent.wasm.engines.wasmedge import _ffi
from agent.wasm.engines.wasmedge._callbacks import TRAMPOLINE


class ClosedHandle(RuntimeError):
    """A WasmEdge object was used after it was closed: a bug in the caller."""


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
    def __init__(self, lib: _ffi.Library) -> None:
        c = lib.cdll
        super().__init__(
            lib, c.WasmEdge_ConfigureCreate(), c.WasmEdge_ConfigureDelete, "configure context"
        )


class Loader(Handle):
    def __init__(self, lib: _ffi.Library, conf: Configure) -> None:
        c = lib.cdll
        super().__init__(
            lib, c.WasmEdge_LoaderCreate(conf.ptr), c.WasmEdge_LoaderDelete, "loader", keep=(conf,)
        )


class Validator(Handle):
    def __init__(self, lib: _ffi.Library, conf: Configure) -> None:
        c = lib.cdll
        super().__init__(
            lib,
            c.WasmEdge_ValidatorCreate(conf.ptr),
            c.WasmEdge_ValidatorDelete,
            "validator",
            keep=(conf,),
        )


class ASTModule(Handle):
    """A parsed module; with AOT it also holds the mapped native code."""

    def __init__(self, lib: _ffi.Library, ptr: int) -> None:
        super().__init__(lib, ptr, lib.cdll.WasmEdge_ASTModuleDelete, "AST module")


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


class Async(Handle):
    """An execution started by `VMAsyncExecute`; the VM must outlive it."""

    def __init__(self, lib: _ffi.Library, ptr: int | None, vm: VM) -> None:
        super().__init__(lib, ptr, lib.cdll.WasmEdge_AsyncDelete, "async execution", keep=(vm,))


class Compiler(Handle):
    def __init__(self, lib: _ffi.Library, conf: Configure) -> None:
        c = lib.cdll
        super().__init__(
            lib,
            c.WasmEdge_CompilerCreate(conf.ptr),
            c.WasmEdge_CompilerDelete,
            "AOT compiler",
            keep=(conf,),
        )


def c_strings(items: list[str]) -> tuple[Any, list[bytes]]:
    """A `const char *const *` array; keep the returned list alive while it is used."""
    raw = [s.encode() for s in items]
    return (ctypes.c_char_p * max(len(raw), 1))(*raw), raw
