"""The demo's supply side: a demo signing key and the bundled modules, signed.

The key is made on first run under the demo's directory (never in the repository);
each run packages `modules/<name>` into an OCI layout and signs it, so the agent
pulls, verifies and activates them exactly as it would from a registry.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from agent.config import SupplyConfig
from agent.errors import SignatureError
from agent.supply import (
    PublicKey,
    Reference,
    encrypt_private_key,
    generate_key,
    load_private_key,
    open_repository,
    package,
    parse_reference,
    public_key_of,
    sign_reference,
    trusted_keys,
    verify_all,
)

log = logging.getLogger(__name__)


async def prepare(keys: Path, layouts: Mapping[str, Path], modules: Path) -> bool:
    """Make the key if needed, then package each module into its layout and sign it
    unless the demo key has signed that digest already. True when any module was
    signed now: it is new, or it changed since the last run."""
    private = _demo_key(keys)
    trusted = trusted_keys((keys / "cosign.pub",))
    signed_now = False
    for name, layout in layouts.items():
        # A fixed date: unchanged modules keep their digest, so a second run of the
        # demo finds them already active instead of refusing a same-version swap.
        packaged = await package(modules / name, layout, created=0.0)
        ref = parse_reference(f"oci:{packaged.layout}:{packaged.tag}")
        if not await _signed(ref, trusted):
            await sign_reference(ref, private, SupplyConfig())
            log.info("demo module %s signed: %s", name, packaged.digest)
            signed_now = True
    return signed_now


async def _signed(ref: Reference, trusted: list[PublicKey]) -> bool:
    """Whether a trusted key signed `ref` already: re-signing would pile up signatures."""
    repo = open_repository(ref, SupplyConfig())
    try:
        await verify_all(repo, ref, trusted)
    except SignatureError:
        return False
    finally:
        await repo.aclose()
    return True


def _demo_key(keys: Path) -> ec.EllipticCurvePrivateKey:
    key, pub, password_file = keys / "cosign.key", keys / "cosign.pub", keys / "password"
    if not key.exists():
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = generate_key()
        password = secrets.token_urlsafe(24).encode()
        _write_private(password_file, password)
        _write_private(key, encrypt_private_key(private, password))
        pub.write_bytes(public_key_of(private, str(pub)).pem())
        log.info("demo signing key created in %s", keys)
    return load_private_key(key, password_file.read_bytes())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
