"""The engine adapters, wasmtime (`_wasmtime`) and WasmEdge (`wasmedge`, our binding),
and what they share: the compiled cache, cached guest memory and the deadline ticker.
Only these modules import an engine."""

from agent.wasm.engines._select import EngineChoice, EngineFound, create_engine, find_engines

__all__ = ["EngineChoice", "EngineFound", "create_engine", "find_engines"]
