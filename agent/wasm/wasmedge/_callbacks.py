"""The one C-callable trampoline behind every WasmEdge host function.

WasmEdge passes each host function an opaque `Data` pointer; ours is an integer key
into a registry of Python callables, so no Python object address ever reaches C.
An exception must not cross back into C: the trampoline stores it on the owning call's
`ErrorSlot` and returns a user error; the caller re-raises it once the call returns.
The call may run on WasmEdge's async worker thread, hence a slot, not a thread-local.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections.abc import Callable
from typing import Any

from agent.wasm.wasmedge import _ffi

HOST_FAILED = _ffi.USER_ERROR | 1


class ErrorSlot:
    """Holds the first exception a host function raised during one instance's call."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def take(self) -> BaseException | None:
        error, self.error = self.error, None
        return error


class FrameMemory:
    """Guest memory as seen from a host function (or from the active module)."""

    def __init__(self, lib: _ffi.Library, mem: int) -> None:
        self._lib = lib
        self._mem = mem

    def _address(self, ptr: int, length: int) -> int:
        """The host address of a non-empty guest range; GetPointer returns NULL outside."""
        address = (
            self._lib.cdll.WasmEdge_MemoryInstanceGetPointer(self._mem, ptr, length)
            if self._mem and ptr >= 0 and length > 0
            else None
        )
        if not address:
            raise IndexError(f"range {ptr}+{length} is outside the module's memory")
        return int(address)

    def read(self, ptr: int, length: int) -> bytes:
        if length == 0:
            return b""
        return ctypes.string_at(self._address(ptr, length), length)

    def write(self, ptr: int, data: bytes) -> None:
        if data:
            ctypes.memmove(self._address(ptr, len(data)), data, len(data))

    def pages(self) -> int:
        return int(self._lib.cdll.WasmEdge_MemoryInstanceGetPageSize(self._mem)) if self._mem else 0


class _Entry:
    __slots__ = ("func", "lib", "params", "returns_value", "slot")

    def __init__(
        self,
        lib: _ffi.Library,
        func: Callable[..., int | None],
        params: int,
        returns_value: bool,
        slot: ErrorSlot,
    ) -> None:
        self.lib = lib
        self.func = func
        self.params = params
        self.returns_value = returns_value
        self.slot = slot


_REGISTRY: dict[int, _Entry] = {}
_KEYS = itertools.count(1)
_LOCK = threading.Lock()


def register(
    lib: _ffi.Library,
    func: Callable[..., int | None],
    params: int,
    returns_value: bool,
    slot: ErrorSlot,
) -> int:
    """Add a host callable; returns the key to pass as the function's `Data`."""
    with _LOCK:
        key = next(_KEYS)
        _REGISTRY[key] = _Entry(lib, func, params, returns_value, slot)
    return key


def unregister(keys: list[int]) -> None:
    with _LOCK:
        for key in keys:
            _REGISTRY.pop(key, None)


def _call(data: int | None, frame: int | None, params: Any, returns: Any) -> int:
    entry = _REGISTRY.get(data or 0)
    if entry is None:
        return HOST_FAILED
    try:
        mem = entry.lib.cdll.WasmEdge_CallingFrameGetMemoryInstance(frame, 0)
        args = [params[i].Value[0] & 0xFFFFFFFF for i in range(entry.params)]
        result = entry.func(FrameMemory(entry.lib, mem or 0), *args)
        if entry.returns_value:
            out = returns[0]
            out.Value[0] = (result or 0) & 0xFFFFFFFF
            out.Value[1] = 0
            out.Type = _ffi.i32_type()
    except BaseException as err:
        if entry.slot.error is None:
            entry.slot.error = err
        return HOST_FAILED
    return _ffi.OK


TRAMPOLINE = _ffi.HostFunc(_call)
"""Kept at module level so the C function pointer lives as long as the process."""
