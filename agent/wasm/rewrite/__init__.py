"""Rewriting a module before it is compiled, alike on every engine: a bound on call
depth (`_stackguard`) and, for WasmEdge's AOT code, stop checks in loops (`_stopcheck`).
Both work on the binary format (`_binary`) and know no engine."""

from agent.wasm.rewrite._stackguard import (
    DEFAULT_MAX_DEPTH,
    GUARD_VERSION,
    RESET_EXPORT,
    guarded,
    memory_minimum,
)
from agent.wasm.rewrite._stopcheck import STOP_EXPORT, Uncheckable

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "GUARD_VERSION",
    "RESET_EXPORT",
    "STOP_EXPORT",
    "Uncheckable",
    "guarded",
    "memory_minimum",
]
