"""Loading config files: TOML in, a frozen `AgentConfig` or a `ConfigError` out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config._models import AgentConfig
from agent.validation import read_toml, validated


def load_config(path: Path) -> AgentConfig:
    """Read and validate `path`; every error names the file, the key and what was expected."""
    return parse_config(read_toml(path, "config file"), path)


def parse_config(data: dict[str, Any], path: Path) -> AgentConfig:
    return validated(AgentConfig, data, path, context={"base_dir": path.parent})
