"""Config loading: valid files load frozen; every error names file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import load_config
from agent.errors import ConfigError

from .conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["agent.toml", "demo.toml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(REPO / "config" / name)
    assert config.engine.kind in ("auto", "wasmedge", "wasmtime")
    assert not config.supply.allow_unsigned_paths
    assert all(m.path is None for m in config.modules)


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[modules]]\nname = "m"\npath = "mods/m.wasm"\n')
    assert load_config(path).modules[0].path == tmp_path / "mods" / "m.wasm"


def test_limits_fall_back_to_the_agent_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[limits]\ndeadline_ms = 50\n"
        '[[modules]]\nname = "a"\npath = "a.wasm"\n'
        '[[modules]]\nname = "b"\npath = "b.wasm"\n[modules.limits]\nfuel = 1000\n',
    )
    config = load_config(path)
    a, b = config.modules
    assert config.limits_for(a).deadline_ms == 50
    assert config.limits_for(b).fuel == 1000
    assert config.limits_for(b).deadline_ms == 1000


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    with pytest.raises(ValidationError):
        config.engine.kind = "wasmtime"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[engine]\nkind = "v8"\n',
            "engine.kind: Input should be 'auto', 'wasmedge' or 'wasmtime'",
        ),
        ("[engine]\ncolour = 1\n", "engine.colour: unknown key"),
        (
            "[limits]\nmemory_pages = 0\n",
            "limits.memory_pages: Input should be greater than or equal to 1",
        ),
        ('[[modules]]\nname = "a"\n', "module 'a' needs either ref (signed) or path, not both"),
        (
            '[[modules]]\nname = "a"\npath = "a.wasm"\nref = "oci:x:1"\n',
            "module 'a' needs either ref (signed) or path",
        ),
        ('[[modules]]\nname = "a b"\npath = "x"\n', "modules.0.name: String should match pattern"),
        (
            '[[modules]]\nname = "a"\npath = "x"\n[[modules]]\nname = "a"\npath = "y"\n',
            "module name 'a' is used twice",
        ),
        (
            '[[modules]]\nname = "a"\npath = "x"\nafter = "b"\n',
            "after = 'b' names no module",
        ),
        (
            '[[modules]]\nname = "a"\npath = "x"\nafter = "b"\n'
            '[[modules]]\nname = "b"\npath = "y"\nafter = "a"\n',
            "modules feed each other in a loop: a -> b",
        ),
        ("[pipeline]\nqueue_size = 0\n", "pipeline.queue_size: Input should be greater than"),
        ("[engine\n", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")
