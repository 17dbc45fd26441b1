"""The `wasi_ephemeral_nn` host functions for one module instance.

Each instance gets a `_Session` of its own: its graphs and execution contexts die with
it, and its bounds (model bytes, graphs, contexts) cannot be spent by another module.
Every function answers with WasmEdge's error number and never traps on the guest's
bad input: like the upstream TFLite backend it checks byte size, rank, each dimension
and type of an input against the model, and a pointer outside memory is an invalid
argument. Why a call failed goes to the log at debug level, under `agent.nn`.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ModelError
from agent.nn._abi import FUNCTIONS, MODULE, TENSOR_BYTES, Encoding, ErrNo, Target, TensorType
from agent.nn._litert import LiteRTExecution, LiteRTModel, TensorSpec
from agent.nn._models import ModelSet
from agent.wasm import GuestMemory, HostFunction

_log = logging.getLogger("agent.nn")
_MAX_RANK = 16
_MAX_NAME_BYTES = 256


@dataclass(frozen=True)
class NNLimits:
    """Bounds per module instance; a call past one fails, the instance goes on."""

    max_model_bytes: int = 16 * 1024 * 1024
    """Largest model a guest may pass to `load` (TOO_LARGE past it)."""
    max_graphs: int = 4
    """Graphs loaded at once (BUSY past it; `unload` frees one)."""
    max_contexts: int = 4
    """Execution contexts at once (BUSY past it; `finalize_execution_context` frees one)."""


class _Refused(Exception):
    """A call's answer other than success; never leaves this module."""

    def __init__(self, errno: ErrNo, why: str) -> None:
        super().__init__(why)
        self.errno = errno


def _answer(method: Callable[..., None]) -> Callable[..., int]:
    """Run a host function body and turn its outcome into the WASI-NN error number."""

    @functools.wraps(method)
    def call(self: _Session, memory: GuestMemory, *args: int) -> int:
        try:
            method(self, memory, *args)
        except _Refused as refused:
            _log.debug("%s%s: %s: %s", method.__name__, args, refused.errno.name, refused)
            return int(refused.errno)
        except IndexError as err:  # the guest's pointer or length reaches past its memory
            _log.debug("%s%s: INVALID_ARGUMENT: %s", method.__name__, args, err)
            return int(ErrNo.INVALID_ARGUMENT)
        return int(ErrNo.SUCCESS)

    return call


def _u32(memory: GuestMemory, ptr: int, value: int) -> None:
    memory.write(ptr, struct.pack("<I", value))


_TENSOR = struct.Struct("<5I")


def _mismatch(
    memory: GuestMemory, spec: TensorSpec, dims_ptr: int, rank: int, rtype: int, data_len: int
) -> _Refused:
    """Why a tensor does not fit the model's input, the first difference in the
    upstream backend's order; only worked out once the fast comparison failed."""
    if rtype not in (TensorType.F16, TensorType.F32, TensorType.U8, TensorType.I32):
        return _Refused(ErrNo.INVALID_ARGUMENT, f"tensor type {rtype}; F16, F32, U8 or I32")
    if data_len != spec.nbytes:
        return _Refused(ErrNo.INVALID_ARGUMENT, f"{data_len} bytes; the input has {spec.nbytes}")
    if rank != len(spec.dims):
        return _Refused(ErrNo.INVALID_ARGUMENT, f"rank {rank}; the input has {len(spec.dims)}")
    dims = struct.unpack(f"<{rank}I", memory.read(dims_ptr, 4 * rank))
    if dims != spec.dims:
        return _Refused(
            ErrNo.INVALID_ARGUMENT, f"dims {list(dims)}; the input has {list(spec.dims)}"
        )
    return _Refused(ErrNo.INVALID_ARGUMENT, f"type {rtype}; the input is {spec.type!r}")


