"""From a module's config and its verified bytes to a ready `ReactorModule`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agent.config import AgentConfig, ModuleConfig
from agent.runtime._pipeline import Route
from agent.wasm import Engine, HostFunction, ReactorModule


def reactor_factory(
    engine: Engine,
    wasm: bytes,
    config: AgentConfig,
    module: ModuleConfig,
    extra_host: Sequence[HostFunction] = (),
) -> Callable[[], ReactorModule]:
    """A function that compiles and starts the module; run it on the module's thread."""

    def make() -> ReactorModule:
        compiled = engine.compile(wasm, module.name)
        try:
            return ReactorModule(
                compiled,
                module.config,
                limits=config.limits_for(module),
                wasi=module.wasi.to_spec(),
                emit_topics=module.emit,
                extra_host=extra_host,
                owns_compiled=True,
            )
        except BaseException:
            compiled.close()
            raise

    return make


def route_of(module: ModuleConfig) -> Route:
    return Route(devices=frozenset(module.devices), after=module.after)
