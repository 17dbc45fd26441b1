"""The agent's configuration: TOML files validated once into frozen models."""

from agent.config._load import format_errors, load_config, parse_config
from agent.config._models import (
    AgentConfig,
    EngineConfig,
    LimitsConfig,
    LoggingConfig,
    ModuleConfig,
    NodeConfig,
    WasiConfig,
)

__all__ = [
    "AgentConfig",
    "EngineConfig",
    "LimitsConfig",
    "LoggingConfig",
    "ModuleConfig",
    "NodeConfig",
    "WasiConfig",
    "format_errors",
    "load_config",
    "parse_config",
]