class _Session:
    """The graphs and contexts of one instance, numbered as the guest sees them."""

    def __init__(self, models: ModelSet, limits: NNLimits) -> None:
        self._models = models
        self._limits = limits
        self._graphs: dict[int, LiteRTModel] = {}
        self._by_name: dict[str, int] = {}
        self._contexts: dict[int, LiteRTExecution] = {}
        self._next_graph = 0
        self._next_context = 0

    def _add_graph(self, model: LiteRTModel) -> int:
        if len(self._graphs) >= self._limits.max_graphs:
            raise _Refused(ErrNo.BUSY, f"{len(self._graphs)} graphs are loaded, the limit")
        graph = self._next_graph
        self._next_graph += 1
        self._graphs[graph] = model
        return graph

    @_answer
    def load(
        self,
        memory: GuestMemory,
        builder_ptr: int,
        builder_len: int,
        encoding: int,
        target: int,
        graph_out: int,
    ) -> None:
        memory.read(graph_out, 4)
        if encoding != Encoding.TENSORFLOWLITE:
            raise _Refused(ErrNo.INVALID_ENCODING, f"encoding {encoding}; only TensorflowLite (4)")
        if target != Target.CPU:
            raise _Refused(ErrNo.INVALID_ARGUMENT, f"target {target}; only CPU (0)")
        if builder_len != 1:
            raise _Refused(ErrNo.INVALID_ARGUMENT, f"{builder_len} builders; TFLite takes 1")
        ptr, length = struct.unpack("<II", memory.read(builder_ptr, 8))
        if length > self._limits.max_model_bytes:
            raise _Refused(
                ErrNo.TOO_LARGE, f"model of {length} bytes; at most {self._limits.max_model_bytes}"
            )
        try:
            model = LiteRTModel(memory.read(ptr, length), "<guest>")
        except ModelError as err:
            raise _Refused(ErrNo.INVALID_ARGUMENT, str(err)) from err
        _u32(memory, graph_out, self._add_graph(model))

    @_answer
    def load_by_name(
        self, memory: GuestMemory, name_ptr: int, name_len: int, graph_out: int
    ) -> None:
        self._by_name_into(memory, name_ptr, name_len, graph_out)

    @_answer
    def load_by_name_with_config(
        self,
        memory: GuestMemory,
        name_ptr: int,
        name_len: int,
        config_ptr: int,
        config_len: int,
        graph_out: int,
    ) -> None:
        memory.read(config_ptr, config_len)  # TFLite takes no config; it must still be readable
        self._by_name_into(memory, name_ptr, name_len, graph_out)

    def _by_name_into(self, memory: GuestMemory, name_ptr: int, name_len: int, out: int) -> None:
        memory.read(out, 4)
        if name_len > _MAX_NAME_BYTES:
            raise _Refused(ErrNo.INVALID_ARGUMENT, f"name of {name_len} bytes")
        name = memory.read(name_ptr, name_len).decode("utf-8", "replace")
        graph = self._by_name.get(name)
        if graph is None or graph not in self._graphs:
            model = self._models.get(name)
            if model is None:
                raise _Refused(
                    ErrNo.NOT_FOUND, f"no model {name!r}; preloaded: {sorted(self._models)}"
                )
            graph = self._by_name[name] = self._add_graph(model)
        _u32(memory, out, graph)

    @_answer
    def init_execution_context(self, memory: GuestMemory, graph: int, ctx_out: int) -> None:
        memory.read(ctx_out, 4)
        model = self._graphs.get(graph)
        if model is None:
            raise _Refused(ErrNo.INVALID_ARGUMENT, f"no graph {graph}")
        if len(self._contexts) >= self._limits.max_contexts:
            raise _Refused(ErrNo.BUSY, f"{len(self._contexts)} contexts are open, the limit")
        context = self._next_context
        self._next_context += 1
        self._contexts[context] = model.execution()
        _u32(memory, ctx_out, context)

    def _context(self, context: int) -> LiteRTExecution:
        execution = self._contexts.get(context)
        if execution is None:
            raise _Refused(ErrNo.INVALID_ARGUMENT, f"no execution context {context}")
        return execution

    @staticmethod
    def _tensor(specs: tuple[TensorSpec, ...], index: int, kind: str) -> TensorSpec:
        if index >= len(specs):
            raise _Refused(ErrNo.INVALID_ARGUMENT, f"{kind} {index}; the model has {len(specs)}")
        return specs[index]

    @_answer
    def set_input(self, memory: GuestMemory, context: int, index: int, tensor_ptr: int) -> None:
        dims_ptr, rank, rtype, data_ptr, data_len = _TENSOR.unpack(
            memory.read(tensor_ptr, TENSOR_BYTES)
        )
        execution = self._context(context)
        spec = self._tensor(execution.model.inputs, index, "input")
        if (rtype, data_len, rank) != (spec.type, spec.nbytes, len(spec.dims)) or memory.read(
            dims_ptr, 4 * rank
        ) != spec.dims_bytes:
            raise _mismatch(memory, spec, dims_ptr, rank, rtype, data_len)
        execution.set_input(index, memory.address(data_ptr, data_len))

    @_answer
    def compute(self, memory: GuestMemory, context: int) -> None:
        try:
            self._context(context).compute()
        except ModelError as err:
            raise _Refused(ErrNo.BUSY, str(err)) from err

    @_answer
    def get_output(
        self,
        memory: GuestMemory,
        context: int,
        index: int,
        out_ptr: int,
        out_max: int,
        written_out: int,
    ) -> None:
        target = memory.address(out_ptr, out_max)
        memory.address(written_out, 4)
        execution = self._context(context)
        spec = self._tensor(execution.model.outputs, index, "output")
        _u32(memory, written_out, spec.nbytes)  # as upstream: the guest learns the size
        if out_max < spec.nbytes:
            raise _Refused(ErrNo.TOO_LARGE, f"output of {spec.nbytes} bytes; buffer of {out_max}")
        execution.output_into(index, target)

    @_answer
    def unload(self, memory: GuestMemory, graph: int) -> None:
        if self._graphs.pop(graph, None) is None:
            raise _Refused(ErrNo.INVALID_ARGUMENT, f"no graph {graph}")

    @_answer
    def finalize_execution_context(self, memory: GuestMemory, context: int) -> None:
        if self._contexts.pop(context, None) is None:
            raise _Refused(ErrNo.INVALID_ARGUMENT, f"no execution context {context}")


def nn_host_functions(models: ModelSet, limits: NNLimits | None = None) -> list[HostFunction]:
    """The `wasi_ephemeral_nn` imports for one new instance, with state of its own."""
    session = _Session(models, limits or NNLimits())
    return [
        HostFunction(MODULE, name, params, True, getattr(session, name))
        for name, params in FUNCTIONS.items()
    ]
