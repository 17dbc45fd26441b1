"""Atomic file writes: temp file in the target directory, fsync, rename, fsync the
directory. A power cut leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def write_stream(path: Path, chunks: AsyncIterator[bytes]) -> None:
    """Write `chunks` to `path` atomically; on any error nothing appears at `path`."""
    with _replacing(path) as f:
        async for chunk in chunks:
            f.write(chunk)


def write_bytes(path: Path, data: bytes) -> None:
    with _replacing(path) as f:
        f.write(data)
