"""A directory of compiled-module artifacts, keyed by what produced them.

Artifacts hold native code the engine will map and run, so each `<key>.bin` has its
length and CRC-32 beside it in `<key>.sum`, and is refused when they do not match: a
torn write or a flipped bit on an SD card must cost a recompile, never a crash. A
checksum, not a signature: whoever can write here can write what the agent runs
anyway. The artifact stays a file of its own so that wasmtime can map it instead of
copying it (40 us rather than 150 for a 300 KB module). Writes are atomic
(`agent._atomic`), the artifact before its sum, so a power cut leaves an entry that
checks out or one that is recompiled.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from pathlib import Path

from agent._atomic import write_bytes

log = logging.getLogger(__name__)


def cache_key(*parts: str) -> str:
    """A file-name-safe key from the module digest, engine version and engine config."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _checksum(artifact: bytes) -> str:
    return f"{len(artifact)} {zlib.crc32(artifact):08x}\n"


class CompileCache:
    """Compiled artifacts under `root`: `<key>.bin` and its checksum, `<key>.sum`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{key}.bin"

    def _sum_path(self, key: str) -> Path:
        return self.root / f"{key}.sum"

    def get(self, key: str) -> bytes | None:
        """The artifact for `key`, or None when absent or damaged (then it is removed)."""
        path = self.path(key)
        try:
            expected = self._sum_path(key).read_text()
            artifact = path.read_bytes()
        except FileNotFoundError:
            return None
        if _checksum(artifact) != expected:
            log.warning("compiled cache entry %s is damaged; recompiling", path)
            path.unlink(missing_ok=True)
            self._sum_path(key).unlink(missing_ok=True)
            return None
        return artifact

    def verified_path(self, key: str) -> Path | None:
        """The artifact's file once its checksum matched, for engines that map it."""
        return self.path(key) if self.get(key) is not None else None

    def put(self, key: str, artifact: bytes) -> None:
        write_bytes(self.path(key), artifact)
        write_bytes(self._sum_path(key), _checksum(artifact).encode())
