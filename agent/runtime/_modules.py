"""What the runtime needs to start a module, from a signed package or a local file.

A signed module's manifest gives its defaults (config, limits, the devices it
consumes, what it may emit); a `[[modules]]` entry of the same name may override
config, limits and routing, and grant WASI directories and variables, but only
those the manifest asks for: the node's config cannot widen what was signed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ModuleConfig
from agent.errors import ConfigError
from agent.runtime._pipeline import Route
from agent.supply import InstalledModule
from agent.wasm import Engine, Limits, Preopen, ReactorModule, WasiSpec


@dataclass(frozen=True)
class ModuleSpec:
    """Everything needed to start one version of one module."""

    name: str
    version: str
    digest: str
    wasm: bytes = field(repr=False)
    config: Mapping[str, Any]
    limits: Limits
    wasi: WasiSpec
    emit: tuple[str, ...]
    route: Route
    models: Mapping[str, Path]


def spec_from_path(config: AgentConfig, module: ModuleConfig) -> ModuleSpec:
    """A local, unsigned module file: development, or `supply.allow_unsigned_paths`."""
    assert module.path is not None
    try:
        wasm = module.path.read_bytes()
    except OSError as err:
        raise ConfigError(f"module {module.name!r}: cannot read {module.path}: {err}") from err
    return ModuleSpec(
        name=module.name,
        version="local",
        digest="sha256:" + hashlib.sha256(wasm).hexdigest(),
        wasm=wasm,
        config=module.config,
        limits=config.limits_for(module),
        wasi=module.wasi.to_spec(),
        emit=module.emit,
        route=Route(devices=frozenset(module.devices), after=module.after),
        models=module.models,
    )


def spec_from_installed(
    config: AgentConfig, installed: InstalledModule, node: ModuleConfig | None
) -> ModuleSpec:
    """A verified module version, with the node's overrides for it, if any."""
    manifest = installed.manifest
    m = manifest.limits
    limits = Limits(m.memory_pages, m.deadline_ms, m.fuel, config.limits.max_emit_bytes)
    settings: dict[str, Any] = dict(manifest.config)
    devices = frozenset(manifest.consumes)
    after = None
    wasi = WasiSpec()
    if node is not None:
        settings.update(node.config)
        if node.limits is not None:
            limits = node.limits.to_limits()
        if "devices" in node.model_fields_set:
            devices = frozenset(node.devices)
        after = node.after
        wasi = _granted_wasi(installed, node)
    return ModuleSpec(
        name=installed.name,
        version=installed.version,
        digest=installed.digest,
        wasm=installed.wasm_path.read_bytes(),
        config=settings,
        limits=limits,
        wasi=wasi,
        emit=manifest.capabilities.emit,
        route=Route(devices=devices, after=after),
        models=installed.models,
    )


def _granted_wasi(installed: InstalledModule, node: ModuleConfig) -> WasiSpec:
    caps = installed.manifest.capabilities
    asked = {d.guest: d.writable for d in caps.wasi_dirs}
    for d in node.wasi.dirs:
        if d.guest not in asked or (d.writable and not asked[d.guest]):
            raise ConfigError(
                f"module {installed.name!r}: the config grants WASI dir {d.guest!r}"
                f"{' writable' if d.writable else ''}, which its signed manifest does not ask "
                f"for (it asks for {sorted(asked) or 'none'})"
            )
    extra = sorted(set(node.wasi.env) - set(caps.wasi_env))
    if extra:
        raise ConfigError(
            f"module {installed.name!r}: the config sets environment {extra}, which its "
            f"signed manifest does not ask for (it asks for {sorted(caps.wasi_env) or 'none'})"
        )
    return WasiSpec(
        args=node.wasi.args,
        env=tuple(node.wasi.env.items()),
        dirs=tuple(Preopen(d.host, d.guest, d.writable) for d in node.wasi.dirs),
    )


def reactor_factory(engine: Engine, spec: ModuleSpec) -> Callable[[], ReactorModule]:
    """A function that compiles and starts the module; run it on the module's thread."""
    instance_host = None
    if spec.models:
        # Imported here: NumPy and LiteRT take 28 MB, which nodes without models keep.
        from agent.nn import ModelSet, nn_host_functions  # noqa: PLC0415

        instance_host = functools.partial(nn_host_functions, ModelSet.from_files(spec.models))

    def start() -> ReactorModule:
        compiled = engine.compile(spec.wasm, spec.name)
        try:
            return ReactorModule(
                compiled,
                spec.config,
                limits=spec.limits,
                wasi=spec.wasi,
                emit_topics=spec.emit,
                instance_host=instance_host,
                owns_compiled=True,
            )
        except BaseException:
            compiled.close()
            raise

    return start
