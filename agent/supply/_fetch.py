"""Pulling a module: resolve, verify the signature, check policy, then download.

The order is the point: the manifest digest is verified against a trusted signature
before any layer is read, the module manifest is checked against policy before the
code and models are downloaded, no blob pinned over `policy.max_layer_bytes` is
requested, and every blob is digest- and size-checked while it streams into the store.
Nothing here hands bytes to an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from agent.config import PolicyConfig, SupplyConfig
from agent.errors import PackageError, PolicyViolation, RegistryError
from agent.supply._access import RegistryAccess, Retry
from agent.supply._keys import PublicKey, load_public_key
from agent.supply._layout import LayoutRepository
from agent.supply._manifest import ModuleManifest
from agent.supply._oci import MODULE_MANIFEST_LAYER, WASM_CONFIG, WASM_LAYER, Manifest, Reference
from agent.supply._policy import check_policy
from agent.supply._repo import Repository, check_manifest, read_blob, verified_chunks
from agent.supply._signatures import sign, verify
from agent.supply._store import ContentStore, InstalledModule

if TYPE_CHECKING:
    from agent.supply._registry import RegistryClient


@dataclass(frozen=True)
class Verified:
    """A module artifact whose manifest digest a trusted key signed."""

    digest: str
    manifest_bytes: bytes
    manifest: Manifest
    module: ModuleManifest
    key: PublicKey


def open_repository(ref: Reference, config: SupplyConfig) -> Repository:
    """The repository `ref` names, with the auth and CA configured for its registry."""
    if ref.layout is not None:
        return LayoutRepository(ref.layout)
    return registry_client(ref.registry or "", config).repository(ref.repository)


def registry_client(host: str, config: SupplyConfig) -> RegistryClient:
    """A client for registry `host` with the auth and CA `supply.registries` give it
    (anonymous HTTPS for a host it does not list)."""
    # Imported here: httpx costs 12 MB that a node fed from OCI layouts keeps.
    from agent.supply._registry import RegistryClient  # noqa: PLC0415

    access = RegistryAccess(
        retry=Retry(config.retry_attempts, config.retry_initial_s, config.retry_max_s)
    )
    for registry in config.registries:
        if registry.host == host:
            password = None
            if registry.password_file is not None:
                try:
                    password = registry.password_file.read_text(encoding="utf-8").strip()
                except OSError as err:
                    raise RegistryError(f"{registry.password_file}: cannot read: {err}") from err
            access = RegistryAccess(
                registry.insecure, registry.ca, registry.username, password, access.retry
            )
    return RegistryClient(host, access)


async def sign_reference(
    ref: Reference,
    private: ec.EllipticCurvePrivateKey,
    config: SupplyConfig,
    *,
    legacy: bool = False,
) -> tuple[str, str]:
    """Sign the manifest `ref` resolves to; returns its digest and where the signature went."""
    repo = open_repository(ref, config)
    try:
        target = check_manifest(await repo.get_manifest(ref.reference), ref.reference)
        return target.digest, await sign(repo, target, private, legacy=legacy)
    finally:
        await repo.aclose()


def trusted_keys(paths: tuple[Path, ...]) -> list[PublicKey]:
    return [load_public_key(p) for p in paths]


async def resolve_verified(repo: Repository, ref: Reference, keys: list[PublicKey]) -> Verified:
    """Resolve `ref`, verify its signature, and read (verified) its module manifest."""
    fetched = check_manifest(await repo.get_manifest(ref.reference), ref.reference)
    key = await verify(repo, fetched.digest, keys)
    manifest = Manifest.parse(fetched.data, f"{ref}")
    if manifest.config.media_type != WASM_CONFIG:
        raise PackageError(
            f"{ref}: config is {manifest.config.media_type}, expected {WASM_CONFIG} (not a module)"
        )
    manifest.layer(WASM_LAYER)
    module_layer = manifest.layer(MODULE_MANIFEST_LAYER)
    module = ModuleManifest.parse(await read_blob(repo, module_layer), f"{ref} module manifest")
    return Verified(fetched.digest, fetched.data, manifest, module, key)


async def verify_all(repo: Repository, ref: Reference, keys: list[PublicKey]) -> Verified:
    """Signature and every blob (streamed, not kept): what `module verify` reports."""
    verified = await resolve_verified(repo, ref, keys)
    for descriptor in (verified.manifest.config, *verified.manifest.layers):
        async for _ in verified_chunks(descriptor, repo.blob_chunks(descriptor)):
            pass
    return verified


async def pull(
    repo: Repository,
    ref: Reference,
    keys: list[PublicKey],
    store: ContentStore,
    policy: PolicyConfig,
) -> InstalledModule:
    """Verify, check policy, then download every blob into the store."""
    verified = await resolve_verified(repo, ref, keys)
    blobs = (verified.manifest.config, *verified.manifest.layers)
    for descriptor in blobs:
        if descriptor.size > policy.max_layer_bytes:
            raise PolicyViolation(
                f"{ref}: {descriptor.media_type} {descriptor.digest} is pinned at "
                f"{descriptor.size} bytes, over policy.max_layer_bytes {policy.max_layer_bytes}"
            )
    check_policy(verified.module, verified.manifest, policy)
    for descriptor in blobs:
        await store.ingest(descriptor, repo.blob_chunks(descriptor))
    store.put(verified.manifest_bytes)
    return store.load(verified.digest)
