"""Shared fixtures: the engines under test, the built guest modules, the peers.

Every engine test runs on each available engine. WasmEdge is not on the package
registries, so its cases are skipped, with the reason, where the library is absent.

A test that starts a peer (mosquitto, a nats-server cluster, Debian's docker-registry, a
socat pty pair, ...) carries its marker, given by the fixture it uses or written on it,
so `-m "not registry"` leaves those out. A peer that is not installed fails the test with the
install line; with EDGE_AGENT_NO_INSTALL=1 (see scripts/need-packages) it skips instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import EngineUnavailable
from agent.wasm import Engine, create_engine
from agent.wasm.engines.wasmedge import find_library

pytest_plugins = ["tests.brokers", "tests.cluster"]

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "modules" / "dist"


PEERS = {
    "mosquitto": (
        ("mosquitto", "mosquitto_pub", "mosquitto_sub", "mosquitto_rr"),
        ("mosquitto", "mosquitto-clients"),
    ),
    "nats": (("nats-server",), ("nats-server",)),
    "registry": (("docker-registry",), ("docker-registry",)),
    "socat": (("socat",), ("socat",)),
    "systemd": (("systemd-analyze",), ("systemd",)),
    "shellcheck": (("shellcheck",), ("shellcheck",)),
}
"""Marker: (the commands the tests run, the Debian packages that have them)."""

_PEER_FIXTURES = {
    "mosquitto": "mosquitto",
    "nats_cluster": "nats",
    "registry": "registry",
    "secure_registry": "registry",
    "pty_pair": "socat",
}


def _installed(command: str) -> bool:
    return shutil.which(command) is not None or Path("/usr/sbin", command).exists()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in _PEER_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, (commands, packages) in PEERS.items():
        if item.get_closest_marker(marker) is None:
            continue
        missing = [c for c in commands if not _installed(c)]
        if not missing:
            continue
        why = (
            f"needs {', '.join(missing)}: run scripts/test as root, which installs it, "
            f"or `sudo apt-get install -y {' '.join(packages)}`"
        )
        if os.environ.get("EDGE_AGENT_NO_INSTALL"):
            pytest.skip(why)
        pytest.fail(why, pytrace=False)


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
