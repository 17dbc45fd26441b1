"""Running WebAssembly modules on WasmEdge or wasmtime behind one interface."""

from agent.wasm._api import (
    CompiledModule,
    Engine,
    GuestMemory,
    HostFunction,
    Instance,
    Limits,
    ModuleInfo,
    Preopen,
    WasiSpec,
)
from agent.wasm.engines import EngineChoice, EngineFound, create_engine, find_engines
from agent.wasm.guest import (
    ABI_VERSION,
    Emitted,
    ReactorModule,
    encode_reading,
    run_command,
)

__all__ = [
    "ABI_VERSION",
    "CompiledModule",
    "Emitted",
    "Engine",
    "EngineChoice",
    "EngineFound",
    "GuestMemory",
    "HostFunction",
    "Instance",
    "Limits",
    "ModuleInfo",
    "Preopen",
    "ReactorModule",
    "WasiSpec",
    "create_engine",
    "encode_reading",
    "find_engines",
    "run_command",
]
