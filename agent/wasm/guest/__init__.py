"""Guest ABI version 1 (modules/README.md): what a module is handed and may do, on any
engine."""

from agent.wasm.guest._reactor import (
    ABI_VERSION,
    Emitted,
    ReactorModule,
    encode_reading,
    run_command,
)

__all__ = [
    "ABI_VERSION",
    "Emitted",
    "ReactorModule",
    "encode_reading",
    "run_command",
]
