"""A directory of compiled-module artifacts, keyed by what produced them.

Artifacts hold native code the engine will map and run, so each file starts with the
sha256 of the rest and is refused when that does not match: a torn write or a flipped
bit on an SD card must cost a recompile, never a crash. Writes are atomic (temp file,
fsync, rename) so a power cut leaves either the old state or the new.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_DIGEST_LEN = 32


def cache_key(*parts: str) -> str:
    """A file-name-safe key from the module digest, engine version and engine config."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class CompileCache:
    """Compiled artifacts under `root`, one file per key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{key}.bin"

    def get(self, key: str) -> bytes | None:
        """The artifact for `key`, or None when absent or damaged (then it is removed)."""
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        body = blob[_DIGEST_LEN:]
        if hashlib.sha256(body).digest() != blob[:_DIGEST_LEN]:
            log.warning("compiled cache entry %s is damaged; recompiling", path)
            path.unlink(missing_ok=True)
            return None
        return body

    def put(self, key: str, artifact: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(artifact).digest())
                f.write(artifact)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
