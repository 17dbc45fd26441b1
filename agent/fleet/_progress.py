"""The rollout document: a rollout's whole progress, retained on `<prefix>/group/<g>/rollout`.

Written at every step, so a driver killed at any point can be resumed from it by another
process on another machine. Nodes never read it, so it is not signed. Each node's entry
keeps what the rollout must put back when it halts or is aborted: the node document's
previous entry for the module and the digest the node ran before.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import RolloutError
from agent.fleet._documents import DesiredModule
from agent.validation import format_errors

Phase = Literal[
    "deploying",  # the current wave's nodes are converging
    "soaking",  # the current wave converged; it must stay healthy until `soak_until`
    "finishing",  # every wave soaked: the group document gets the module
    "cleaning",  # the group document has it: the node documents lose the rollout's entries
    "done",
    "halting",  # too many failures: the current wave is being put back
    "halted",
    "aborting",  # `rollout abort`: every node the rollout changed is being put back
    "aborted",
]
ACTIVE_PHASES = frozenset({"deploying", "soaking", "finishing", "cleaning", "halting", "aborting"})

MAX_ROLLOUT_BYTES = 4 * 1024 * 1024
"""A few thousand nodes with their previous entries."""

NodeStep = Literal["waiting", "deferred", "deploying", "converged", "failed"]
"""`waiting` for its wave; `deferred`: offline when its wave started, it follows the group
document at the end; `deploying`: its node document names the version."""


class _Record(BaseModel):
    """Unknown keys are errors, as in every document; unlike them, a rollout's progress
    changes at each step, so it is mutable and every assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NodeProgress(_Record):
    wave: int = Field(ge=0)
    state: NodeStep = "waiting"
    reason: str | None = None
    had_doc: bool = False
    """It had a node document before the rollout wrote one."""
    previous: DesiredModule | None = None
    """Its node document's entry for the module before the rollout."""
    ran: str | None = None
    """The digest of the module it ran before the rollout, from its report."""

    @property
    def touched(self) -> bool:
        """The rollout wrote its node document."""
        return self.state in ("deploying", "converged", "failed")


class RolloutDocument(_Record):
    id: str
    group: str
    module: str
    ref: str
    digest: str | None = None
    """Fixed by the first node to converge; later entries are pinned to it."""
    wave_spec: str
    waves: tuple[int, ...]
    """How many members have been reached after each wave, cumulative."""
    soak_s: float = Field(ge=0)
    max_failures: int = Field(ge=0)
    wave_timeout_s: float = Field(gt=0)
    phase: Phase = "deploying"
    wave: int = Field(0, ge=0)
    """The current wave, from 0."""
    wave_started: float | None = None
    soak_until: float | None = None
    nodes: dict[str, NodeProgress]
    """By node id, in member order."""
    failures: int = Field(0, ge=0)
    reasons: tuple[str, ...] = ()
    """Why nodes failed, why it halted."""
    group_had_doc: bool | None = None
    """Recorded when finishing: whether the group had a document, and its entry."""
    group_previous: DesiredModule | None = None
    owner: str = ""
    """`host:pid` of the driver."""
    lease: str = ""
    """The driver's own token."""
    leased: float = 0.0
    """When that driver took the rollout: a driver yields to a newer lease, and outlasts
    the last heartbeats of an older one."""
    heartbeat: float
    started: float
    updated: float

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def taken_over(self) -> bool:
        """Its driver took it from another (`resume`, `abort`) rather than starting it."""
        return self.leased > self.started

    def wave_nodes(self, wave: int) -> list[str]:
        return [n for n, p in self.nodes.items() if p.wave == wave]

    def take(self, now: float) -> None:
        """Make this process the rollout's driver, from `now`."""
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.lease = uuid.uuid4().hex[:12]
        self.leased = now

    def payload(self) -> bytes:
        return self.model_dump_json().encode()


def parse_rollout(topic: str, payload: bytes) -> RolloutDocument:
    if len(payload) > MAX_ROLLOUT_BYTES:
        raise RolloutError(f"{topic}: {len(payload)} bytes is too large for a rollout document")
    try:
        return RolloutDocument.model_validate_json(payload)
    except ValidationError as err:
        raise RolloutError(f"{topic}: not a rollout document: {format_errors(err)}") from err
