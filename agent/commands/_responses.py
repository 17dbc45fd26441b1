"""A cache of recent command responses, so a re-sent request is answered, not re-run."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Hashable


class ResponseCache:
    """The latest `size` responses by request key, so a re-sent request is not run twice.

    Holds futures: a duplicate that arrives while the first is still running waits for
    the same outcome instead of starting the handler again.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"response cache size must be at least 1, got {size}")
        self._size = size
        self._entries: OrderedDict[Hashable, asyncio.Future[bytes]] = OrderedDict()

    def get(self, key: Hashable) -> asyncio.Future[bytes] | None:
        future = self._entries.get(key)
        if future is not None:
            self._entries.move_to_end(key)
        return future

    def claim(self, key: Hashable) -> asyncio.Future[bytes]:
        """A new future for `key`, to be resolved with the response body."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._entries[key] = future
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return future

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)
