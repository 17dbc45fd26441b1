"""The numbers of WasmEdge's `wasi_ephemeral_nn` ABI (WasmEdge 0.15 and newer).

Guests built against WasmEdge's WASI-NN pass and receive exactly these values, so they
must never change; `modules/sdk/wasi_nn.h` spells the same numbers for C guests.
"""

from __future__ import annotations

from enum import IntEnum

MODULE = "wasi_ephemeral_nn"
FUNCTIONS: dict[str, int] = {
    "load": 5,
    "load_by_name": 3,
    "load_by_name_with_config": 5,
    "init_execution_context": 2,
    "set_input": 3,
    "compute": 1,
    "get_output": 5,
    "unload": 1,
    "finalize_execution_context": 1,
}
"""Every import of the module and its number of i32 parameters; each returns an i32."""
TENSOR_BYTES = 20
"""`{u32 dims_ptr, u32 dims_len, u32 type, u32 data_ptr, u32 data_len}`."""


class ErrNo(IntEnum):
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    INVALID_ENCODING = 2
    MISSING_MEMORY = 3
    BUSY = 4
    RUNTIME_ERROR = 5
    UNSUPPORTED_OPERATION = 6
    TOO_LARGE = 7
    NOT_FOUND = 8


class TensorType(IntEnum):
    F16 = 0
    F32 = 1
    F64 = 2
    U8 = 3
    I32 = 4
    I64 = 5


class Encoding(IntEnum):
    OPENVINO = 0
    ONNX = 1
    TENSORFLOW = 2
    PYTORCH = 3
    TENSORFLOWLITE = 4
    AUTODETECT = 5
    GGML = 6


class Target(IntEnum):
    CPU = 0
    GPU = 1
    TPU = 2
    AUTO = 3
