"""WASI-NN for modules: WasmEdge's `wasi_ephemeral_nn` ABI, served by LiteRT on any engine.

Read the models once with `ModelSet.from_files({"anomaly": path})`; give each module
`ReactorModule(..., instance_host=functools.partial(nn_host_functions, models))` so
that every instance, including one restarted after a fault, starts with no graphs and
no contexts.
"""

from agent.nn._abi import FUNCTIONS, MODULE, ErrNo, TensorType
from agent.nn._host import NNLimits, nn_host_functions
from agent.nn._models import DEFAULT_MAX_MODEL_BYTES, ModelSet

__all__ = [
    "DEFAULT_MAX_MODEL_BYTES",
    "FUNCTIONS",
    "MODULE",
    "ErrNo",
    "ModelSet",
    "NNLimits",
    "TensorType",
    "nn_host_functions",
]
