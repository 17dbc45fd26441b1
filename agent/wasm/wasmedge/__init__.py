"""WasmEdge through our own ctypes binding to libwasmedge (0.14 to 0.17)."""

from agent.wasm.wasmedge._engine import WasmEdgeEngine, WasmEdgeModule
from agent.wasm.wasmedge._ffi import candidates, find_library

__all__ = ["WasmEdgeEngine", "WasmEdgeModule", "candidates", "find_library"]
