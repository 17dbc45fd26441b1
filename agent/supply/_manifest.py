"""The module manifest: what a module is, needs and may do, as it travels in its own
OCI layer, and `module.toml`, its source form in a module directory.

The agent reads capabilities and limits from here and checks them against local
policy before any other layer is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from agent.errors import PackageError
from agent.reading import Reading
from agent.topics import filter_error
from agent.validation import StrictModel, format_errors
from agent.wasm import ABI_VERSION

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$")


class WasiDir(StrictModel):
    guest: str = Field(pattern=r"^/[^\x00:]*$")
    writable: bool = False


class Capabilities(StrictModel):
    emit: tuple[str, ...] = ()
    """Topic filters the module may emit to, relative to the node."""
    models: tuple[str, ...] = ()
    """Names of the models it may load; each ships as a layer of the package."""
    wasi_dirs: tuple[WasiDir, ...] = ()
    wasi_env: tuple[str, ...] = ()
    """Names of environment variables it may read; values come from the node's config."""

    @field_validator("emit")
    @classmethod
    def _filters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for f in value:
            problem = filter_error(f)
            if problem is not None:
                raise ValueError(f"{f!r} is not a topic filter ({problem})")
        return value


class ModuleLimits(StrictModel):
    memory_pages: int = Field(256, ge=1, le=65536)
    deadline_ms: int | None = Field(1000, ge=1, le=600_000)
    fuel: int | None = Field(None, ge=1)


class ModuleManifest(StrictModel):
    """The manifest layer. One digest pins it together with the code and the models."""

    name: str = Field(pattern=NAME)
    version: str = Field(pattern=_SEMVER.pattern)
    abi: int = ABI_VERSION
    consumes: tuple[str, ...] = ()
    """Devices (or `device/reading` names) whose readings the module is fed."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The module's default config (`edge_configure`); the node's config may override it."""
    capabilities: Capabilities = Capabilities()
    limits: ModuleLimits = ModuleLimits()
    test_readings: tuple[dict[str, Any], ...] = ()
    """Readings the smoke test feeds the staged version before it is activated."""

    @field_validator("abi")
    @classmethod
    def _abi(cls, value: int) -> int:
        if value != ABI_VERSION:
            raise ValueError(f"this agent speaks guest ABI v{ABI_VERSION}, not v{value}")
        return value

    @field_validator("test_readings")
    @classmethod
    def _readings(cls, value: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for i, doc in enumerate(value):
            try:
                Reading.from_json(doc)
            except ValueError as err:
                raise ValueError(f"reading {i}: {err}") from err
        return value

    def readings(self) -> list[Reading]:
        return [Reading.from_json(doc) for doc in self.test_readings]

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> ModuleManifest:
        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            raise PackageError(f"{where}: {format_errors(err)}") from err


class ModuleToml(StrictModel):
    """`module.toml`: the manifest's fields, plus where the files are."""

    name: str = Field(pattern=NAME)
    version: str = Field(pattern=_SEMVER.pattern)
    abi: int = ABI_VERSION
    wasm: Path
    """The module, relative to the directory."""
    consumes: tuple[str, ...] = ()
    config: dict[str, Any] = Field(default_factory=dict)
    capabilities: Capabilities = Capabilities()
    limits: ModuleLimits = ModuleLimits()
    models: dict[str, Path] = Field(default_factory=dict)
    """Model name to TFLite file; each name is also granted in capabilities.models."""
    test_readings: Path | None = None
    """A JSON-lines file of readings for the smoke test."""


def version_key(version: str) -> tuple[int, int, int, int, str]:
    """Semantic-version order: a pre-release sorts before its release."""
    match = _SEMVER.match(version)
    if not match:
        raise PackageError(f"{version!r} is not a version MAJOR.MINOR.PATCH[-PRE]")
    major, minor, patch, pre = match.groups()
    return int(major), int(minor), int(patch), 0 if pre else 1, pre or ""
