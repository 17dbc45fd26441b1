"""Signed commands: ECDSA P-256 over a canonical form of the request, and replay refusal.

The signed bytes are the UTF-8 encoding of the request object without its `sig` field,
with the command's full topic added as `"topic"`, written as JSON with keys sorted at
every level, no whitespace (separators `,` and `:`), non-ASCII characters as themselves
(not `\\u` escapes), and no NaN or infinity. In Python:

    json.dumps({**request_without_sig, "topic": topic}, sort_keys=True,
               separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

Binding the topic means a signature for `module.list` on one node cannot be replayed as
`module.remove`, on another node, or on the fleet topic. `sig` is the base64 of the DER
ECDSA-SHA256 signature, as cosign writes it. `ts` (integer Unix seconds) must be within
`max_skew_s` of this node's clock and `nonce` (8 to 128 characters) must not have been
seen in that window; nonces are remembered only until their timestamp leaves the window,
so the memory they take is bounded by the rate limit times twice the window.

Only this module imports `cryptography`.
"""

from __future__ import annotations

import base64
import heapq
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent._json import quoted
from agent.errors import CommandRejected, ConfigError

SIGNED_FIELDS = ("ts", "nonce", "sig")
MAX_TS = 2**53
"""Larger `ts` are refused before any arithmetic: no clock is there, and floats end there."""
MAX_NONCES = 100_000
"""Past this many live nonces new signed commands are refused, not old nonces forgotten."""


def signed_bytes(topic: str, request: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in request.items() if k != "sig"}
    body["topic"] = topic
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def load_public_keys(paths: Sequence[Path]) -> tuple[ec.EllipticCurvePublicKey, ...]:
    keys = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as err:
            raise ConfigError(f"commands.trusted_keys: cannot read {path}: {err}") from err
        except (ValueError, UnsupportedAlgorithm) as err:
            raise ConfigError(
                f"commands.trusted_keys: {path} is not a PEM public key: {err}"
            ) from err
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ConfigError(
                f"commands.trusted_keys: {path} is not an ECDSA P-256 key (like cosign.pub)"
            )
        keys.append(key)
    return tuple(keys)


def sign_request(
    key_pem: bytes,
    topic: str,
    request: Mapping[str, Any],
    *,
    password: bytes | None = None,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """`request` with `ts`, `nonce` and `sig` added, ready to publish on `topic`."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"cannot load the signing key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError("the signing key is not an ECDSA P-256 private key")
    body = {k: v for k, v in request.items() if k not in SIGNED_FIELDS}
    body["ts"] = int(time.time() if now is None else now)
    body["nonce"] = nonce or secrets.token_urlsafe(18)
    der = key.sign(signed_bytes(topic, body), ec.ECDSA(hashes.SHA256()))
    body["sig"] = base64.b64encode(der).decode()
    return body


class CommandVerifier:
    """Accepts a request only if a trusted key signed it, recently, and only once."""

    def __init__(
        self,
        keys: Sequence[ec.EllipticCurvePublicKey],
        max_skew_s: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ConfigError("signed commands need at least one trusted key")
        self._keys = tuple(keys)
        self._skew = max_skew_s
        self._clock = clock
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def authenticate(self, topic: str, request: Mapping[str, Any]) -> tuple[int, str]:
        """Check signature and timestamp; return (ts, nonce) for `claim_nonce`.

        Split from the nonce check so the router can answer a re-delivered request
        (same id, same nonce) from its response cache instead of calling it a replay.
        """
        ts, nonce, signature = _signed_fields(request)
        now = self._clock()
        if abs(now - ts) > self._skew:
            raise CommandRejected(
                "unauthorized",
                f"timestamp {ts} is {now - ts:+.0f} s from this node's clock "
                f"(allowed: ±{self._skew} s)",
            )
        self._check(topic, request, signature)
        return ts, nonce

    def check_signature(self, topic: str, document: Mapping[str, Any]) -> None:
        """Only the signature, not the clock or the nonce: for retained documents (desired
        state), which are delivered again on every connect and ordered by revision."""
        _, _, signature = _signed_fields(document)
        self._check(topic, document, signature)

    def _check(self, topic: str, request: Mapping[str, Any], signature: bytes) -> None:
        try:
            message = signed_bytes(topic, request)
        except ValueError as err:  # NaN or a lone surrogate: no canonical form to check
            raise CommandRejected("malformed", f"the request cannot be signed: {err}") from err
        if not any(_valid(key, signature, message) for key in self._keys):
            raise CommandRejected("unauthorized", "the signature is not from a trusted key")

    def claim_nonce(self, ts: int, nonce: str) -> None:
        """Refuse a nonce seen within the window; remember it until it leaves the window."""
        self._forget_expired(self._clock())
        if nonce in self._seen:
            raise CommandRejected("replayed", f"nonce {nonce!r} was already used")
        if len(self._seen) >= MAX_NONCES:
            raise CommandRejected("rate_limited", "too many signed commands in the window")
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (ts + self._skew, nonce))

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, nonce = heapq.heappop(self._expiry)
            self._seen.discard(nonce)


def _signed_fields(request: Mapping[str, Any]) -> tuple[int, str, bytes]:
    ts, nonce, sig = (request.get(k) for k in SIGNED_FIELDS)
    if sig is None:
        raise CommandRejected("unauthorized", "this node accepts signed commands only: no 'sig'")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= MAX_TS:
        # Bounded so the clock comparison stays in float range (10**400 would overflow).
        raise CommandRejected(
            "unauthorized", f"'ts' must be integer Unix seconds, got {quoted(ts)}"
        )
    if not isinstance(nonce, str) or not 8 <= len(nonce) <= 128:
        raise CommandRejected("unauthorized", "'nonce' must be a string of 8 to 128 characters")
    if not isinstance(sig, str):
        raise CommandRejected("unauthorized", "'sig' must be a base64 string")
    try:
        signature = base64.b64decode(sig, validate=True)
    except ValueError as err:  # binascii.Error, or a character outside ASCII
        raise CommandRejected("unauthorized", f"'sig' is not valid base64: {err}") from err
    return ts, nonce, signature


def _valid(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
