"""The agent's configuration: TOML files validated once into frozen models."""

from agent.config._load import format_errors, load_config, parse_config
from agent.config._models import (
    NAME_PATTERN,
    AgentConfig,
    CommandsConfig,
    ControlConfig,
    EngineConfig,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    ModuleConfig,
    MqttConfig,
    NodeConfig,
    OutboxConfig,
    TlsConfig,
    WasiConfig,
)

__all__ = [
    "NAME_PATTERN",
    "AgentConfig",
    "CommandsConfig",
    "ControlConfig",
    "EngineConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModuleConfig",
    "MqttConfig",
    "NodeConfig",
    "OutboxConfig",
    "TlsConfig",
    "WasiConfig",
    "format_errors",
    "load_config",
    "parse_config",
]
