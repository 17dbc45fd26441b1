"""The MQTT commands' handlers: the router's table bound to the running agent's parts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.commands import (
    CONFIG_RELOAD,
    DEVICE_WRITE,
    LOG_LEVEL,
    MODULE_DEPLOY,
    MODULE_LIST,
    MODULE_REMOVE,
    MODULE_ROLLBACK,
    STATUS,
    CommandRouter,
    DeployArgs,
    DeviceWriteArgs,
    ModuleNameArgs,
    NoArgs,
    set_log_level,
    status_handler,
)
from agent.config import AgentConfig, load_config
from agent.errors import CommandFailed, ConfigError
from agent.runtime._devices import Devices
from agent.runtime._versions import ModuleVersions
from agent.status import SnapshotProvider


def register_commands(
    config: AgentConfig,
    config_path: Path | None,
    versions: ModuleVersions,
    devices: Devices,
    snapshot: SnapshotProvider,
    *,
    on_reload: Callable[[AgentConfig], None],
) -> CommandRouter:
    """The command table of one running agent; `on_reload` gets a re-read, valid config."""
    supply = versions.supply
    router = CommandRouter(
        config.commands,
        prefix=config.mqtt.topic_prefix,
        node_id=config.node.id,
        groups=config.node.groups,
    )

    async def deploy(args: DeployArgs) -> dict[str, Any]:
        installed = await supply.deploy(
            args.reference, digest=args.digest, allow_downgrade=args.allow_downgrade
        )
        return {"name": installed.name, "version": installed.version, "digest": installed.digest}

    async def remove(args: ModuleNameArgs) -> dict[str, Any]:
        await supply.remove(args.name)
        return {"name": args.name}

    async def rollback(args: ModuleNameArgs) -> dict[str, Any]:
        done = await supply.rollback(args.name, "operator request")
        return {"name": done.name, "from": done.from_digest, "to": done.to_digest}

    async def module_list(_: NoArgs) -> list[dict[str, Any]]:
        states = {s.name: s for s in supply.modules()}
        listed = []
        for stats in versions.pipeline.status():
            state = states.get(stats.name)
            listed.append(
                {
                    "name": stats.name,
                    "version": stats.version,
                    "digest": stats.digest,
                    "signed": state is not None,
                    "previous": state.previous if state else None,
                    "status": state.status if state else "local",
                    "invocations": stats.invocations,
                    "errors": stats.errors,
                }
            )
        return listed

    async def device_write(args: DeviceWriteArgs) -> dict[str, Any]:
        value = await devices.write(args.device, args.point, args.value)
        return {"device": args.device, "point": args.point, "value": value}

    async def reload(_: NoArgs) -> dict[str, Any]:
        if config_path is None:
            raise CommandFailed("this agent was started without a config file to re-read")
        try:
            on_reload(load_config(config_path))
        except ConfigError as err:
            raise CommandFailed(f"the config was not reloaded: {err}") from err
        return {"config": str(config_path), "restarting": True}

    router.register(MODULE_DEPLOY, deploy)
    router.register(MODULE_REMOVE, remove)
    router.register(MODULE_ROLLBACK, rollback)
    router.register(MODULE_LIST, module_list)
    router.register(STATUS, status_handler(snapshot))
    router.register(DEVICE_WRITE, device_write)
    router.register(CONFIG_RELOAD, reload)
    router.register(LOG_LEVEL, set_log_level)
    return router
