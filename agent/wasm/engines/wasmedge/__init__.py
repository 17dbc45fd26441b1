"""WasmEdge through our own ctypes binding to libwasmedge (0.14 to 0.17)."""

from agent.wasm.engines.wasmedge._engine import WasmEdgeEngine, WasmEdgeModule
from agent.wasm.engines.wasmedge._ffi import Library, candidates, find_library
from agent.wasm.engines.wasmedge._ffi import load as load_library

__all__ = [
    "Library",
    "WasmEdgeEngine",
    "WasmEdgeModule",
    "candidates",
    "find_library",
    "load_library",
]
