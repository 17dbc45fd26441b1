"""The shape shared by the agent's small local servers: one request, one answer, close.

The control socket and the metrics endpoint both read one request under a timeout,
answer it from the status snapshot and hang up; a slow, silent or oversized client is
dropped without an answer and never holds the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from types import TracebackType

log = logging.getLogger(__name__)


class OneShotServer(ABC):
    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._server: asyncio.Server | None = None

    @abstractmethod
    async def _read_request(self, reader: asyncio.StreamReader) -> bytes: ...

    @abstractmethod
    def _answer(self, request: bytes) -> bytes: ...

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(self._read_request(reader), self._timeout)
            except (TimeoutError, ValueError, EOFError, asyncio.LimitOverrunError) as err:
                # ValueError/LimitOverrun: past the reader's limit; EOF: hung up early.
                log.debug("%s: dropped a client: %r", type(self).__name__, err)
                return
            writer.write(self._answer(request))
            await writer.drain()
        except ConnectionError as err:
            log.debug("%s: client went away: %r", type(self).__name__, err)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()
