"""Choosing the engine: `auto` prefers WasmEdge where its library is found."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.errors import EngineUnavailable
from agent.wasm._api import Engine

log = logging.getLogger(__name__)

EngineChoice = Literal["auto", "wasmedge", "wasmtime"]


@dataclass(frozen=True)
class EngineFound:
    """An engine as this host offers it, found without starting it."""

    name: str
    version: str | None = None
    """None when the engine cannot be used here (`absent` says why)."""
    library: Path | None = None
    """WasmEdge: the libwasmedge that was loaded."""
    compiler: bool | None = None
    """WasmEdge: whether the library has the LLVM compiler for AOT."""
    absent: str | None = None


def find_engines(wasmedge_lib: Path | None = None) -> tuple[EngineFound, EngineFound]:
    """WasmEdge and wasmtime as `create_engine` would find them: `auto` takes WasmEdge
    exactly when its `absent` is None."""
    from agent.wasm.engines._wasmtime import wasmtime_version  # noqa: PLC0415
    from agent.wasm.engines.wasmedge import find_library, load_library  # noqa: PLC0415

    try:
        path = find_library(wasmedge_lib)
        lib = load_library(path)
    except EngineUnavailable as err:
        wasmedge = EngineFound("wasmedge", absent=str(err))
    else:
        wasmedge = EngineFound("wasmedge", str(lib.version), path, lib.has_compiler)
    return wasmedge, EngineFound("wasmtime", wasmtime_version())


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
        from agent.wasm.engines.wasmedge import WasmEdgeEngine, find_library  # noqa: PLC0415

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
    from agent.wasm.engines._wasmtime import WasmtimeEngine  # noqa: PLC0415

    engine = WasmtimeEngine(cache_dir=cache_dir)
    if choice == "wasmtime":
        log.info("engine: wasmtime %s (asked for)", engine.version)
    return engine
