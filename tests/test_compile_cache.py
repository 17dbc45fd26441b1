"""The compiled-module cache: damaged entries cost a recompile, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.reading import Reading, Value
from agent.wasm import ReactorModule, create_engine
from agent.wasm.engines._cache import CompileCache

from .conftest import module_bytes

pytestmark = pytest.mark.arm64


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "removed"),
    [
        (flip_a_byte, True),
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), True),
        (lambda p: p.with_suffix(".sum").unlink(), False),  # a write cut short
    ],
    ids=["flipped-bit", "truncated", "no-checksum"],
)
def test_a_damaged_entry_is_refused(tmp_path: Path, damage: object, removed: bool) -> None:
    cache = CompileCache(tmp_path)
    cache.put("k", b"native code " * 100)
    assert cache.get("k") == b"native code " * 100
    assert cache.verified_path("k") == tmp_path / "k.bin"
    damage(tmp_path / "k.bin")  # type: ignore[operator]
    assert cache.get("k") is None
    assert cache.verified_path("k") is None
    assert (tmp_path / "k.bin").exists() is not removed
    cache.put("k", b"recompiled")
    assert cache.get("k") == b"recompiled"


def test_engines_recompile_over_a_damaged_artifact(
    engine_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kind, _, mode = engine_name.partition("-")
    if mode == "interpreter":
        pytest.skip("the interpreter keeps no compiled artifacts")
    reading = Reading("d", 1.0, 1, {"t": Value(21.5, "degC")})

    def scaled() -> bytes:
        engine = create_engine(kind, cache_dir=tmp_path)  # type: ignore[arg-type]
        try:
            module = ReactorModule(engine.compile(module_bytes("scale"), "scale"), {})
            (message,) = module.on_reading(reading)
            module.close()
            return message.payload
        finally:
            engine.close()

    expected = scaled()
    (artifact,) = tmp_path.glob("*.bin")
    flip_a_byte(artifact)
    with caplog.at_level(logging.WARNING, logger="agent.wasm.engines._cache"):
        assert scaled() == expected
    assert "is damaged; recompiling" in caplog.text
    assert CompileCache(tmp_path).get(artifact.stem) is not None  # written anew
