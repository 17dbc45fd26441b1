"""cosign's key files: `cosign.pub` (PEM SubjectPublicKeyInfo, ECDSA P-256) and the
encrypted `cosign.key` (scrypt-derived key, NaCl secretbox around PKCS#8).

Operators keep the keys they already made with `cosign generate-key-pair`, so the
formats here follow cosign byte for byte. This module owns key formats only; signing
and verification live in `_sign`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent._json import parse_json
from agent.errors import KeyFileError

PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
"""The new label first; cosign before 2.0 wrote the second, and both still verify."""
SCRYPT_N = 65536
_ACCEPTED_N = (1 << 15, 1 << 16, 1 << 17)
_SCRYPT_R, _SCRYPT_P = 8, 1
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


@dataclass(frozen=True)
class PublicKey:
    """A trusted verification key; `hint` is how Sigstore bundles name it."""

    key: ec.EllipticCurvePublicKey
    source: str

    @property
    def der(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def hint(self) -> str:
        return base64.b64encode(hashlib.sha256(self.der).digest()).decode()

    def pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_of(private: ec.EllipticCurvePrivateKey, source: str) -> PublicKey:
    return PublicKey(private.public_key(), source)


def load_public_key(path: Path) -> PublicKey:
    """Read a `cosign.pub`; only ECDSA P-256, the only kind cosign makes by default."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read public key: {err}") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyFileError(f"{path}: not a PEM public key (expected cosign.pub)") from err
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: expected an ECDSA P-256 public key")
    return PublicKey(key, str(path))


def encrypt_private_key(
    private: ec.EllipticCurvePrivateKey, password: bytes, *, scrypt_n: int = SCRYPT_N
) -> bytes:
    """The PEM text of an encrypted `cosign.key`."""
    if scrypt_n not in _ACCEPTED_N:
        raise KeyFileError(f"scrypt N must be one of {_ACCEPTED_N}, got {scrypt_n}")
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(32)
    nonce = os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(_derive(password, salt, scrypt_n))
    sealed = box.encrypt(pkcs8, nonce).ciphertext
    doc = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": scrypt_n, "r": _SCRYPT_R, "p": _SCRYPT_P},
            "salt": _b64(salt),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)},
        "ciphertext": _b64(sealed),
    }
    body = base64.encodebytes(json.dumps(doc).encode()).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        f"-----BEGIN {PEM_TYPES[0]}-----\n" + "\n".join(lines) + f"\n-----END {PEM_TYPES[0]}-----\n"
    ).encode()


def decrypt_private_key(pem: bytes, password: bytes, source: str) -> ec.EllipticCurvePrivateKey:
    """Open a `cosign.key`; a wrong password and a damaged file get different errors."""
    match = _PEM.search(pem.decode("ascii", "replace"))
    if not match or match.group(1) not in PEM_TYPES:
        raise KeyFileError(
            f"{source}: not a cosign private key (expected a PEM block {PEM_TYPES[0]})"
        )
    try:
        doc = parse_json(base64.b64decode(match.group(2)))
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        salt, nonce = base64.b64decode(kdf["salt"]), base64.b64decode(cipher["nonce"])
        sealed = base64.b64decode(doc["ciphertext"])
        n, r, p = params["N"], params["r"], params["p"]
    except (ValueError, KeyError, TypeError) as err:
        raise KeyFileError(f"{source}: damaged cosign key: {err!r}") from err
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise KeyFileError(f"{source}: expected kdf scrypt and cipher nacl/secretbox")
    if not _whole(n) or n not in _ACCEPTED_N or (r, p) != (_SCRYPT_R, _SCRYPT_P):
        raise KeyFileError(
            f"{source}: unsupported scrypt parameters N={n!r:.20} r={r!r:.20} p={p!r:.20}"
        )
    if len(nonce) != nacl.secret.SecretBox.NONCE_SIZE:
        raise KeyFileError(f"{source}: damaged cosign key: the nonce is {len(nonce)} bytes")
    try:
        pkcs8 = nacl.secret.SecretBox(_derive(password, salt, n)).decrypt(sealed, nonce)
    except nacl.exceptions.CryptoError as err:
        raise KeyFileError(f"{source}: wrong password for the private key") from err
    try:
        key = serialization.load_der_private_key(pkcs8, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise KeyFileError(f"{source}: the sealed key is not a PKCS#8 private key") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{source}: expected an ECDSA P-256 private key")
    return key


def load_private_key(path: Path, password: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read private key: {err}") from err
    return decrypt_private_key(pem, password, str(path))


def _derive(password: bytes, salt: bytes, n: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=_SCRYPT_R, p=_SCRYPT_P, maxmem=256 * n * _SCRYPT_R, dklen=32
    )


def _whole(n: object) -> bool:
    """An integer, not a float or bool that compares equal to one (65536.0 == 65536)."""
    return isinstance(n, int) and not isinstance(n, bool)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
