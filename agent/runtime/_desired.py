"""Following desired state: the node's and its groups' retained documents, converged on.

Each document arriving (at every connect, since they are retained, and at every change)
is checked (`agent.fleet.parse_desired`: shape, signature, revision not older than the
last one applied on its topic); a refused one is named in the report and the last good
one of its topic still holds, so the running modules stay as they are. The layers are
merged and each wanted module goes through the supply's verified deploy, one at a time;
an `absent` one is removed as `module.remove` does.
Desired state may name an older version: documents are ordered by revision, and a
rollout rolls back that way.

What was decided per module (converged, failed, rolled back) is kept in
`desired.json` in the state dir with the revisions, so a restart neither retries a
version that failed nor takes an old document again. A failed or rolled-back entry is
not tried again until it changes: a version that traps must not be deployed in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from agent._atomic import write_bytes
from agent._json import parse_json
from agent.commands import CommandVerifier, load_public_keys
from agent.config import AgentConfig
from agent.errors import AgentError, DesiredStateError, RegistryUnavailable
from agent.fleet import (
    DesiredDocument,
    DesiredModule,
    ReportWanted,
    Wanted,
    desired_topic,
    merge,
    parse_desired,
)
from agent.runtime._versions import ModuleVersions
from agent.supply import InstalledModule

log = logging.getLogger(__name__)

_RETRY_MIN_S = 2.0
_RETRY_MAX_S = 60.0
"""Backoff of a module whose registry was unreachable (the supply retries on its own too)."""
_SETTLE_S = 5.0
"""How long the first merge waits for the documents it applied before the restart."""


@dataclass
class Outcome:
    entry: dict[str, Any]
    """The desired entry this is the outcome of (name, ref, digest, config)."""
    state: str
    """`pending`, `converged`, `failed`, `rolled-back` or `superseded`."""
    digest: str | None = None
    reason: str | None = None


class DesiredFollower:
    """Converges the node on its merged desired state; `run(versions)` until cancelled."""

    def __init__(self, config: AgentConfig) -> None:
        prefix, node = config.mqtt.topic_prefix, config.node.id
        self._layers = [
            *((f"group:{g}", desired_topic(prefix, group=g)) for g in config.node.groups),
            ("node", desired_topic(prefix, node=node)),
        ]
        commands = config.commands
        self._verifier = (
            CommandVerifier(load_public_keys(commands.trusted_keys), commands.max_skew_s)
            if commands.require_signature
            else None
        )
        self._path = config.node.state_dir / "desired.json"
        self._revisions: dict[str, int] = {}
        self._outcomes: dict[str, Outcome] = {}
        self._load()
        self._documents: dict[str, DesiredDocument] = {}
        self._errors: dict[str, str] = {}
        self._wanted: dict[str, Wanted] = {}
        self._wake = asyncio.Event()
        self._retries = 0
        self._heard: set[str] = set()
        """Topics heard from since the start, a document, a refused one or a clearing."""

    def topics(self) -> list[str]:
        return [topic for _, topic in self._layers]

    def configs(self) -> dict[str, dict[str, Any]]:
        """Module configs of the entries converged on: the modules start with them."""
        return {
            name: outcome.entry["config"]
            for name, outcome in self._outcomes.items()
            if outcome.state == "converged" and outcome.entry.get("config") is not None
        }

    async def on_message(self, topic: str, payload: bytes) -> None:
        self._heard.add(topic)
        try:
            document = parse_desired(topic, payload, self._verifier)
            if document is not None:
                self._check_revision(topic, document)
        except DesiredStateError as err:
            log.warning("desired state refused: %s", err)
            self._errors[topic] = str(err)
            self._wake.set()  # heard from, for `_settle`; the merge is the same
            return
        self._errors.pop(topic, None)
        if document is None:
            self._documents.pop(topic, None)
        else:
            self._documents[topic] = document
            if self._revisions.get(topic) != document.revision:
                self._revisions[topic] = document.revision
                self._save()
        self._wake.set()

    def _check_revision(self, topic: str, document: DesiredDocument) -> None:
        applied = self._revisions.get(topic)
        if applied is not None and document.revision < applied:
            raise DesiredStateError(
                f"{topic}: revision {document.revision} is older than revision {applied} "
                "already applied; publish a newer revision"
            )

    async def run(self, versions: ModuleVersions) -> None:
        await self._settle()
        while True:
            if self._pending():
                delay = min(_RETRY_MAX_S, _RETRY_MIN_S * 2**self._retries)
                self._retries += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            else:
                self._retries = 0
                await self._wake.wait()
            self._wake.clear()
            layers = [
                (source, document)
                for source, topic in self._layers
                if (document := self._documents.get(topic)) is not None
            ]
            self._wanted = merge(layers)
            for wanted in self._wanted.values():
                await self._converge(versions, wanted)

    async def _settle(self) -> None:
        """Before the first merge, the retained document of every topic one was applied
        from before the restart, up to `_SETTLE_S` after the first arrives: a merge
        without the node's own layer would deploy the group's version it overrides, then
        its own again, at every restart (a node restarting mid-rollout, say)."""
        expected = {topic for _, topic in self._layers if topic in self._revisions}
        await self._wake.wait()  # connected: the retained documents are on their way
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SETTLE_S):
                while not expected <= self._heard:
                    self._wake.clear()
                    await self._wake.wait()
        self._wake.set()

    def _pending(self) -> bool:
        return any(o.state == "pending" for o in self._outcomes.values())

    async def _converge(self, versions: ModuleVersions, wanted: Wanted) -> None:
        module = wanted.module
        name = module.name
        entry = module.model_dump(mode="json")
        supply = versions.supply
        outcome = self._outcomes.get(name)
        if outcome is not None and outcome.entry == entry:
            if outcome.state in ("failed", "rolled-back", "superseded"):
                return
            if outcome.state == "converged" and _digest(supply.active(name)) == outcome.digest:
                return
        elif outcome is not None and outcome.state == "pending" and outcome.entry["ref"]:
            # The supply retries a deploy its registry did not answer: not this one now.
            await supply.cancel(
                outcome.entry["ref"], outcome.entry["digest"], "desired state changed"
            )
        if module.ref is None:  # absent: every other entry has a ref
            await self._remove(versions, name, entry)
            return
        before = supply.active(name)
        reconfigured = versions.configured(name) != module.config
        self._decide(name, Outcome(entry, "pending"))
        await versions.set_config(name, module.config, restart=False)
        try:
            installed = await supply.deploy(module.ref, digest=module.digest, allow_downgrade=True)
        except RegistryUnavailable as err:
            self._decide(name, Outcome(entry, "pending", reason=str(err)))
            return
        except AgentError as err:
            self._decide(name, Outcome(entry, "failed", reason=str(err)))
            return
        if installed.name != name:
            reason = f"{module.ref} is a package of module {installed.name!r}, not {name!r}"
            self._decide(name, Outcome(entry, "failed", reason=reason))
            return
        if reconfigured and before is not None and before.digest == installed.digest:
            await versions.restart(name)  # the same version, with its new config
        self._decide(name, Outcome(entry, "converged", digest=installed.digest))

    async def _remove(self, versions: ModuleVersions, name: str, entry: dict[str, Any]) -> None:
        if versions.in_config_file(name):
            reason = (
                f"module {name!r} is in the config file's [[modules]], which starts it "
                "again at every start; remove it there"
            )
            self._decide(name, Outcome(entry, "failed", reason=reason))
            return
        supply = versions.supply
        try:
            if any(m.name == name for m in supply.modules()):
                await supply.remove(name)
        except AgentError as err:
            self._decide(name, Outcome(entry, "failed", reason=str(err)))
            return
        await versions.set_config(name, None, restart=False)
        self._decide(name, Outcome(entry, "converged"))

    def refresh(self, versions: ModuleVersions) -> None:
        """Notice a converged version that no longer runs: the rollout guard took it back
        (`rolled-back`), or a command replaced or removed it (`superseded`). Neither is
        undone until the entry changes: the guard had its reasons, the operator too."""
        for name, outcome in self._outcomes.items():
            if outcome.state != "converged":
                continue
            active = versions.supply.active(name)
            if _digest(active) == outcome.digest:
                continue
            state = next((m for m in versions.supply.modules() if m.name == name), None)
            if state is not None and state.status == "rolled-back":
                decided = Outcome(outcome.entry, "rolled-back", outcome.digest, state.reason)
            else:
                running = f"runs {active.version} ({active.digest})" if active else "removed"
                reason = f"changed outside desired state: {running}"
                decided = Outcome(outcome.entry, "superseded", outcome.digest, reason)
            self._decide(name, decided)

    def report(self) -> tuple[ReportWanted, ...]:
        rows = []
        for name, wanted in sorted(self._wanted.items()):
            entry = wanted.module.model_dump(mode="json")
            outcome = self._outcomes.get(name)
            if outcome is None or outcome.entry != entry:
                outcome = Outcome(entry, "pending")
            rows.append(
                ReportWanted(
                    name=name,
                    ref=wanted.module.ref,
                    digest=wanted.module.digest,
                    absent=wanted.module.absent,
                    source=wanted.source,
                    state=outcome.state,
                    reason=outcome.reason,
                )
            )
        return tuple(rows)

    def errors(self) -> tuple[str, ...]:
        return tuple(self._errors[topic] for topic in sorted(self._errors))

    def _decide(self, name: str, outcome: Outcome) -> None:
        if outcome.state in ("failed", "rolled-back", "superseded"):
            log.warning("desired module %s %s: %s", name, outcome.state, outcome.reason)
        elif outcome.state == "converged":
            log.info("desired module %s converged on %s", name, outcome.digest or "absent")
        self._outcomes[name] = outcome
        self._save()

    def _load(self) -> None:
        try:
            saved = parse_json(self._path.read_bytes())
            self._revisions = {str(t): int(r) for t, r in saved["revisions"].items()}
            self._outcomes = {str(n): _outcome(o) for n, o in saved["outcomes"].items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            # Losing it costs one deploy per wanted module (a no-op when it runs already).
            log.warning("%s unreadable, starting afresh: %s", self._path, err)
            self._revisions, self._outcomes = {}, {}

    def _save(self) -> None:
        saved = {
            "revisions": self._revisions,
            "outcomes": {name: asdict(o) for name, o in self._outcomes.items()},
        }
        write_bytes(self._path, json.dumps(saved, sort_keys=True).encode())


def _outcome(saved: dict[str, Any]) -> Outcome:
    """A saved outcome, its entry as this version writes entries: a field added since
    (with its default) must not make every saved entry look changed."""
    outcome = Outcome(**saved)
    outcome.entry = DesiredModule.model_validate(outcome.entry).model_dump(mode="json")
    return outcome


def _digest(installed: InstalledModule | None) -> str | None:
    """What runs of a module, as an outcome records it: its digest, None for nothing."""
    return installed.digest if installed is not None else None
