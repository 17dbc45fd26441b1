"""Attaching cosign signatures to an artifact and finding the one that verifies.

Signing writes a Sigstore bundle as an OCI referrer (cosign 3) or, on request, the
legacy `sha256-<hex>.sig` tag (cosign 2). Verification accepts either, from any of the
trusted keys, and fails with every reason it found when none holds.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import ArtifactNotFound, SignatureError, SupplyError
from agent.supply._keys import PublicKey
from agent.supply._oci import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    digest_hex,
)
from agent.supply._referrers import attach_referrer, list_referrers
from agent.supply._repo import Fetched, Repository, check_manifest, read_blob
from agent.supply._sign import (
    BUNDLE_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    make_bundle,
    make_simple_signing,
    verify_bundle,
    verify_simple_signing,
)

_MAX_SIGNATURE_BYTES = 1024 * 1024
_SIG_CONFIG = "application/vnd.oci.image.config.v1+json"


def legacy_tag(digest: str) -> str:
    return f"sha256-{digest_hex(digest)}.sig"


async def _put_json_blob(repo: Repository, media_type: str, data: bytes) -> Descriptor:
    descriptor = Descriptor.of(media_type, data)
    if not await repo.has_blob(descriptor.digest):
        await repo.put_blob(data, descriptor.digest)
    return descriptor


async def sign(
    repo: Repository, target: Fetched, private: ec.EllipticCurvePrivateKey, *, legacy: bool = False
) -> str:
    """Sign the manifest `target`; returns where the signature went (digest or tag)."""
    public = PublicKey(private.public_key(), "signing key")
    if legacy:
        payload, signature = make_simple_signing(private, repo.name, target.digest)
        layer = Descriptor.of(SIMPLE_SIGNING, payload, {SIGNATURE_ANNOTATION: signature})
        await _put_json_blob(repo, SIMPLE_SIGNING, payload)
        config = await _put_json_blob(
            repo, _SIG_CONFIG, json.dumps({"architecture": "", "os": ""}).encode()
        )
        tag = legacy_tag(target.digest)
        try:
            old = Manifest.parse(check_manifest(await repo.get_manifest(tag), "").data, tag).layers
        except ArtifactNotFound:
            old = ()
        manifest = Manifest(config, (*[d for d in old if d.digest != layer.digest], layer))
        await repo.put_manifest(manifest.to_bytes(), OCI_MANIFEST, tag)
        return tag
    bundle = make_bundle(private, public.hint, repo.name, target.digest)
    layer = await _put_json_blob(repo, BUNDLE_MEDIA_TYPE, bundle)
    empty = await _put_json_blob(repo, OCI_EMPTY, EMPTY_JSON)
    subject = Descriptor(target.media_type or OCI_MANIFEST, target.digest, len(target.data))
    referrer = Manifest(empty, (layer,), subject, BUNDLE_MEDIA_TYPE)
    return (await attach_referrer(repo, referrer)).digest


async def verify(repo: Repository, digest: str, keys: list[PublicKey]) -> PublicKey:
    """The trusted key that signed `digest` in `repo`; `SignatureError` lists why none did."""
    if not keys:
        raise SignatureError("no trusted keys are configured; nothing can be verified")
    reasons: list[str] = []
    key = await _from_bundles(repo, digest, keys, reasons) or await _from_legacy(
        repo, digest, keys, reasons
    )
    if key is not None:
        return key
    if not reasons:
        raise SignatureError(
            f"{repo.name}@{digest} is not signed (no bundle referrer, no .sig tag)"
        )
    raise SignatureError(f"{repo.name}@{digest}: no valid signature: " + "; ".join(reasons))


async def _from_bundles(
    repo: Repository, digest: str, keys: list[PublicKey], reasons: list[str]
) -> PublicKey | None:
    for referrer in await list_referrers(repo, digest, BUNDLE_MEDIA_TYPE):
        try:
            manifest = await _signature_manifest(repo, referrer.digest)
            layers = [d for d in manifest.layers if d.media_type == BUNDLE_MEDIA_TYPE]
            if not layers or layers[0].size > _MAX_SIGNATURE_BYTES:
                raise SignatureError("holds no bundle of a sane size")
            return verify_bundle(await read_blob(repo, layers[0]), digest, keys)
        except SupplyError as err:
            reasons.append(f"bundle {referrer.digest}: {err}")
    return None


async def _from_legacy(
    repo: Repository, digest: str, keys: list[PublicKey], reasons: list[str]
) -> PublicKey | None:
    tag = legacy_tag(digest)
    try:
        manifest = await _signature_manifest(repo, tag)
    except ArtifactNotFound:
        return None
    except SupplyError as err:
        reasons.append(f"{tag}: {err}")
        return None
    for layer in manifest.layers:
        if layer.media_type != SIMPLE_SIGNING or layer.size > _MAX_SIGNATURE_BYTES:
            continue
        try:
            payload = await read_blob(repo, layer)
            signature = layer.annotations.get(SIGNATURE_ANNOTATION, "")
            return verify_simple_signing(payload, signature, digest, keys)
        except SupplyError as err:
            reasons.append(f"{tag} layer {layer.digest}: {err}")
    return None


async def _signature_manifest(repo: Repository, reference: str) -> Manifest:
    checked = check_manifest(await repo.get_manifest(reference), reference)
    return Manifest.parse(checked.data, f"{repo.name} signature {checked.digest}")
