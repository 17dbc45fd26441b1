"""`module push`: copy an artifact between repositories (a layout to a registry, usually),
each blob checked against its digest on the way, missing blobs only.

A blob passes through memory whole (`Repository.put_blob` takes bytes), bounded only by
the size the source's manifest pins: this runs where packages are made, not on a node."""

from __future__ import annotations

from agent.supply._oci import Manifest, Reference
from agent.supply._repo import Fetched, Repository, check_manifest, read_blob


async def copy_artifact(
    source: Repository, ref: Reference, target: Repository, tag: str
) -> Fetched:
    fetched = check_manifest(await source.get_manifest(ref.reference), ref.reference)
    manifest = Manifest.parse(fetched.data, str(ref))
    for descriptor in (manifest.config, *manifest.layers):
        if not await target.has_blob(descriptor.digest):
            data = await read_blob(source, descriptor, limit=descriptor.size)
            await target.put_blob(data, descriptor.digest)
    await target.put_manifest(fetched.data, fetched.media_type, tag)
    return fetched
