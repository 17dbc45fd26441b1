"""`module package DIR`: a module directory in, an OCI image layout (Wasm layout) out.

The manifest references the config, the module, its manifest layer and one layer per
model, so one digest pins all of them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent._json import parse_json
from agent.errors import PackageError
from agent.supply._layout import LayoutRepository
from agent.supply._manifest import ModuleManifest, ModuleToml
from agent.supply._oci import (
    MODEL_LAYER,
    MODULE_MANIFEST_LAYER,
    OCI_MANIFEST,
    TITLE,
    WASM_CONFIG,
    WASM_LAYER,
    Descriptor,
    Manifest,
)
from agent.validation import read_toml, validated

WASM_MAGIC = b"\0asm\x01\0\0\0"


@dataclass(frozen=True)
class Packaged:
    layout: Path
    tag: str
    digest: str
    manifest: ModuleManifest


def read_module_dir(directory: Path) -> tuple[ModuleToml, ModuleManifest]:
    path = directory / "module.toml"
    doc = read_toml(path, f"module.toml in {directory}", error=PackageError)
    source = validated(ModuleToml, doc, path, error=PackageError)
    readings: list[object] = []
    if source.test_readings is not None:
        readings = _json_lines(directory / source.test_readings, path)
    fields = source.model_dump(exclude={"wasm", "models", "test_readings"})
    fields["capabilities"]["models"] = tuple(
        dict.fromkeys([*source.capabilities.models, *source.models])
    )
    manifest = validated(
        ModuleManifest, {**fields, "test_readings": readings}, path, error=PackageError
    )
    return source, manifest


async def package(
    directory: Path, output: Path, tag: str | None = None, *, created: float | None = None
) -> Packaged:
    """Write the package for `directory` into the layout `output` under `tag` (the version).

    `created` (Unix time; else $SOURCE_DATE_EPOCH, else now) is the only input that is
    not content: fix it and the same files give the same digest.
    """
    source, manifest = read_module_dir(directory)
    toml = directory / "module.toml"
    wasm = _read(directory / source.wasm, toml, "wasm")
    if not wasm.startswith(WASM_MAGIC):
        raise PackageError(f"{toml}: wasm: {source.wasm} is not a WebAssembly module")
    blobs: list[tuple[Descriptor, bytes]] = [
        (Descriptor.of(WASM_LAYER, wasm, {TITLE: source.wasm.name}), wasm),
        (Descriptor.of(MODULE_MANIFEST_LAYER, data := manifest.to_bytes()), data),
    ]
    for name, model in sorted(source.models.items()):
        blob = _read(directory / model, toml, f"models.{name}")
        blobs.append((Descriptor.of(MODEL_LAYER, blob, {TITLE: name}), blob))
    if created is None:
        created = float(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    config = json.dumps(
        {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            "author": "edge-agent module package",
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [d.digest for d, _ in blobs],
            "component": None,
        },
        separators=(",", ":"),
    ).encode()
    config_desc = Descriptor.of(WASM_CONFIG, config)
    oci = Manifest(config_desc, tuple(d for d, _ in blobs))
    repo = LayoutRepository(output)
    for descriptor, data in [(config_desc, config), *blobs]:
        await repo.put_blob(data, descriptor.digest)
    data = oci.to_bytes()
    tag = tag or manifest.version
    await repo.put_manifest(data, OCI_MANIFEST, tag)
    return Packaged(output, tag, Descriptor.of(OCI_MANIFEST, data).digest, manifest)


def _read(path: Path, toml: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise PackageError(f"{toml}: {key}: cannot read {path}: {err.strerror}") from err
    except ValueError as err:  # a NUL byte in the path
        raise PackageError(f"{toml}: {key}: cannot read {path!r}: {err}") from err


def _json_lines(path: Path, toml: Path) -> list[object]:
    text = _read(path, toml, "test_readings").decode("utf-8", "replace")
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(parse_json(line))
            except ValueError as err:
                raise PackageError(f"{path}:{number}: not JSON: {err}") from err
    return out
