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
import struct
import threading
from collections.abc import Callable

from agent.wasm._api import PAGE_SIZE
from agent.wasm.engines._memory import CachedMemory
from agent.wasm.engines.wasmedge import _ffi

HOST_FAILED = _ffi.USER_ERROR | 1


class ErrorSlot:
    """Holds the first exception a host function raised during one instance's call."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def take(self) -> BaseException | None:
        error, self.error = self.error, None
        return error


class FrameMemory(CachedMemory):
    """A module instance's memory, by its `WasmEdge_MemoryInstanceContext`."""

    def __init__(self, lib: _ffi.Library, mem: int) -> None:
        super().__init__()
        self._lib = lib
        self.handle = mem

    def _locate(self) -> tuple[int, int]:
        if not self.handle:
            return 0, 0
        c = self._lib.cdll
        size = int(c.WasmEdge_MemoryInstanceGetPageSize(self.handle)) * PAGE_SIZE
        return (c.WasmEdge_MemoryInstanceGetPointer(self.handle, 0, size) or 0) if size else 0, size


class _Entry:
    __slots__ = ("args", "bound", "func", "lib", "memory", "returns_value", "slot")

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
        # The i32 parameters: the low 32 bits of each 32-byte `WasmEdge_Value`.
        self.args = struct.Struct("<" + "I28x" * params)
        self.returns_value = returns_value
        self.slot = slot
        self.memory = FrameMemory(lib, 0)  # the caller's, replaced when another calls
        self.bound = False  # True once `bind` gave the instance's own memory


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


def bind(keys: list[int], memory: FrameMemory) -> None:
    """Give an instance's host functions its memory: calls then skip looking it up
    through the calling frame (only host functions its start function runs need to)."""
    with _LOCK:
        for key in keys:
            entry = _REGISTRY.get(key)
            if entry is not None:
                entry.memory = memory
                entry.bound = True


def unregister(keys: list[int]) -> None:
    with _LOCK:
        for key in keys:
            _REGISTRY.pop(key, None)


def _call(data: int | None, frame: int | None, params: int | None, returns: int | None) -> int:
    entry = _REGISTRY.get(data or 0)
    if entry is None:
        return HOST_FAILED
    try:
        memory = entry.memory
        if not entry.bound:
            mem = entry.lib.cdll.WasmEdge_CallingFrameGetMemoryInstance(frame, 0) or 0
            if mem != memory.handle:
                memory = entry.memory = FrameMemory(entry.lib, mem)
        memory.changed()
        args = entry.args.unpack(ctypes.string_at(params or 0, entry.args.size))
        result = entry.func(memory, *args)
        if entry.returns_value:
            value = _ffi.I32_VALUE.pack((result or 0) & 0xFFFFFFFF, _ffi.I32_TYPE)
            ctypes.memmove(returns or 0, value, _ffi.I32_VALUE.size)
    except BaseException as err:
        if entry.slot.error is None:
            entry.slot.error = err
        return HOST_FAILED
    return _ffi.OK


TRAMPOLINE = _ffi.HostFunc(_call)
"""Kept at module level so the C function pointer lives as long as the process."""
