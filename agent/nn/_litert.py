"""The LiteRT adapter: the only module that imports `ai_edge_litert`.

A `LiteRTModel` is a TFLite flatbuffer checked once (it parses, its tensors allocate)
with the shape and type of every input and output; each execution context is an
interpreter of its own, as in WasmEdge's TFLite backend. Interpreters run the builtin
kernels on one thread without the default XNNPACK delegate: results are the reference
kernels' on every machine, and nothing is printed to the agent's stderr.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import (  # type: ignore[import-untyped]
    Interpreter,
    OpResolverType,
)

from agent.errors import ModelError
from agent.nn._abi import TensorType

# The tensor types WasmEdge's TFLite backend exchanges with guests.
_TYPES: dict[Any, TensorType] = {
    np.float16: TensorType.F16,
    np.float32: TensorType.F32,
    np.uint8: TensorType.U8,
    np.int32: TensorType.I32,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its dims, WASI-NN type (None: not exchangeable) and size."""

    index: int
    dims: tuple[int, ...]
    type: TensorType | None
    nbytes: int
    dtype: Any
    dims_bytes: bytes
    """The dims as a guest passes them, little-endian u32s: checked in one comparison."""


class LiteRTModel:
    """A TFLite model, checked at construction; `execution()` gives a fresh context."""

    def __init__(self, content: bytes, name: str) -> None:
        self.content = bytes(content)
        self.name = name
        interpreter = self._interpreter()
        details = [*interpreter.get_input_details(), *interpreter.get_output_details()]
        for detail in details:
            signature = [int(d) for d in detail.get("shape_signature", detail["shape"])]
            if any(d < 0 for d in signature):
                # Dynamic tensors move and resize inside invoke(): the copies below
                # rely on buffers fixed once allocated.
                raise ModelError(
                    f"model {name!r} has a dynamic shape (tensor {detail['name']!r}: "
                    f"{signature}); only models with fixed shapes are served"
                )
        self.inputs = tuple(_spec(d) for d in interpreter.get_input_details())
        self.outputs = tuple(_spec(d) for d in interpreter.get_output_details())

    def _interpreter(self) -> Any:
        try:
            interpreter = Interpreter(
                model_content=self.content,
                num_threads=1,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"model {self.name!r} is not a usable TFLite model: {err}") from err
        return interpreter

    def execution(self) -> LiteRTExecution:
        return LiteRTExecution(self, self._interpreter())


class LiteRTExecution:
    """One interpreter: inputs in, `compute()`, outputs out. Callers check sizes first.

    Tensors are copied straight between guest memory and the interpreter's buffers,
    whose addresses are read once: they hold until `allocate_tensors()` or a resize,
    and neither happens after construction. `set_tensor` and `get_tensor` built a
    NumPy array per call, most of a small model's inference.
    """

    def __init__(self, model: LiteRTModel, interpreter: Any) -> None:
        self.model = model
        self._interpreter = interpreter
        # tensor() gives a view; only its address is kept, since invoke() refuses to
        # run while a view of the interpreter's memory is alive.
        self._inputs = [_address(interpreter, spec) for spec in model.inputs]
        self._outputs = [_address(interpreter, spec) for spec in model.outputs]

    def set_input(self, index: int, source: int) -> None:
        """Copy input `index` (of `model.inputs[index].nbytes`) from host address `source`."""
        ctypes.memmove(self._inputs[index], source, self.model.inputs[index].nbytes)

    def compute(self) -> None:
        try:
            self._interpreter.invoke()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"model {self.model.name!r} failed to run: {err}") from err

    def output_into(self, index: int, target: int) -> None:
        """Copy output `index` to host address `target`, which has room for it."""
        ctypes.memmove(target, self._outputs[index], self.model.outputs[index].nbytes)


def _address(interpreter: Any, spec: TensorSpec) -> int:
    address = int(interpreter.tensor(spec.index)().ctypes.data)
    if not address:  # no buffer: nothing LiteRT allocated up front
        raise ModelError(f"tensor {spec.index} of the model has no buffer of its own")
    return address


def _spec(detail: dict[str, Any]) -> TensorSpec:
    dtype = np.dtype(detail["dtype"])
    dims = tuple(int(d) for d in detail["shape"])
    count = int(np.prod(dims, dtype=np.int64))
    return TensorSpec(
        int(detail["index"]),
        dims,
        _TYPES.get(dtype.type),
        count * dtype.itemsize,
        dtype,
        struct.pack(f"<{len(dims)}I", *dims),
    )
