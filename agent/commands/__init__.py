"""The MQTT command contract: topics, envelopes, arguments, limits and signatures.

Transport-free: the MQTT adapter passes messages to `CommandRouter.handle` and publishes
the `Reply`. The runtime registers a handler per command (`router.register(MODULE_DEPLOY,
handler)`); `log.level` and `status` are implemented here.
"""

from agent.commands._builtin import set_log_level, status_handler
from agent.commands._cli import add_command_commands
from agent.commands._responses import ResponseCache
from agent.commands._router import CommandRouter, Handler, Reply
from agent.commands._signing import (
    CommandVerifier,
    load_public_keys,
    sign_request,
    signed_bytes,
)
from agent.commands._table import (
    COMMANDS,
    CONFIG_RELOAD,
    DEVICE_WRITE,
    LOG_LEVEL,
    MODULE_DEPLOY,
    MODULE_LIST,
    MODULE_REMOVE,
    MODULE_ROLLBACK,
    STATUS,
    Command,
    CommandArgs,
    DeployArgs,
    DeviceWriteArgs,
    LogLevelArgs,
    ModuleNameArgs,
    NoArgs,
)

__all__ = [
    "COMMANDS",
    "CONFIG_RELOAD",
    "DEVICE_WRITE",
    "LOG_LEVEL",
    "MODULE_DEPLOY",
    "MODULE_LIST",
    "MODULE_REMOVE",
    "MODULE_ROLLBACK",
    "STATUS",
    "Command",
    "CommandArgs",
    "CommandRouter",
    "CommandVerifier",
    "DeployArgs",
    "DeviceWriteArgs",
    "Handler",
    "LogLevelArgs",
    "ModuleNameArgs",
    "NoArgs",
    "Reply",
    "ResponseCache",
    "add_command_commands",
    "load_public_keys",
    "set_log_level",
    "sign_request",
    "signed_bytes",
    "status_handler",
]
