"""The engine interface every Wasm engine adapter implements.

The core of the agent speaks only these Protocols and value types; only the adapters
(`_wasmtime`, `wasmedge`) import an engine. Host functions take and return i32 only:
the guest ABI (`edge.*`) and WASI-NN need nothing wider, and a narrow type keeps the
two adapters' trampolines identical in behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PAGE_SIZE = 65536


class GuestMemory(Protocol):
    """A module instance's linear memory, seen from the host."""

    def read(self, ptr: int, length: int) -> bytes:
        """Copy `length` bytes at `ptr`; IndexError when the range is outside memory."""
        ...

    def address(self, ptr: int, length: int) -> int:
        """The host address of a guest range, for copies without an intermediate
        `bytes`; valid only until guest code runs again (it may grow the memory)."""
        ...

    def write(self, ptr: int, data: bytes) -> None: ...

    def pages(self) -> int: ...


HostCallable = Callable[..., int | None]
"""Called as `fn(memory, *i32_args)`; returns the i32 result, or None for no result."""


@dataclass(frozen=True)
class HostFunction:
    """One host import, all parameters i32, zero or one i32 result."""

    module: str
    name: str
    params: int
    returns_value: bool
    func: HostCallable


@dataclass(frozen=True)
class Preopen:
    """A host directory the module may see, at `guest` inside its WASI filesystem."""

    host: Path
    guest: str
    writable: bool = False


OutputSink = Callable[[str, bytes], None]
"""Receives a module's `("stdout" | "stderr", bytes)` as the engine delivers them."""


@dataclass(frozen=True)
class WasiSpec:
    """What WASI preview 1 exposes to one instance. Nothing is inherited from the agent."""

    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    dirs: tuple[Preopen, ...] = ()
    stdin: bytes = b""
    output: OutputSink | None = None


@dataclass(frozen=True)
class Limits:
    """Per-instance limits; deadline and fuel apply to each call separately."""

    memory_pages: int = 256
    deadline_ms: int | None = 1000
    fuel: int | None = None
    max_emit_bytes: int = 65536


@dataclass(frozen=True)
class ModuleInfo:
    """What a compiled module imports and exports, for ABI checks before instantiation."""

    imports: frozenset[tuple[str, str]]
    exported_functions: frozenset[str]


class Instance(Protocol):
    """A running module instance. Not thread-safe: one caller at a time."""

    @property
    def memory(self) -> GuestMemory: ...

    def call(self, function: str, *args: int) -> int | None:
        """Run an export under the instance's deadline and fuel; raise typed errors."""
        ...

    def close(self) -> None: ...


class CompiledModule(Protocol):
    """A module compiled (or loaded from the cache) and ready to instantiate."""

    @property
    def name(self) -> str: ...

    @property
    def info(self) -> ModuleInfo: ...

    def instantiate(
        self, host: Sequence[HostFunction], wasi: WasiSpec, limits: Limits
    ) -> Instance: ...

    def close(self) -> None: ...


class Engine(Protocol):
    """A Wasm engine: compiles verified bytes and runs them under limits."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def mode(self) -> str:
        """How code runs: `cranelift`, `aot` or `interpreter`."""
        ...

    def compile(self, wasm: bytes, name: str) -> CompiledModule: ...

    def close(self) -> None: ...
