"""A local OCI image layout directory as a `Repository` (skopeo's `oci:DIR:TAG`).

Used for packaging, offline sideloading and the demo; what is read from it passes the
same digest and signature checks as a registry pull. Tags live in `index.json` as
`org.opencontainers.image.ref.name` annotations; referrers use the tag schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from agent._atomic import write_bytes
from agent._json import parse_json
from agent.errors import ArtifactNotFound, PackageError
from agent.supply._oci import (
    REF_NAME,
    Descriptor,
    digest_hex,
    index_bytes,
    parse_index,
    sha256_digest,
)
from agent.supply._repo import Fetched

_CHUNK = 65536


class LayoutRepository:
    """An OCI image layout at `root`, created on the first write."""

    def __init__(self, root: Path, name: str | None = None) -> None:
        self.root = root
        self._name = name or root.name

    @property
    def name(self) -> str:
        return self._name

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def _index(self) -> list[Descriptor]:
        path = self.root / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as err:
            raise PackageError(f"{path}: cannot read: {err}") from err
        return parse_index(data, str(path))

    async def get_manifest(self, reference: str) -> Fetched:
        entries = self._index()
        if reference.startswith("sha256:"):
            found = [d for d in entries if d.digest == reference]
            media_type = found[0].media_type if found else ""
            digest = reference
        else:
            found = [d for d in entries if d.annotations.get(REF_NAME) == reference]
            if not found:
                raise ArtifactNotFound(f"oci:{self.root}: no tag {reference!r}")
            media_type, digest = found[-1].media_type, found[-1].digest
        try:
            data = self._blob(digest).read_bytes()
        except FileNotFoundError as err:
            raise ArtifactNotFound(f"oci:{self.root}: no manifest {digest}") from err
        except OSError as err:
            raise PackageError(f"oci:{self.root}: cannot read manifest {digest}: {err}") from err
        return Fetched(data, media_type or _media_type_of(data), digest)

    async def put_manifest(self, data: bytes, media_type: str, reference: str) -> None:
        digest = sha256_digest(data)
        await self.put_blob(data, digest)
        entries = self._index()
        if reference.startswith("sha256:"):
            if any(d.digest == digest for d in entries):
                return
            entries.append(Descriptor(media_type, digest, len(data)))
        else:
            entries = [d for d in entries if d.annotations.get(REF_NAME) != reference]
            entries.append(Descriptor(media_type, digest, len(data), {REF_NAME: reference}))
        write_bytes(self.root / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        write_bytes(self.root / "index.json", index_bytes(entries))

    async def blob_chunks(self, descriptor: Descriptor) -> AsyncIterator[bytes]:
        try:
            f = self._blob(descriptor.digest).open("rb")
        except FileNotFoundError as err:
            raise ArtifactNotFound(f"oci:{self.root}: no blob {descriptor.digest}") from err
        with f:
            while chunk := f.read(_CHUNK):
                yield chunk

    async def has_blob(self, digest: str) -> bool:
        return self._blob(digest).exists()

    async def put_blob(self, data: bytes, digest: str) -> None:
        if sha256_digest(data) != digest:
            raise PackageError(f"refusing to store a blob under the wrong digest {digest}")
        if not self._blob(digest).exists():
            write_bytes(self._blob(digest), data)

    async def referrers_api(self, digest: str) -> list[Descriptor] | None:
        return None

    async def aclose(self) -> None:
        return None


def _media_type_of(data: bytes) -> str:
    """A manifest's own mediaType (all we write carry one); "" lets parsing reject it."""
    try:
        doc = parse_json(data)
    except ValueError:
        return ""
    return str(doc.get("mediaType", "")) if isinstance(doc, dict) else ""
