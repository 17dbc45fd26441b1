"""The command table: every command's name and the model its `args` must match.

Argument models are strict (unknown keys refused) so a typo in an operator's request is
an error naming the key, never a silently ignored option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from agent.config import NAME_PATTERN
from agent.validation import StrictModel

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
REFERENCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,511}$"


class CommandArgs(StrictModel):
    """The arguments of one command."""


class NoArgs(CommandArgs):
    pass


class DeployArgs(CommandArgs):
    reference: str = Field(pattern=REFERENCE_PATTERN)
    """An OCI reference, `registry/repository:tag` or `...@sha256:...`."""
    digest: str | None = Field(None, pattern=DIGEST_PATTERN)
    """Pin: deploy only if the reference resolves to this manifest digest."""
    allow_downgrade: bool = False
    """Install even if the version is not newer than the running one (rollback protection)."""


class ModuleNameArgs(CommandArgs):
    name: str = Field(pattern=NAME_PATTERN)


class DeviceWriteArgs(CommandArgs):
    device: str = Field(pattern=NAME_PATTERN)
    point: str = Field(pattern=NAME_PATTERN)
    """A register the device's config names and marks writable."""
    value: StrictBool | StrictInt | StrictFloat


class LogLevelArgs(CommandArgs):
    level: Literal["debug", "info", "warning", "error"]
    logger: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
    """A logger name such as `agent.modbus`; the agent's root logger unless set."""


ArgsT = TypeVar("ArgsT", bound=CommandArgs)


@dataclass(frozen=True)
class Command(Generic[ArgsT]):
    name: str
    args: type[ArgsT]
    summary: str


MODULE_DEPLOY = Command("module.deploy", DeployArgs, "pull, verify and start a module")
MODULE_REMOVE = Command("module.remove", ModuleNameArgs, "stop a module and forget it")
MODULE_ROLLBACK = Command("module.rollback", ModuleNameArgs, "go back to the previous version")
MODULE_LIST = Command("module.list", NoArgs, "the modules on this node")
STATUS = Command("status", NoArgs, "the status snapshot")
DEVICE_WRITE = Command("device.write", DeviceWriteArgs, "write a writable register")
CONFIG_RELOAD = Command("config.reload", NoArgs, "re-read the config file")
LOG_LEVEL = Command("log.level", LogLevelArgs, "change a logger's level")

COMMANDS: dict[str, Command[Any]] = {
    c.name: c
    for c in (
        MODULE_DEPLOY,
        MODULE_REMOVE,
        MODULE_ROLLBACK,
        MODULE_LIST,
        STATUS,
        DEVICE_WRITE,
        CONFIG_RELOAD,
        LOG_LEVEL,
    )
}
