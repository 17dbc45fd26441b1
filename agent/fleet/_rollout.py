"""A staged rollout's transitions, driven by what the fleet reports.

`Rollout.step(view, now)` reads the retained state (`FleetView`), moves the rollout
document on, and returns the `Edit`s the desired-state documents need. The driver writes
the rollout document first and applies the edits after, so what must be put back (a
node's previous entry) is on the broker before the node's document changes, and a driver
killed between the two derives the same edits again when resumed. Edits a document
already satisfies publish nothing. No I/O here, and no clock of its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import DesiredStateError, RolloutError
from agent.fleet._documents import (
    DIGEST_PATTERN,
    DesiredDocument,
    DesiredModule,
    Report,
    ReportModule,
    ReportWanted,
    desired_topic,
)
from agent.fleet._edit import Edit
from agent.fleet._progress import NodeProgress, Phase, RolloutDocument
from agent.fleet._view import FleetView
from agent.fleet._waves import repository, wave_sizes

FAILED_STATES = frozenset({"failed", "rolled-back", "superseded"})
_ENDINGS: dict[str, Phase] = {"cleaning": "done", "halting": "halted", "aborting": "aborted"}


@dataclass(frozen=True)
class RolloutPlan:
    """What `fleet deploy` was asked for."""

    group: str
    module: str
    ref: str
    wave_spec: str
    soak_s: float
    max_failures: int
    wave_timeout_s: float


class Rollout:
    def __init__(self, doc: RolloutDocument, prefix: str) -> None:
        self.doc = doc
        self.prefix = prefix
        self.events: list[str] = []
        """Progress lines for the operator, taken by the driver."""

    @classmethod
    def start(
        cls,
        plan: RolloutPlan,
        members: Sequence[str],
        prefix: str,
        *,
        now: float,
    ) -> Rollout:
        """A new rollout over `members` (sorted), in the waves `plan.wave_spec` makes."""
        if not members:
            raise RolloutError(f"group {plan.group!r} has no members")
        nodes: dict[str, NodeProgress] = {}
        start = 0
        sizes = wave_sizes(plan.wave_spec, len(members))
        for wave, end in enumerate(sizes):
            nodes.update((n, NodeProgress(wave=wave)) for n in members[start:end])
            start = end
        doc = RolloutDocument(
            id=uuid.uuid4().hex[:12],
            group=plan.group,
            module=plan.module,
            ref=plan.ref,
            wave_spec=plan.wave_spec,
            waves=sizes,
            soak_s=plan.soak_s,
            max_failures=plan.max_failures,
            wave_timeout_s=plan.wave_timeout_s,
            nodes=nodes,
            heartbeat=now,
            started=now,
            updated=now,
        )
        doc.take(now)
        return cls(doc, prefix)

    def abort(self) -> None:
        """Put back every node (and the group document) the rollout changed."""
        if self.doc.phase in ("done", "aborted"):
            raise RolloutError(f"rollout {self.doc.id} is {self.doc.phase}: nothing to abort")
        self.doc.phase = "aborting"
        self.events.append(f"aborting: putting back {self._names(self._changed())}")

    def deadline(self) -> float | None:
        """When the rollout must look again even if nothing is reported."""
        d = self.doc
        if d.phase == "deploying" and d.wave_started is not None:
            return d.wave_started + d.wave_timeout_s
        return d.soak_until if d.phase == "soaking" else None

    def step(self, view: FleetView, now: float) -> list[Edit]:
        """Move on as far as the fleet's state allows; the edits still to publish."""
        phase = self.doc.phase
        if phase == "deploying":
            return self._deploying(view, now)
        if phase == "soaking":
            return self._soaking(view, now)
        if phase == "finishing":
            return self._finishing(view)
        if phase in ("cleaning", "halting", "aborting"):
            return self._putting_back(view)
        return []

    # Phases

    def _deploying(self, view: FleetView, now: float) -> list[Edit]:
        d = self.doc
        names = d.wave_nodes(d.wave)
        if d.wave_started is None:
            self._start_wave(view, names, now)
        for name in names:
            progress = d.nodes[name]
            if progress.state != "deploying":
                continue
            outcome = self._outcome(_report(view, name))
            if isinstance(outcome, _Converged):
                if d.digest is None:
                    d.digest = outcome.digest
                    self.events.append(f"  {name} converged first: pinned to {d.digest}")
                progress.state = "converged"
            elif isinstance(outcome, _Failed):
                self._fail(name, outcome.reason)
            elif d.wave_started is not None and now >= d.wave_started + d.wave_timeout_s:
                self._fail(name, f"not converged within {d.wave_timeout_s:g} s")
        if d.failures > d.max_failures:
            return self._halt(view)
        if any(d.nodes[n].state == "deploying" for n in names):
            return self._targets()
        d.phase, d.soak_until = "soaking", now + d.soak_s
        converged = [n for n in names if d.nodes[n].state == "converged"]
        self.events.append(
            f"wave {self._wave()}: converged {self._names(converged)}; soaking {d.soak_s:g} s"
        )
        return self._soaking(view, now)

    def _soaking(self, view: FleetView, now: float) -> list[Edit]:
        """The wave's nodes stay healthy on the version for the soak. One that is away
        (offline, no report: its broker node went down, say) is waited for, up to the
        wave timeout past the soak, and counts as a failure only then."""
        d = self.doc
        away = []
        for name in d.wave_nodes(d.wave):
            if d.nodes[name].state != "converged":
                continue
            node = view.nodes.get(name)
            if node is None or not node.online or node.report is None:
                away.append(name)
                continue
            problem = self._soak_problem(node.report)
            if problem is not None:
                self._fail(name, f"during the soak: {problem}")
        if d.failures > d.max_failures:
            return self._halt(view)
        if d.soak_until is not None and now < d.soak_until:
            return self._targets()
        if away and d.soak_until is not None and now < d.soak_until + d.wave_timeout_s:
            return self._targets()
        for name in away:
            self._fail(name, f"away since the soak, for over {d.wave_timeout_s:g} s")
        if d.failures > d.max_failures:
            return self._halt(view)
        self.events.append(f"wave {self._wave()}: soaked")
        d.wave, d.wave_started, d.soak_until = d.wave + 1, None, None
        if d.wave < len(d.waves):
            d.phase = "deploying"
            return self._deploying(view, now)
        d.phase = "finishing"
        return self._finishing(view)

    def _finishing(self, view: FleetView) -> list[Edit]:
        d = self.doc
        topic = desired_topic(self.prefix, group=d.group)
        try:
            current = view.desired(topic)
        except DesiredStateError as err:
            self._note(f"cannot finish: the group document does not parse ({err}); fix or clear it")
            return []
        if d.group_had_doc is None:
            d.group_had_doc = current is not None
            d.group_previous = _entry(current, d.module)
        edit = Edit(topic, d.module, self._target())
        if not edit.satisfied(current):
            return [edit]
        d.phase = "cleaning"
        self.events.append(f"group {d.group}: desired {d.module} {self._target_text()}")
        return self._putting_back(view)

    def _putting_back(self, view: FleetView) -> list[Edit]:
        """Cleaning, halting or aborting: done when every edit is satisfied."""
        d = self.doc
        pending = []
        for edit in self._put_back_edits():
            try:
                if not edit.satisfied(view.desired(edit.topic)):
                    pending.append(edit)
            except DesiredStateError as err:
                self._note(f"cannot put back {edit.topic}: {err}")
        if pending:
            return pending
        put_back = self._names(self._put_back_nodes())
        d.phase = _ENDINGS[d.phase]
        self.events.append(
            f"done: group {d.group} runs {d.module} {self._target_text()}; node documents cleaned"
            if d.phase == "done"
            else f"{d.phase}: put back {put_back}"
        )
        return []

    # Steps

    def _start_wave(self, view: FleetView, names: list[str], now: float) -> None:
        """Record what each node of the wave had, before its document changes."""
        d = self.doc
        for name in names:
            progress = d.nodes[name]
            if progress.state != "waiting":
                continue
            node = view.nodes.get(name)
            if node is None or not node.online:
                progress.state, progress.reason = "deferred", "offline when its wave started"
                continue
            try:
                current = view.desired(desired_topic(self.prefix, node=name))
            except DesiredStateError as err:
                self._fail(name, f"its node document does not parse: {err}")
                continue
            progress.had_doc = current is not None
            progress.previous = _entry(current, d.module)
            progress.ran = _installed_digest(node.report, d.module)
            progress.state = "deploying"
        d.wave_started = now
        deploying = [n for n in names if d.nodes[n].state == "deploying"]
        deferred = [n for n in names if d.nodes[n].state == "deferred"]
        self.events.append(
            f"wave {self._wave()}: deploying {d.module} {self._target_text()} to "
            f"{self._names(deploying)}"
            + (f" (deferred: {', '.join(deferred)})" if deferred else "")
        )

    def _outcome(self, report: Report | None) -> _Converged | _Failed | None:
        """Whether the node's report shows the rollout's entry converged or failed; None
        while it has not taken the entry yet, or converged on it before it was pinned."""
        d = self.doc
        wanted = _wanted(report, d.module)
        if wanted is None or wanted.ref != d.ref or wanted.digest not in (None, d.digest):
            return None
        if wanted.state in FAILED_STATES:
            return _Failed(f"{wanted.state}: {wanted.reason or 'no reason given'}")
        digest = _running_digest(report, d.module)
        if wanted.state != "converged" or digest is None or d.digest not in (None, digest):
            return None
        if not re.match(DIGEST_PATTERN, digest):
            return _Failed(f"runs {d.module} at {digest!r}, not a sha256:<64 hex> digest")
        return _Converged(digest)

    def _soak_problem(self, report: Report) -> str | None:
        wanted = _wanted(report, self.doc.module)
        if wanted is not None and wanted.state in FAILED_STATES:
            return f"{wanted.state}: {wanted.reason or 'no reason given'}"
        if not report.healthy:
            return "unhealthy: " + ("; ".join(report.reasons) or "no reason given")
        digest = _running_digest(report, self.doc.module)
        if digest != self.doc.digest:
            return f"runs {self.doc.module} at {digest or 'nothing'}, not {self.doc.digest}"
        return None

    def _halt(self, view: FleetView) -> list[Edit]:
        d = self.doc
        d.phase = "halting"
        self.events.append(
            f"halted in wave {self._wave()}: {d.failures} failure(s), at most "
            f"{d.max_failures} allowed; putting back {self._names(self._put_back_nodes())}"
        )
        return self._putting_back(view)

    def _fail(self, name: str, reason: str) -> None:
        d = self.doc
        d.nodes[name].state, d.nodes[name].reason = "failed", reason
        d.failures += 1
        self._note(f"{name}: {reason}")

    def _note(self, reason: str) -> None:
        if reason not in self.doc.reasons:
            self.doc.reasons = (*self.doc.reasons, reason)
            self.events.append(f"  {reason}")

    # Edits

    def _targets(self) -> list[Edit]:
        """Node documents of the nodes on the way: the entry, pinned once known."""
        target = self._target()
        return [
            Edit(desired_topic(self.prefix, node=n), target.name, target)
            for n, p in self.doc.nodes.items()
            if p.state in ("deploying", "converged")
        ]

    def _put_back_nodes(self) -> list[str]:
        d = self.doc
        if d.phase == "halting":
            return [n for n in d.wave_nodes(d.wave) if d.nodes[n].touched]
        return self._changed()

    def _changed(self) -> list[str]:
        return [n for n, p in self.doc.nodes.items() if p.touched]

    def _put_back_edits(self) -> list[Edit]:
        d = self.doc
        edits = [
            Edit(
                desired_topic(self.prefix, node=n),
                d.module,
                None if d.phase == "cleaning" else self._restored(d.nodes[n]),
                clear_if_empty=not d.nodes[n].had_doc,
            )
            for n in self._put_back_nodes()
        ]
        if d.phase == "aborting" and d.group_had_doc is not None:
            topic = desired_topic(self.prefix, group=d.group)
            edits.append(
                Edit(topic, d.module, d.group_previous, clear_if_empty=not d.group_had_doc)
            )
        return edits

    def _restored(self, progress: NodeProgress) -> DesiredModule:
        """Its previous entry; else pinned to what it ran; else absent: it ran nothing."""
        if progress.previous is not None:
            return progress.previous
        if progress.ran is not None:
            ref = f"{repository(self.doc.ref)}@{progress.ran}"
            return DesiredModule(name=self.doc.module, ref=ref, digest=progress.ran)
        return DesiredModule(name=self.doc.module, absent=True)

    def _target(self) -> DesiredModule:
        return DesiredModule(name=self.doc.module, ref=self.doc.ref, digest=self.doc.digest)

    def _target_text(self) -> str:
        return self.doc.ref + (f" ({self.doc.digest})" if self.doc.digest else "")

    def _wave(self) -> str:
        return f"{self.doc.wave + 1}/{len(self.doc.waves)}"

    @staticmethod
    def _names(names: Sequence[str]) -> str:
        return ", ".join(names) if names else "no node"


@dataclass(frozen=True)
class _Converged:
    digest: str


@dataclass(frozen=True)
class _Failed:
    reason: str


def _report(view: FleetView, name: str) -> Report | None:
    node = view.nodes.get(name)
    return node.report if node is not None else None


def _entry(document: DesiredDocument | None, module: str) -> DesiredModule | None:
    if document is None:
        return None
    return next((m for m in document.modules if m.name == module), None)


def _wanted(report: Report | None, module: str) -> ReportWanted | None:
    if report is None:
        return None
    return next((w for w in report.desired if w.name == module), None)


def _listed(report: Report | None, module: str) -> ReportModule | None:
    if report is None:
        return None
    return next((m for m in report.modules if m.name == module), None)


def _installed_digest(report: Report | None, module: str) -> str | None:
    """The version the node has of `module`, running or not (failed, restarting): what
    a halt puts back. Only a node that lists no version gets `absent`."""
    listed = _listed(report, module)
    if listed is None or listed.digest is None or not re.match(DIGEST_PATTERN, listed.digest):
        return None  # none, or none a pin could name (a local file; a broken report)
    return listed.digest


def _running_digest(report: Report | None, module: str) -> str | None:
    running = _listed(report, module)
    return running.digest if running is not None and running.state == "running" else None
