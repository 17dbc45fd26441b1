"""The fleet's MQTT contract: topics, desired-state documents and the node's report.

Desired state is a retained JSON document per group (`<prefix>/group/<g>/desired`) and
per node (`<prefix>/<node>/desired`):

    {"revision": 1765000000123,
     "modules": [{"name": "scale", "ref": "registry:5000/edge/scale:1.1.0",
                  "digest": "sha256:...", "config": {"factor": 2}}],
     "ts": ..., "nonce": ..., "sig": ...}

`revision` orders the documents of one topic: a node refuses one older than the last it
applied there, so an old document published again (a replay) cannot take a node back.
`digest` pins the version; `config` replaces the module's `config` table. An entry
`{"name": "scale", "absent": true}` says the node must not run the module: it is removed
where it runs. A module no document names is left alone (a lost document must not
remove anything), so removal is always said. A node with
`commands.require_signature` wants `ts`, `nonce` and `sig` as on commands, over the same
canonical bytes with the topic bound in (`agent.commands.signed_bytes`). An empty
retained payload clears the topic's document.

The node merges its documents in layers: its groups in the order of `node.groups`, then
its own document; a later layer's entry for a module replaces an earlier one whole (so
a node document pins one node, the last group listed wins between groups).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from agent._json import parse_json
from agent.commands import CommandVerifier, sign_request
from agent.config import NAME_PATTERN
from agent.errors import AgentError, CommandRejected, DesiredStateError
from agent.supply import parse_reference
from agent.validation import StrictModel, check_unique, format_errors

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_MODULES = 64
MAX_REVISION = 2**53
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


def desired_topic(prefix: str, *, node: str | None = None, group: str | None = None) -> str:
    if (node is None) == (group is None):
        raise ValueError("name a node or a group")
    return f"{prefix}/group/{group}/desired" if group is not None else f"{prefix}/{node}/desired"


def report_topic(prefix: str, node: str) -> str:
    """The node's retained report: what it runs, why it differs from its desired state."""
    return f"{prefix}/{node}/report"


def status_topic(prefix: str, node: str) -> str:
    """The link's retained `online`/`offline` (the will), beside the report."""
    return f"{prefix}/{node}/status"


def rollout_topic(prefix: str, group: str) -> str:
    return f"{prefix}/group/{group}/rollout"


