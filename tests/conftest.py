"""Shared fixtures: the engines under test, the built guest modules, MQTT peers.

Every engine test runs on each available engine. WasmEdge is not on the package
registries, so its cases are skipped, with the reason, where the library is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import EngineUnavailable
from agent.wasm import Engine, create_engine
from agent.wasm.engines.wasmedge import find_library

pytest_plugins = ["tests.brokers"]

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "modules" / "dist"


def wasmedge_missing() -> str | None:
    """Why WasmEdge cannot be tested here, or None when it can."""
    try:
        path = find_library()
        from agent.wasm.engines.wasmedge import _ffi  # noqa: PLC0415

        _ffi.load(path)
    except EngineUnavailable as err:
        return f"WasmEdge unavailable: {err}"
    return None


_WASMEDGE = [
    pytest.mark.wasmedge,
    pytest.mark.skipif(wasmedge_missing() is not None, reason=str(wasmedge_missing())),
]

ENGINES = [
    pytest.param("wasmtime", id="wasmtime"),
    pytest.param("wasmedge", id="wasmedge", marks=_WASMEDGE),
    pytest.param("wasmedge-interpreter", id="wasmedge-interpreter", marks=_WASMEDGE),
]
"""WasmEdge runs AOT-compiled where the library has the compiler, and interpreted."""


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compiled-module cache for the session: AOT compilation takes a second."""
    return tmp_path_factory.mktemp("compiled")


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(engine_name: str, compile_cache: Path) -> Iterator[Engine]:
    kind, _, mode = engine_name.partition("-")
    eng = create_engine(kind, cache_dir=compile_cache, aot=mode != "interpreter")  # type: ignore[arg-type]
    yield eng
    eng.close()


def module_bytes(name: str) -> bytes:
    return (DIST / f"{name}.wasm").read_bytes()
