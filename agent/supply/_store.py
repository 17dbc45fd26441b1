"""The content-addressed store under the state directory: blobs named by their sha256.

Blobs enter only through `ingest` (streamed, checked against their descriptor, written
atomically), so a file under `blobs/sha256/<hex>` always holds what its name says; a
load re-hashes before handing anything to an engine, since SD cards rot.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent._atomic import write_bytes, write_stream
from agent.errors import DigestMismatch
from agent.supply._manifest import ModuleManifest
from agent.supply._oci import (
    MODEL_LAYER,
    MODULE_MANIFEST_LAYER,
    TITLE,
    WASM_LAYER,
    Descriptor,
    Manifest,
    digest_hex,
    sha256_digest,
)
from agent.supply._repo import verified_chunks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstalledModule:
    """A verified module version in the store, ready for the runtime to instantiate."""

    name: str
    version: str
    digest: str
    """The OCI manifest digest: the identity of this version."""
    wasm_path: Path
    manifest: ModuleManifest
    models: Mapping[str, Path]
    """Model name to file, for WASI-NN."""


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    async def ingest(self, descriptor: Descriptor, chunks: AsyncIterator[bytes]) -> Path:
        """Store a streamed blob once it matched `descriptor`; kept as is when present."""
        path = self.path(descriptor.digest)
        if not path.exists():
            await write_stream(path, verified_chunks(descriptor, chunks))
        return path

    def put(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not self.has(digest):
            write_bytes(self.path(digest), data)
        return digest

    def read(self, digest: str) -> bytes:
        """A stored blob, re-hashed; a damaged one is removed so the next pull refetches it."""
        path = self.path(digest)
        data = path.read_bytes()
        if sha256_digest(data) != digest:
            path.unlink(missing_ok=True)
            raise DigestMismatch(digest, f"stored blob {path} is damaged; removed")
        return data

    def load(self, digest: str) -> InstalledModule:
        oci = Manifest.parse(self.read(digest), f"stored manifest {digest}")
        layers = (oci.layer(WASM_LAYER), oci.layer(MODULE_MANIFEST_LAYER))
        module = ModuleManifest.parse(self.read(layers[1].digest), f"module manifest of {digest}")
        models = {}
        for layer in oci.layers:
            self.read(layer.digest)
            if layer.media_type == MODEL_LAYER:
                models[layer.annotations.get(TITLE, "")] = self.path(layer.digest)
        return InstalledModule(
            module.name, module.version, digest, self.path(layers[0].digest), module, models
        )

    def collect(self, keep: Iterable[str]) -> int:
        """Delete every blob not reachable from the manifests in `keep`; returns how many."""
        live: set[str] = set()
        for digest in keep:
            live.add(digest_hex(digest))
            oci = Manifest.parse(self.path(digest).read_bytes(), f"stored manifest {digest}")
            live.update(digest_hex(d.digest) for d in (oci.config, *oci.layers))
        removed = 0
        directory = self.root / "blobs" / "sha256"
        for path in directory.iterdir() if directory.exists() else ():
            if path.name not in live:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("store: collected %d unreferenced blobs", removed)
        return removed
