"""OCI 1.1 referrers: the API where a registry has it, the tag schema where it does not.

Debian's docker-registry (distribution 2.8) answers the referrers API with 404, so a
referrer is also recorded in an image index under the tag `sha256-<hex>` of its subject,
which is what the OCI distribution spec prescribes as the fallback.
"""

from __future__ import annotations

from agent.errors import ArtifactNotFound
from agent.supply._oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    index_bytes,
    parse_index,
)
from agent.supply._repo import Repository, check_manifest


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")


async def list_referrers(repo: Repository, digest: str, artifact_type: str) -> list[Descriptor]:
    found = await repo.referrers_api(digest)
    if found is None:
        try:
            index = check_manifest(await repo.get_manifest(fallback_tag(digest)), "")
        except ArtifactNotFound:
            return []
        found = parse_index(index.data, f"{repo.name} referrers index of {digest}")
    return [d for d in found if d.artifact_type == artifact_type]


async def attach_referrer(repo: Repository, manifest: Manifest) -> Descriptor:
    """Push `manifest` (which has a subject) and make it discoverable from that subject."""
    if manifest.subject is None:
        raise ValueError("a referrer needs a subject")
    data = manifest.to_bytes()
    descriptor = Descriptor.of(OCI_MANIFEST, data)
    descriptor = Descriptor(
        OCI_MANIFEST, descriptor.digest, descriptor.size, {}, manifest.artifact_type
    )
    await repo.put_manifest(data, OCI_MANIFEST, descriptor.digest)
    subject = manifest.subject.digest
    if await repo.referrers_api(subject) is not None:
        return descriptor
    tag = fallback_tag(subject)
    try:
        existing = check_manifest(await repo.get_manifest(tag), "")
        entries = parse_index(existing.data, f"{repo.name} referrers index of {subject}")
    except ArtifactNotFound:
        entries = []
    if descriptor not in entries:
        await repo.put_manifest(index_bytes([*entries, descriptor]), OCI_INDEX, tag)
    return descriptor
