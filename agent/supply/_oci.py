"""OCI values: media types, digests, descriptors, manifests and references.

Pure data: nothing here does I/O. Manifests are parsed from the exact bytes whose
digest pins them; callers keep those bytes, never a re-serialisation.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent._json import parse_json
from agent.errors import PackageError, SupplyError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
WASM_CONFIG = "application/vnd.wasm.config.v0+json"
WASM_LAYER = "application/wasm"
MODULE_MANIFEST_LAYER = "application/vnd.edge-agent.module.manifest.v1+json"
MODEL_LAYER = "application/vnd.edge-agent.model.tflite"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """`digest` itself, when it is a well-formed sha256 digest (the only kind we accept)."""
    if not _DIGEST.match(digest):
        raise SupplyError(f"{digest!r} is not a digest (expected sha256: and 64 hex digits)")
    return digest


def digest_hex(digest: str) -> str:
    return check_digest(digest).removeprefix("sha256:")


@dataclass(frozen=True)
class Descriptor:
    """What an OCI descriptor pins: media type, digest and size of one blob or manifest."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    artifact_type: str | None = None

    @classmethod
    def of(
        cls, media_type: str, data: bytes, annotations: dict[str, str] | None = None
    ) -> Descriptor:
        return cls(media_type, sha256_digest(data), len(data), dict(annotations or {}))

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise SupplyError(f"{where}: a descriptor must be an object")
        try:
            media_type, digest, size = obj["mediaType"], obj["digest"], obj["size"]
        except KeyError as err:
            raise SupplyError(f"{where}: descriptor lacks {err.args[0]!r}") from err
        if (
            not isinstance(media_type, str)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
        ):
            raise SupplyError(f"{where}: descriptor has a bad mediaType or size")
        if not isinstance(digest, str):
            raise SupplyError(f"{where}: descriptor's digest is not a string")
        return cls(
            media_type,
            check_digest(digest),
            size,
            _annotations(obj, where),
            _optional_str(obj, "artifactType", where),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True)
class Manifest:
    """An OCI image manifest (config, layers, optional subject and artifactType)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        doc["config"] = self.config.to_json()
        doc["layers"] = [d.to_json() for d in self.layers]
        if self.subject:
            doc["subject"] = self.subject.to_json()
        if self.annotations:
            doc["annotations"] = self.annotations
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        doc = json_object(data, where)
        if doc.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST or "config" not in doc:
            raise SupplyError(f"{where}: not an OCI image manifest (got {doc.get('mediaType')})")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise SupplyError(f"{where}: layers must be a list")
        subject = doc.get("subject")
        return cls(
            Descriptor.from_json(doc["config"], f"{where} config"),
            tuple(Descriptor.from_json(d, f"{where} layer {i}") for i, d in enumerate(layers)),
            Descriptor.from_json(subject, f"{where} subject") if subject else None,
            _optional_str(doc, "artifactType", where),
            _annotations(doc, where),
        )

    def layer(self, media_type: str) -> Descriptor:
        """The single layer of `media_type`; an artifact with none or several is invalid."""
        found = [d for d in self.layers if d.media_type == media_type]
        if len(found) != 1:
            raise SupplyError(f"manifest has {len(found)} layers of type {media_type}, expected 1")
        return found[0]


def parse_index(data: bytes, where: str) -> list[Descriptor]:
    doc = json_object(data, where)
    manifests = doc.get("manifests")
    if doc.get("mediaType", OCI_INDEX) != OCI_INDEX or not isinstance(manifests, list):
        raise SupplyError(f"{where}: not an OCI image index")
    return [Descriptor.from_json(d, f"{where} entry {i}") for i, d in enumerate(manifests)]


def index_bytes(manifests: list[Descriptor]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [d.to_json() for d in manifests],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def json_object(data: bytes, where: str, error: type[SupplyError] = SupplyError) -> dict[str, Any]:
    """`data` parsed as a JSON object (nested 32 levels at most), or `error` naming `where`."""
    try:
        doc = parse_json(data)
    except ValueError as err:
        raise error(f"{where}: not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise error(f"{where}: expected a JSON object")
    return doc


def _annotations(obj: dict[str, Any], where: str) -> dict[str, str]:
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(v, str) for v in annotations.values()
    ):
        raise SupplyError(f"{where}: annotations must map strings to strings")
    return dict(annotations)


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise SupplyError(f"{where}: {key} must be a string")
    return value


@dataclass(frozen=True)
class Reference:
    """Where an artifact lives: a registry repository or a local OCI layout directory.

    `registry` is None for a layout (`oci:DIR[:TAG]`, `oci:DIR@DIGEST`, as skopeo
    spells it). `tag` and `digest` may both be set; the digest then wins.
    """

    repository: str
    tag: str | None = None
    digest: str | None = None
    registry: str | None = None
    layout: Path | None = None

    @property
    def reference(self) -> str:
        """The tag or digest to resolve: the digest when both are given."""
        ref = self.digest or self.tag
        if ref is None:
            raise SupplyError(f"{self}: no tag or digest to resolve")
        return ref

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.repository, self.tag, digest, self.registry, self.layout)

    def __str__(self) -> str:
        base = f"oci:{self.layout}" if self.layout else f"{self.registry}/{self.repository}"
        return (
            base + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        )


def parse_reference(text: str) -> Reference:
    """Parse `host[:port]/repo[:tag][@sha256:...]` or `oci:DIR[:TAG][@sha256:...]`."""
    if "\0" in text:  # no name has one, and a path with one cannot even be opened
        raise SupplyError(f"{text!r}: a reference cannot contain NUL")
    rest, _, digest = text.partition("@")
    if digest:
        check_digest(digest)
    if rest.startswith("oci:"):
        path, _, tag = rest[4:].rpartition(":") if ":" in rest[4:] else (rest[4:], "", "")
        if not path:
            raise SupplyError(f"{text!r}: an OCI layout reference is oci:DIR[:TAG]")
        _check_tag(text, tag)
        return Reference(Path(path).name, tag or None, digest or None, None, Path(path))
    host, slash, path = rest.partition("/")
    if not slash or not ("." in host or ":" in host or host == "localhost"):
        raise SupplyError(
            f"{text!r}: expected REGISTRY/REPOSITORY[:TAG][@DIGEST] with an explicit "
            "registry host (e.g. registry.example:5000/modules/scale:1.0.0), or oci:DIR[:TAG]"
        )
    repo, _, tag = path.rpartition(":") if ":" in path else (path, "", "")
    if not _REPO.match(repo):
        raise SupplyError(f"{text!r}: {repo!r} is not a valid repository name")
    _check_tag(text, tag)
    if not tag and not digest:
        tag = "latest"
    return Reference(repo, tag or None, digest or None, host, None)


def _check_tag(text: str, tag: str) -> None:
    if tag and not _TAG.match(tag):
        raise PackageError(f"{text!r}: {tag!r} is not a valid tag")
