"""Guest memory access through a cached base address, shared by both engine adapters.

Looking the memory up through the engine's API on every access cost more than the
accesses themselves (a host function reads and writes several times per call). Only
guest code can grow, and so move, a memory: the adapters call `changed()` after every
call into the guest and on entry to every host function, and the base address and
size are looked up again on the next access.
"""

from __future__ import annotations

import ctypes

from agent.wasm._api import PAGE_SIZE


class CachedMemory:
    """Bounds-checked access to linear memory; subclasses say where it is (`_locate`)."""

    def __init__(self) -> None:
        self._view: tuple[int, int] | None = None  # (base address, size in bytes)

    def _locate(self) -> tuple[int, int]:
        """The memory's current base address and size in bytes."""
        raise NotImplementedError

    def changed(self) -> None:
        """Guest code ran: the memory may have grown and moved."""
        self._view = None

    def address(self, ptr: int, length: int) -> int:
        """The host address of guest range `ptr`+`length`, valid until guest code runs."""
        view = self._view
        if view is None:
            view = self._view = self._locate()
        base, size = view
        if ptr < 0 or length < 0 or ptr + length > size:
            raise IndexError(f"range {ptr}+{length} is outside the module's {size} bytes")
        return base + ptr

    def read(self, ptr: int, length: int) -> bytes:
        return ctypes.string_at(self.address(ptr, length), length)

    def write(self, ptr: int, data: bytes) -> None:
        ctypes.memmove(self.address(ptr, len(data)), data, len(data))

    def pages(self) -> int:
        return self._locate()[1] // PAGE_SIZE
