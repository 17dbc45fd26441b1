"""cosign-compatible signatures over a manifest digest, made and checked offline.

Two formats: the Sigstore bundle v0.3 (a DSSE envelope around an in-toto statement,
cosign 3's default) and the legacy simple-signing payload (cosign 2's `.sig` tag).
Verification is key-only, like `cosign verify --key K --insecure-ignore-tlog`: a
signature counts when one trusted key verifies it and it names the expected digest.
Pure functions over bytes; fetching signatures is `_fetch`'s job.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent._json import parse_json
from agent.errors import SignatureError
from agent.supply._keys import PublicKey
from agent.supply._oci import digest_hex, json_object

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
IN_TOTO = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://sigstore.dev/cosign/sign/v1"
_ECDSA = ec.ECDSA(hashes.SHA256())


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the envelope's signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def make_bundle(private: ec.EllipticCurvePrivateKey, hint: str, name: str, digest: str) -> bytes:
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest_hex(digest)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {},
    }
    payload = json.dumps(statement, separators=(",", ":")).encode()
    signature = private.sign(pae(IN_TOTO, payload), _ECDSA)
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}},
        "dsseEnvelope": {
            "payload": _b64(payload),
            "payloadType": IN_TOTO,
            "signatures": [{"sig": _b64(signature), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode()


def verify_bundle(bundle: bytes, digest: str, keys: Sequence[PublicKey]) -> PublicKey:
    """The trusted key that signed `bundle` for `digest`; `SignatureError` says why not."""
    try:
        doc = parse_json(bundle)
        envelope = doc["dsseEnvelope"]
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
    except (ValueError, KeyError, TypeError) as err:
        raise SignatureError(f"malformed Sigstore bundle: {err!r}") from err
    if doc.get("mediaType") != BUNDLE_MEDIA_TYPE or payload_type != IN_TOTO:
        raise SignatureError(
            f"unsupported bundle {doc.get('mediaType')} / {payload_type}; "
            f"expected {BUNDLE_MEDIA_TYPE} with an in-toto DSSE envelope"
        )
    key = _first_verifying(keys, signatures, pae(payload_type, payload))
    statement = json_object(payload, "in-toto statement", SignatureError)
    signed = _subject_digests(statement.get("subject"))
    if statement.get("_type") != STATEMENT_TYPE or digest_hex(digest) not in signed:
        raise SignatureError(
            f"the signature is for {sorted(f'sha256:{d}' for d in signed)}, not {digest}"
        )
    return key


def _subject_digests(subjects: object) -> set[str]:
    """The sha256 digests an in-toto statement's `subject` list names; malformed entries
    name none (a signed statement is still input: its key may sign anything)."""
    found = set()
    for subject in subjects if isinstance(subjects, list) else ():
        digests = subject.get("digest") if isinstance(subject, dict) else None
        sha256 = digests.get("sha256") if isinstance(digests, dict) else None
        if isinstance(sha256, str) and sha256:
            found.add(sha256)
    return found


def make_simple_signing(
    private: ec.EllipticCurvePrivateKey, name: str, digest: str
) -> tuple[bytes, str]:
    """(payload, base64 signature) of a legacy cosign signature layer."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": name},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()
    return payload, _b64(private.sign(payload, _ECDSA))


def verify_simple_signing(
    payload: bytes, signature_b64: str, digest: str, keys: Sequence[PublicKey]
) -> PublicKey:
    if not isinstance(signature_b64, str):
        raise SignatureError("signature annotation is not a string")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError as err:  # binascii.Error, or a character outside ASCII
        raise SignatureError(f"signature annotation is not base64: {err}") from err
    key = _first_verifying(keys, [signature], payload)
    doc = json_object(payload, "simple signing payload", SignatureError)
    critical = _member(doc, "critical")
    signed = _member(critical, "image").get("docker-manifest-digest")
    if critical.get("type") != "cosign container image signature" or signed != digest:
        raise SignatureError(f"the signature is for {signed!r:.80}, not {digest}")
    return key


def _member(doc: dict[str, object], key: str) -> dict[str, object]:
    """`doc[key]` when it is an object; an empty one when absent or of another type."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _first_verifying(
    keys: Sequence[PublicKey], signatures: Sequence[bytes], message: bytes
) -> PublicKey:
    for key in keys:
        for signature in signatures:
            try:
                key.key.verify(signature, message, _ECDSA)
            except InvalidSignature:
                continue
            return key
    raise SignatureError(f"not signed by any trusted key ({len(keys)} trusted)")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
