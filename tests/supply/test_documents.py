"""The supply's parsers on bad documents: OCI manifests, indexes and layouts, Sigstore
bundles, simple signatures, key files and module packages. Each answers with a
`SupplyError`, never the TypeError, AttributeError or RecursionError the input asked for;
signed cases are signed by a trusted key, since only a trusted key gets that far."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import KeyFileError, PackageError, SignatureError, SupplyError
from agent.supply._keys import PublicKey, decrypt_private_key, encrypt_private_key
from agent.supply._layout import LayoutRepository
from agent.supply._manifest import ModuleManifest
from agent.supply._oci import OCI_MANIFEST, Descriptor, Manifest, parse_index, parse_reference
from agent.supply._package import read_module_dir
from agent.supply._sign import (
    BUNDLE_MEDIA_TYPE,
    IN_TOTO,
    make_simple_signing,
    pae,
    verify_bundle,
    verify_simple_signing,
)

DIGEST = "sha256:" + "ab" * 32
KEY = ec.generate_private_key(ec.SECP256R1())
TRUSTED = [PublicKey(KEY.public_key(), "test key")]


def descriptor(**changes: Any) -> dict[str, Any]:
    return {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 2, **changes}


def manifest(**changes: Any) -> bytes:
    doc = {"schemaVersion": 2, "config": descriptor(), "layers": [descriptor()], **changes}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (manifest(annotations=["a"]), "annotations must map strings to strings"),
        (manifest(annotations="ab"), "annotations must map strings to strings"),
        (manifest(annotations={"a": 1}), "annotations must map strings to strings"),
        (manifest(artifactType=["x"]), "artifactType must be a string"),
        (manifest(layers=[descriptor(annotations=5)]), "annotations must map strings"),
        (manifest(layers=[descriptor(artifactType={})]), "artifactType must be a string"),
        (manifest(layers=[descriptor(digest=["sha256:"])]), "digest is not a string"),
        (manifest(layers=[descriptor(size=True)]), "bad mediaType or size"),
        (b'{"layers": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested 5001 levels deep"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
    ],
    ids=[
        "list",
        "string",
        "int value",
        "artifactType",
        "layer",
        "layer type",
        "digest",
        "bool size",
        "deep",
        "NaN",
    ],
)
def test_bad_manifests_are_supply_errors(data: bytes, problem: str) -> None:
    with pytest.raises(SupplyError, match=problem):
        Manifest.parse(data, "m")


def test_bad_indexes_are_supply_errors(tmp_path: Path) -> None:
    with pytest.raises(SupplyError, match="nested"):
        parse_index(b'{"manifests": ' + b"[" * 2000, "index")
    with pytest.raises(SupplyError, match="annotations must map"):
        parse_index(json.dumps({"manifests": [descriptor(annotations=[1])]}).encode(), "i")
    layout = LayoutRepository(tmp_path)
    (tmp_path / "index.json").write_bytes(b"[" * 100_000)
    with pytest.raises(SupplyError, match="nested"):
        asyncio.run(layout.get_manifest("1.0.0"))
    (tmp_path / "index.json").write_bytes(b'{"manifests": []}')
    (tmp_path / "blobs/sha256" / DIGEST.removeprefix("sha256:")).mkdir(parents=True)
    with pytest.raises(PackageError, match="cannot read manifest"):
        asyncio.run(layout.get_manifest(DIGEST))


def test_a_reference_with_nul_is_refused() -> None:
    # An absolute oci: path reaches the layout unresolved, where open() raised ValueError.
    with pytest.raises(SupplyError, match="cannot contain NUL"):
        parse_reference("oci:/srv/lay\0out:1.0.0")


def test_descriptors_stay_hashable() -> None:
    parsed = Descriptor.from_json(descriptor(artifactType="application/x"), "d")
    assert hash(parsed) == hash(Descriptor(OCI_MANIFEST, DIGEST, 2, {}, "application/x"))


def signed_bundle(statement: object) -> bytes:
    payload = statement if isinstance(statement, bytes) else json.dumps(statement).encode()
    signature = KEY.sign(pae(IN_TOTO, payload), ec.ECDSA(hashes.SHA256()))
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": IN_TOTO,
        "signatures": [{"sig": base64.b64encode(signature).decode()}],
    }
    return json.dumps({"mediaType": BUNDLE_MEDIA_TYPE, "dsseEnvelope": envelope}).encode()


STATEMENT = {"_type": "https://in-toto.io/Statement/v1"}


@pytest.mark.parametrize(
    "bundle",
    [
        b"[" * 100_000,
        b'{"dsseEnvelope": {"payload": 5, "payloadType": "x", "signatures": []}}',
        signed_bundle({**STATEMENT, "subject": 7}),
        signed_bundle({**STATEMENT, "subject": [{"digest": ["sha256"]}]}),
        signed_bundle({**STATEMENT, "subject": [{"digest": {"sha256": ["ab"]}}]}),
        signed_bundle(b"[" * 5000),
    ],
    ids=["deep", "payload type", "subject int", "digest list", "sha256 list", "deep payload"],
)
def test_bad_bundles_are_signature_errors(bundle: bytes) -> None:
    with pytest.raises(SignatureError):
        verify_bundle(bundle, DIGEST, TRUSTED)


def test_bad_simple_signatures_are_signature_errors() -> None:
    payload, signature = make_simple_signing(KEY, "edge/scale", DIGEST)
    assert verify_simple_signing(payload, signature, DIGEST, TRUSTED) is TRUSTED[0]
    with pytest.raises(SignatureError, match="not a string"):
        verify_simple_signing(payload, 5, DIGEST, TRUSTED)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="not base64"):
        verify_simple_signing(payload, "é" * 8, DIGEST, TRUSTED)
    for critical in (["x"], {"image": "sha256:x"}, "critical"):
        odd = json.dumps({"critical": critical}).encode()
        signed = base64.b64encode(KEY.sign(odd, ec.ECDSA(hashes.SHA256()))).decode()
        with pytest.raises(SignatureError, match="the signature is for None"):
            verify_simple_signing(odd, signed, DIGEST, TRUSTED)


def reseal(pem: bytes, change: Any) -> bytes:
    """The cosign key file with its JSON document changed by `change`."""
    body = re.search(rb"-----\n(.*)\n-----END", pem, re.S)
    assert body is not None
    doc = json.loads(base64.b64decode(body.group(1)))
    change(doc)
    encoded = base64.b64encode(json.dumps(doc).encode())
    return pem[: body.start(1)] + encoded + pem[body.end(1) :]


def test_damaged_key_files_are_key_file_errors() -> None:
    pem = encrypt_private_key(KEY, b"pw", scrypt_n=1 << 15)
    float_n = reseal(pem, lambda d: d["kdf"]["params"].update(N=32768.0))
    with pytest.raises(KeyFileError, match=r"unsupported scrypt parameters N=32768\.0"):
        decrypt_private_key(float_n, b"pw", "cosign.key")
    short_nonce = reseal(pem, lambda d: d["cipher"].update(nonce="AAAA"))
    with pytest.raises(KeyFileError, match="damaged cosign key: the nonce is 3 bytes"):
        decrypt_private_key(short_nonce, b"pw", "cosign.key")
    kdf_list = reseal(pem, lambda d: d.update(kdf=["scrypt"]))
    with pytest.raises(KeyFileError, match="damaged cosign key"):
        decrypt_private_key(kdf_list, b"pw", "cosign.key")


def test_bad_module_packages_are_package_errors(tmp_path: Path) -> None:
    toml = 'name = "m"\nversion = "1.0.0"\nwasm = "m.wasm"\ntest_readings = "r\\u0000"\n'
    (tmp_path / "module.toml").write_text(toml)
    with pytest.raises(PackageError, match="test_readings: cannot read"):
        read_module_dir(tmp_path)
    (tmp_path / "module.toml").write_text(toml.replace("r\\u0000", "r.jsonl"))
    (tmp_path / "r.jsonl").write_text('{"device": "d", "ts": 1' + "0" * 400 + ', "seq": 0}\n')
    with pytest.raises(PackageError, match="reading 0: 'ts' must be a finite number"):
        read_module_dir(tmp_path)
    (tmp_path / "r.jsonl").write_text("[" * 100_000 + "\n")
    with pytest.raises(PackageError, match="nested 100000 levels deep"):
        read_module_dir(tmp_path)
    layer = {"name": "m", "version": "1.0.0", "test_readings": [{"device": "d", "seq": 0}]}
    layer["test_readings"][0]["ts"] = 10**400  # type: ignore[index]
    with pytest.raises(PackageError, match="'ts' must be a finite number"):
        ModuleManifest.parse(json.dumps(layer).encode(), "layer")
