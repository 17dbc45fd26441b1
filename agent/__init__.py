"""edge-agent: signed WebAssembly modules, Modbus, WASI-NN and MQTT on IoT gateways."""

from agent.errors import AgentError, ConfigError, ModuleError
from agent.reading import Reading, Series, Value

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "ConfigError",
    "ModuleError",
    "Reading",
    "Series",
    "Value",
    "__version__",
]
