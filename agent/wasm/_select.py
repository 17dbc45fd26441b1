"""Choosing the engine: `auto` prefers WasmEdge where its library is found."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from agent.errors import EngineUnavailable
from agent.wasm._api import Engine

log = logging.getLogger(__name__)

EngineChoice = Literal["auto", "wasmedge", "wasmtime"]


def create_engine(
    choice: EngineChoice = "auto",
    *,
    cache_dir: Path | None = None,
    wasmedge_lib: Path | None = None,
    aot: bool = True,
) -> Engine:
    """Create the chosen engine, logging which one and why.

    `aot` lets WasmEdge compile ahead of time where its library has the compiler.
    """
    if choice in ("auto", "wasmedge"):
        from agent.wasm.wasmedge import WasmEdgeEngine, find_library  # noqa: PLC0415

        try:
            path = find_library(wasmedge_lib)
            engine: Engine = WasmEdgeEngine(path, cache_dir=cache_dir, aot=aot)
        except EngineUnavailable as err:
            if choice == "wasmedge":
                raise
            log.info("engine: wasmtime (WasmEdge not usable: %s)", err)
        else:
            log.info(
                "engine: wasmedge %s, %s (%s, %s)",
                engine.version,
                engine.mode,
                path,
                "asked for" if choice == "wasmedge" else "found its library",
            )
            return engine
    from agent.wasm._wasmtime import WasmtimeEngine  # noqa: PLC0415

    engine = WasmtimeEngine(cache_dir=cache_dir)
    if choice == "wasmtime":
        log.info("engine: wasmtime %s (asked for)", engine.version)
    return engine
