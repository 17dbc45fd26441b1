"""Who the node is (its id, state and fleet groups) and how it takes part in a fleet."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from agent.config._fields import NAME_PATTERN, ConfigPath
from agent.validation import StrictModel, check_unique

RESERVED_NODE_IDS = frozenset({"group", "fleet"})
"""Node ids that would collide with the fleet's own topics under the prefix."""


class NodeConfig(StrictModel):
    id: str = Field(default_factory=socket.gethostname, pattern=NAME_PATTERN)
    """The node's name in MQTT topics and status; the host name unless set."""
    state_dir: ConfigPath = Path("/var/lib/edge-agent")
    """Where the agent keeps its store, caches and outbox."""
    groups: tuple[Annotated[str, Field(pattern=NAME_PATTERN)], ...] = Field((), max_length=16)
    """Fleet groups: the node takes `<prefix>/group/<g>/cmd/...` commands and follows
    `<prefix>/group/<g>/desired`; a later group's desired entry wins over an earlier one's."""

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, node_id: str) -> str:
        if node_id in RESERVED_NODE_IDS:
            raise ValueError(
                f"{node_id!r} is a level of the fleet's own topics (<prefix>/{node_id}/...); "
                "choose another node id"
            )
        return node_id

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, groups: tuple[str, ...]) -> tuple[str, ...]:
        check_unique(groups, "group")
        return groups


class FleetConfig(StrictModel):
    follow_desired: bool = True
    """Converge on the retained desired-state documents of the node and its groups."""
    report_interval_s: float = Field(60.0, ge=1, le=86400)
    """The retained report (`<prefix>/<node>/report`) goes out when it changes and at
    least this often: its `ts` is the node's last sign of life in `edge-agent fleet status`."""
