"""Where artifacts come from and go to: one Protocol for a registry repository and a
local OCI layout, and the checks every byte read through it passes.

Nothing read from a repository is trusted until it matched the digest and size that
pin it; `verified_chunks` checks both while streaming, so a tampered or truncated blob
fails before it is stored, and a blob that grows past its size is cut off early. What
is read into memory is bounded before the first byte: manifests by `MAX_MANIFEST_BYTES`
(a registry stops reading there), small blobs by the `limit` of `read_blob`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from agent.errors import DigestMismatch, PackageError, SupplyError
from agent.supply._oci import Descriptor, check_digest, sha256_digest

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Manifests and indexes are read into memory: bound them (the OCI distribution spec
says 4 MiB). Also the default bound of `read_blob`."""


@dataclass(frozen=True)
class Fetched:
    """A manifest as served: its exact bytes, the media type the server gave, its digest."""

    data: bytes
    media_type: str
    digest: str


class Repository(Protocol):
    """One repository of a registry, or one OCI layout directory."""

    @property
    def name(self) -> str:
        """The repository's name as signatures record it."""
        ...

    async def get_manifest(self, reference: str) -> Fetched:
        """The manifest under a tag or digest; `ArtifactNotFound` when absent."""
        ...

    async def put_manifest(self, data: bytes, media_type: str, reference: str) -> None: ...

    def blob_chunks(self, descriptor: Descriptor) -> AsyncIterator[bytes]:
        """The blob's bytes as they arrive, unchecked: use `verified_chunks`."""
        ...

    async def has_blob(self, digest: str) -> bool: ...

    async def put_blob(self, data: bytes, digest: str) -> None: ...

    async def referrers_api(self, digest: str) -> list[Descriptor] | None:
        """Referrers from the OCI 1.1 API, or None where the API does not exist."""
        ...

    async def aclose(self) -> None: ...


def check_manifest(fetched: Fetched, reference: str) -> Fetched:
    """`fetched`, once its bytes hash to the digest asked for (when one was)."""
    actual = sha256_digest(fetched.data)
    if reference.startswith("sha256:") and actual != check_digest(reference):
        raise DigestMismatch(reference, f"the manifest served has digest {actual}")
    if len(fetched.data) > MAX_MANIFEST_BYTES:
        raise SupplyError(f"manifest {actual} is larger than {MAX_MANIFEST_BYTES} bytes")
    return Fetched(fetched.data, fetched.media_type, actual)


async def verified_chunks(
    descriptor: Descriptor, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """Pass `chunks` through, failing as soon as they exceed the size, or at the end
    when size or sha256 differ. The consumer must discard everything on an error."""
    digest = descriptor.digest
    hasher = hashlib.sha256()
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > descriptor.size:
                raise DigestMismatch(
                    digest, f"blob is larger than the {descriptor.size} bytes pinned"
                )
            hasher.update(chunk)
            yield chunk
    finally:
        # Close the source (an HTTP answer) now, not whenever it is collected.
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
    if size != descriptor.size:
        raise DigestMismatch(
            digest, f"blob is {size} bytes, expected {descriptor.size} (truncated)"
        )
    if "sha256:" + hasher.hexdigest() != digest:
        raise DigestMismatch(digest, f"blob content hashes to sha256:{hasher.hexdigest()}")


async def read_blob(
    repo: Repository, descriptor: Descriptor, limit: int = MAX_MANIFEST_BYTES
) -> bytes:
    """A small blob (a module manifest, a signature) in memory, verified; one pinned
    larger than `limit` is refused before a byte of it is read."""
    if descriptor.size > limit:
        raise PackageError(
            f"{descriptor.media_type} {descriptor.digest} is pinned at {descriptor.size} bytes, "
            f"over the {limit} read into memory"
        )
    return b"".join([c async for c in verified_chunks(descriptor, repo.blob_chunks(descriptor))])
