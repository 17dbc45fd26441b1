"""The supply CLI end to end against a real registry, and cosign key-file compatibility
checked against cosign's documented format by an independent implementation here."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import nacl.secret
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.cli import main
from agent.errors import KeyFileError
from agent.supply import decrypt_private_key, encrypt_private_key, generate_key
from agent.supply._oci import Manifest

from .conftest import PASSWORD, KeyPair, Registry, module_dir


def test_key_file_decrypts_per_cosign_format() -> None:
    """Open our cosign.key with nothing but the documented format: scrypt + secretbox."""
    key = generate_key()
    pem = encrypt_private_key(key, PASSWORD).decode()
    label = "ENCRYPTED SIGSTORE PRIVATE KEY"
    match = re.fullmatch(f"-----BEGIN {label}-----\n(.+)\n-----END {label}-----\n", pem, re.S)
    assert match is not None
    doc = json.loads(base64.b64decode(match.group(1)))
    assert doc["kdf"]["name"] == "scrypt"
    assert doc["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1}
    assert doc["cipher"]["name"] == "nacl/secretbox"
    secret = hashlib.scrypt(
        PASSWORD,
        salt=base64.b64decode(doc["kdf"]["salt"]),
        n=65536,
        r=8,
        p=1,
        maxmem=1 << 27,
        dklen=32,
    )
    pkcs8 = nacl.secret.SecretBox(secret).decrypt(
        base64.b64decode(doc["ciphertext"]), base64.b64decode(doc["cipher"]["nonce"])
    )
    opened = serialization.load_der_private_key(pkcs8, None)
    assert isinstance(opened, ec.EllipticCurvePrivateKey)
    assert opened.private_numbers() == key.private_numbers()


def test_key_file_made_per_cosign_format_decrypts() -> None:
    """A cosign.key built here from the format spec (older label, N=2^15) opens."""
    key = generate_key()
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    salt, nonce = os.urandom(32), os.urandom(24)
    secret = hashlib.scrypt(PASSWORD, salt=salt, n=32768, r=8, p=1, maxmem=1 << 26, dklen=32)
    sealed = nacl.secret.SecretBox(secret).encrypt(pkcs8, nonce).ciphertext
    doc = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": 32768, "r": 8, "p": 1},
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    body = base64.b64encode(json.dumps(doc).encode()).decode()
    label = "ENCRYPTED COSIGN PRIVATE KEY"
    pem = f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"
    opened = decrypt_private_key(pem.encode(), PASSWORD, "cosign.key")
    assert opened.private_numbers() == key.private_numbers()
    with pytest.raises(KeyFileError, match="wrong password"):
        decrypt_private_key(pem.encode(), b"nope", "cosign.key")


def test_cli_generate_package_push_sign_verify_pull_and_tamper(
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD.decode())
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "agent.toml"
    registries = f'[[supply.registries]]\nhost = "{registry.host}"\ninsecure = true\n'
    config.write_text('[node]\nstate_dir = "state"\n' + registries)
    assert main(["key", "generate"]) == 0
    capsys.readouterr()
    keys = KeyPair(tmp_path / "cosign.key", tmp_path / "cosign.pub")
    assert main(["key", "generate"]) == 1, "refuses to overwrite a key"
    directory = module_dir(tmp_path, "1.0.0")
    assert main(["module", "package", str(directory), "--output", "out"]) == 0
    layout_ref = capsys.readouterr().out.strip().rsplit("@", 1)[0]
    ref = f"{registry.host}/modules/faulty:1.0.0"
    cfg = ["--config", str(config)]
    assert main(["module", "push", layout_ref, ref, *cfg]) == 0
    assert main(["module", "verify", ref, "--key", str(keys.public), *cfg]) == 1
    assert "is not signed" in capsys.readouterr().err
    assert main(["module", "sign", ref, "--key", str(keys.private), *cfg]) == 0
    assert main(["module", "verify", ref, "--key", str(keys.public), *cfg]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["module", "pull", ref, "--key", str(keys.public), *cfg]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert Path(pulled["wasm"]).read_bytes() == (directory / "faulty.wasm").read_bytes()

    manifest = Manifest.parse((Path("out/blobs/sha256") / pulled["digest"][7:]).read_bytes(), "m")
    for blob in (manifest.config, *manifest.layers):
        path = registry.blob(blob.digest)
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert main(["module", "verify", ref, "--key", str(keys.public), *cfg]) == 1
        assert blob.digest in capsys.readouterr().err
        path.write_bytes(original)
    assert main(["module", "verify", ref, "--key", str(keys.public), *cfg]) == 0