class DesiredModule(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    ref: str | None = Field(None, min_length=1, max_length=1024)
    digest: str | None = Field(None, pattern=DIGEST_PATTERN)
    config: dict[str, Any] | None = None
    """Replaces the module's `config` table (from the node's config file) when given."""
    absent: Literal[True] | None = None
    """The node must not run the module; such an entry has nothing but its name."""

    @field_validator("ref")
    @classmethod
    def _reference(cls, ref: str | None) -> str | None:
        if ref is not None:
            try:
                parse_reference(ref)
            except AgentError as err:
                raise ValueError(str(err)) from err
        return ref

    @model_validator(mode="after")
    def _present_or_absent(self) -> DesiredModule:
        if not self.absent and self.ref is None:
            raise ValueError(f"module {self.name!r}: give ref (or absent: true to remove it)")
        if self.absent and (self.ref, self.digest, self.config) != (None, None, None):
            raise ValueError(f"module {self.name!r}: an absent entry has no ref, digest or config")
        return self


class DesiredDocument(StrictModel):
    revision: int = Field(ge=0, le=MAX_REVISION)
    modules: tuple[DesiredModule, ...] = Field((), max_length=MAX_MODULES)
    ts: int | None = None
    nonce: str | None = None
    sig: str | None = None

    @model_validator(mode="after")
    def _unique(self) -> DesiredDocument:
        check_unique((m.name for m in self.modules), "module")
        return self


@dataclass(frozen=True)
class Wanted:
    """One module of the merged desired state, and the layer it came from."""

    module: DesiredModule
    source: str
    """`group:<name>` or `node`."""


def parse_desired(
    topic: str, payload: bytes, verifier: CommandVerifier | None
) -> DesiredDocument | None:
    """The document on `topic`, or None for an empty (cleared) one.

    Raises DesiredStateError naming what was wrong and what was expected. With a
    verifier, only a document signed by a trusted key for this very topic is taken.
    """
    if not payload:
        return None
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise DesiredStateError(
            f"{topic}: {len(payload)} bytes; a desired-state document is at most "
            f"{MAX_DOCUMENT_BYTES}"
        )
    try:
        raw = parse_json(payload)
    except ValueError as err:
        raise DesiredStateError(f"{topic}: not JSON: {err}") from err
    if not isinstance(raw, dict):
        raise DesiredStateError(
            f'{topic}: expected a JSON object {{"revision": N, "modules": [...]}}'
        )
    try:
        document = DesiredDocument.model_validate(raw)
    except ValidationError as err:
        raise DesiredStateError(f"{topic}: {format_errors(err)}") from err
    if verifier is not None:
        try:
            verifier.check_signature(topic, raw)
        except CommandRejected as err:
            raise DesiredStateError(f"{topic}: refused: {err.reason}") from err
    return document


def desired_payload(
    topic: str,
    revision: int,
    modules: Sequence[Mapping[str, Any]],
    *,
    key_pem: bytes | None = None,
    password: bytes | None = None,
) -> bytes:
    """A desired-state document for `topic`, signed when `key_pem` is given."""
    doc: dict[str, Any] = {"revision": revision, "modules": [dict(m) for m in modules]}
    DesiredDocument.model_validate(doc)  # never publish what a node would refuse
    if key_pem is not None:
        doc = sign_request(key_pem, topic, doc, password=password)
    return _dumps(doc)


def merge(layers: Sequence[tuple[str, DesiredDocument]]) -> dict[str, Wanted]:
    """The modules wanted, by name: later layers replace earlier entries whole."""
    wanted: dict[str, Wanted] = {}
    for source, document in layers:
        for module in document.modules:
            wanted[module.name] = Wanted(module, source)
    return wanted


class ReportModule(StrictModel):
    name: str
    version: str | None = None
    digest: str | None = None
    state: str
    """The pipeline's state of the module: running, failed, ..."""


class ReportWanted(StrictModel):
    name: str
    ref: str | None = None
    """None for an absent entry."""
    digest: str | None = None
    """The entry's pin, as wanted; the digest it runs is in `Report.modules`."""
    absent: Literal[True] | None = None
    source: str
    state: str
    """`converged`, `pending` (being deployed, or the registry is unreachable),
    `failed` (refused: signature, smoke test, ...), `rolled-back` (the rollout guard took
    it back) or `superseded` (a command replaced or removed it); none of the last three
    is tried again until the entry changes."""
    reason: str | None = None


class ReportDevice(StrictModel):
    name: str
    state: str


class Report(StrictModel):
    """What `<prefix>/<node>/report` holds: published when it changes, and at least every
    `fleet.report_interval_s` (its `ts` is the node's last sign of life)."""

    node: str
    groups: tuple[str, ...] = ()
    ts: float
    agent: str
    broker: str | None = None
    healthy: bool
    reasons: tuple[str, ...] = ()
    modules: tuple[ReportModule, ...] = ()
    desired: tuple[ReportWanted, ...] = ()
    desired_errors: tuple[str, ...] = ()
    """Documents refused, each naming its topic and why: the last good one still holds."""
    devices: tuple[ReportDevice, ...] = ()
    outbox_depth: int = 0
    outbox_dropped: int = 0

    def unchanged_since(self, other: Report | None) -> bool:
        """Equal but for `ts` and the outbox depth (which moves with every reading):
        nothing to publish before the next heartbeat."""
        if other is None:
            return False
        same = {"ts": other.ts, "outbox_depth": other.outbox_depth}
        return self.model_copy(update=same) == other

    def payload(self) -> bytes:
        return self.model_dump_json().encode()


def parse_report(topic: str, payload: bytes) -> Report:
    """A node's report; DesiredStateError naming the topic when it is not one."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise DesiredStateError(f"{topic}: {len(payload)} bytes is too large for a report")
    try:
        return Report.model_validate_json(payload)
    except ValidationError as err:
        raise DesiredStateError(f"{topic}: not a node report: {format_errors(err)}") from err


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
