"""The agent's configuration: TOML files validated once into frozen models.

Register maps (`config/devices/*.toml`) are configuration too: the poller, the codec and
`check` read them from here.
"""

from agent.config._devices import Connection, DeviceConfig, SerialConfig
from agent.config._fields import NAME_PATTERN
from agent.config._load import load_config, parse_config
from agent.config._models import (
    AgentConfig,
    CommandsConfig,
    ControlConfig,
    EngineConfig,
    JournalConfig,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    ModuleConfig,
    MqttConfig,
    OutboxConfig,
    PipelineConfig,
    PolicyConfig,
    RegistryConfig,
    RolloutConfig,
    SparkplugConfig,
    SupplyConfig,
    TlsConfig,
    WasiConfig,
)
from agent.config._node import RESERVED_NODE_IDS, FleetConfig, NodeConfig
from agent.config._opcua import (
    NodeMap,
    NodeSpec,
    NodeType,
    OpcuaDeviceConfig,
    SecurityMode,
    SecurityPolicy,
    load_node_map,
)
from agent.config._registers import (
    BIT_TABLES,
    NUMERIC_TYPES,
    ByteOrder,
    DataType,
    RegisterGroup,
    RegisterMap,
    RegisterSpec,
    Table,
    load_register_map,
)

__all__ = [
    "BIT_TABLES",
    "NAME_PATTERN",
    "NUMERIC_TYPES",
    "RESERVED_NODE_IDS",
    "AgentConfig",
    "ByteOrder",
    "CommandsConfig",
    "Connection",
    "ControlConfig",
    "DataType",
    "DeviceConfig",
    "EngineConfig",
    "FleetConfig",
    "JournalConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModuleConfig",
    "MqttConfig",
    "NodeConfig",
    "NodeMap",
    "NodeSpec",
    "NodeType",
    "OpcuaDeviceConfig",
    "OutboxConfig",
    "PipelineConfig",
    "PolicyConfig",
    "RegisterGroup",
    "RegisterMap",
    "RegisterSpec",
    "RegistryConfig",
    "RolloutConfig",
    "SecurityMode",
    "SecurityPolicy",
    "SerialConfig",
    "SparkplugConfig",
    "SupplyConfig",
    "Table",
    "TlsConfig",
    "WasiConfig",
    "load_config",
    "load_node_map",
    "load_register_map",
    "parse_config",
]
