"""An instance's stdin, stdout and stderr as memory files we can read back after a call."""

from __future__ import annotations

import os


class Stdio:
    """What a module writes is read back after each call and handed to its log."""

    def __init__(self, stdin: bytes) -> None:
        self._read_at = {1: 0, 2: 0}
        stdin_fd = os.memfd_create("edge-stdin")
        os.write(stdin_fd, stdin)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        self.fds = [stdin_fd, os.memfd_create("edge-stdout"), os.memfd_create("edge-stderr")]
        self.given: list[int] = []

    def give(self) -> list[int]:
        """Copies for WasmEdge, which may or may not close what it is given."""
        self.given = [os.dup(fd) for fd in self.fds]
        return self.given

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            size = os.fstat(self.fds[fd]).st_size
            if size > self._read_at[fd]:
                out.append(
                    (stream, os.pread(self.fds[fd], size - self._read_at[fd], self._read_at[fd]))
                )
                self._read_at[fd] = size
        return out

    def close(self) -> None:
        """Close ours, and the copies WasmEdge left open (0.17 leaves them)."""
        for mine, given in zip(self.fds, self.given, strict=False):
            try:
                if os.path.samestat(os.fstat(mine), os.fstat(given)):
                    os.close(given)
            except OSError:
                pass  # WasmEdge closed it already
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.given = []
