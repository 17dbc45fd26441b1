"""The agent's configuration: TOML files validated once into frozen models."""

from agent.config._load import load_config, parse_config
from agent.config._models import (
    AgentConfig,
    EngineConfig,
    LimitsConfig,
    LoggingConfig,
    ModuleConfig,
    MqttConfig,
    NodeConfig,
    OutboxConfig,
    TlsConfig,
    WasiConfig,
)

__all__ = [
    "AgentConfig",
    "EngineConfig",
    "LimitsConfig",
    "LoggingConfig",
    "ModuleConfig",
    "MqttConfig",
    "NodeConfig",
    "OutboxConfig",
    "TlsConfig",
    "WasiConfig",
    "load_config",
    "parse_config",
]
