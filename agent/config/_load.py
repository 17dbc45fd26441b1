"""Loading config files: TOML in, a frozen `AgentConfig` or a `ConfigError` out."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config._models import AgentConfig
from agent.errors import ConfigError


def load_config(path: Path) -> AgentConfig:
    """Read and validate `path`; every error names the file, the key and what was expected."""
    return parse_config(read_toml(path, "config file"), path)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed TOML document at `path`; a `ConfigError` naming the file otherwise."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such {what}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def parse_config(data: dict[str, Any], path: Path) -> AgentConfig:
    try:
        return AgentConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_errors(err)}") from err


def format_errors(err: ValidationError) -> str:
    """One line per problem: `key.path: what was wrong (got: value)`."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
            continue
        got = "" if e["type"] == "missing" else f" (got {e['input']!r})"
        lines.append(f"{where}: {e['msg']}{got}")
    return "; ".join(lines)
