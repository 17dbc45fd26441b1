"""The commands this package can answer by itself: `log.level` and `status`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.commands._table import LogLevelArgs, NoArgs
from agent.status import SnapshotProvider, StatusSnapshot


async def set_log_level(args: LogLevelArgs) -> dict[str, Any]:
    """Set a logger's level at run time; answers with the level it had before."""
    logger = logging.getLogger(args.logger)
    before = logging.getLevelName(logger.getEffectiveLevel()).lower()
    logger.setLevel(args.level.upper())
    return {"logger": args.logger or "root", "level": args.level, "previous": before}


def status_handler(provider: SnapshotProvider) -> Callable[[NoArgs], Awaitable[StatusSnapshot]]:
    """A `status` handler serving the same snapshot as the control socket."""

    async def status(_: NoArgs) -> StatusSnapshot:
        return provider()

    return status
