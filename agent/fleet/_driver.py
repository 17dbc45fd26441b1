"""The rollout's loop: one subscription to the fleet's retained state, a `Rollout` stepped on
every change, its document written before the edits it asks for are published.

The driver proves it is alive with a heartbeat in the rollout document. It stops, and
publishes nothing more, when a newer driver's lease appears there (`resume --force`,
`abort`): the newest takeover wins, so an abort always does. The older driver's last
document can still be on its way when the newer one ends, so a driver that took over
stays `LINGER_S` after its last document and answers such a straggler with it again.

A node's report is the acknowledgement of its document: a node still not naming the
rollout's entry `NUDGE_S` after its document went out gets it again (a new revision,
the same entries). A broker acknowledges a retained publish and may still lose it, as
a cluster does while it elects new leaders after losing a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from agent.errors import DesiredStateError
from agent.fleet._documents import DesiredModule, desired_topic, rollout_topic
from agent.fleet._edit import Edit, Signer
from agent.fleet._progress import RolloutDocument, parse_rollout
from agent.fleet._rollout import Rollout
from agent.fleet._view import FleetView
from agent.mqtt import BrokerSession, Subscription

HEARTBEAT_S = 5.0
NUDGE_S = 10.0
STALE_AFTER_S = 3 * HEARTBEAT_S
"""A heartbeat older than this: no driver is alive, `resume` may take over."""
LINGER_S = 2.0


def watched_topics(prefix: str, group: str) -> list[str]:
    """What a rollout of `group` reads: the nodes, their documents, the group's."""
    return [
        f"{prefix}/+/status",
        f"{prefix}/+/report",
        f"{prefix}/+/desired",
        desired_topic(prefix, group=group),
        rollout_topic(prefix, group),
    ]


async def drive(
    session: BrokerSession,
    rollout: Rollout,
    signer: Signer,
    *,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.time,
) -> RolloutDocument:
    """Drive `rollout` until it is done, halted or aborted, or a newer driver took it
    over; returns the rollout document as it stands then."""
    return await _Driver(session, rollout, signer, say, clock).run()


class _Driver:
    def __init__(
        self,
        session: BrokerSession,
        rollout: Rollout,
        signer: Signer,
        say: Callable[[str], None],
        clock: Callable[[], float],
    ) -> None:
        self._session = session
        self._rollout = rollout
        self._doc = rollout.doc
        self._signer = signer
        self._say = say
        self._clock = clock
        self._topic = rollout_topic(rollout.prefix, rollout.doc.group)
        self._view = FleetView(rollout.prefix)
        self._changed = asyncio.Event()
        self._rival: RolloutDocument | None = None
        """The document of a driver that took over since."""
        self._written: dict[str, object] | None = None
        self._sent: dict[str, float] = {}
        """When each node document was last published."""

    async def run(self) -> RolloutDocument:
        topics = watched_topics(self._rollout.prefix, self._doc.group)
        async with self._session.subscribe(topics) as subscription:
            for item in subscription.retained.items():
                self._view.update(*item)
            pump = asyncio.create_task(self._pump(subscription))
            try:
                while True:
                    if pump.done():
                        pump.result()  # the connection was lost: raises why
                    if self._rival is not None:
                        rival = self._rival
                        self._say(f"rollout {rival.id} taken over by {rival.owner} ({rival.phase})")
                        return rival
                    now = self._clock()
                    edits = self._rollout.step(self._view, now)
                    for line in self._rollout.events:
                        self._say(line)
                    self._rollout.events.clear()
                    await self._write(now)
                    published = await self._apply(edits, now)
                    published += await self._apply(self._unheard(now), now, again=True)
                    if not self._doc.active:
                        await self._linger(pump)
                        return self._doc
                    if not published:  # else the step may go further with them there
                        self._changed.clear()
                        await self._wait()
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    async def _write(self, now: float) -> None:
        """The rollout document, when it changed or a heartbeat is due."""
        doc = self._doc
        state = doc.model_dump(exclude={"heartbeat", "updated"})
        if state == self._written and now - doc.heartbeat < HEARTBEAT_S:
            return
        if state != self._written:
            doc.updated = now
        doc.heartbeat = now
        await self._session.publish(self._topic, doc.payload())
        self._written = state

    async def _apply(self, edits: list[Edit], now: float, *, again: bool = False) -> int:
        """Publish the edits a document does not hold yet (`again`: every one)."""
        published = 0
        for edit in edits:
            if self._rival is not None:
                break  # not one more document once another driver has the rollout
            try:
                current = self._view.desired(edit.topic)
            except DesiredStateError:
                continue  # broken since the step: the node times out, named in its reason
            if not again and edit.satisfied(current):
                continue
            payload = edit.payload(current, self._signer, now)
            await self._session.publish(edit.topic, payload)
            self._view.update(edit.topic, payload)
            self._sent[edit.topic] = now
            published += 1
        return published

    def _unheard(self, now: float) -> list[Edit]:
        """Node documents published `NUDGE_S` ago that their nodes do not report yet."""
        doc = self._doc
        edits = []
        for name, progress in doc.nodes.items():
            topic = desired_topic(self._rollout.prefix, node=name)
            sent = self._sent.get(topic, doc.wave_started)  # sent by an earlier driver
            if progress.state != "deploying" or sent is None or now - sent < NUDGE_S:
                continue
            node = self._view.nodes.get(name)
            report = node.report if node is not None else None
            wanted = (
                next((w for w in report.desired if w.name == doc.module), None) if report else None
            )
            if wanted is None or wanted.ref != doc.ref:
                entry = DesiredModule(name=doc.module, ref=doc.ref, digest=doc.digest)
                edits.append(Edit(topic, doc.module, entry))
        return edits

    async def _pump(self, subscription: Subscription) -> None:
        try:
            async for topic, payload in subscription:
                self._view.update(topic, payload)
                if topic == self._topic and payload:
                    self._take(parse_rollout(topic, payload))
                self._changed.set()
        finally:
            self._changed.set()  # wakes the loop to see that the connection was lost

    def _take(self, other: RolloutDocument) -> None:
        """Another driver's document: yield to a newer lease; an older driver's last
        heartbeat before it yielded is answered with ours at once."""
        if other.lease == self._doc.lease:
            return
        if other.leased >= self._doc.leased:
            self._rival = other
        else:
            self._doc.heartbeat = 0.0

    async def _linger(self, pump: asyncio.Task[None]) -> None:
        """After a takeover, answer an older driver's straggling document with ours for
        `LINGER_S`, so that the rollout's last word stays retained."""
        if not self._doc.taken_over:
            return
        until = self._clock() + LINGER_S
        while not pump.done() and self._rival is None:
            await self._write(self._clock())  # only when `_take` asked for it
            left = until - self._clock()
            if left <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    async def _wait(self) -> None:
        """Until something changed, the rollout's deadline passed or a heartbeat is due."""
        wake = self._doc.heartbeat + HEARTBEAT_S  # also when unheard documents are due
        deadline = self._rollout.deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, wake - self._clock())):
                await self._changed.wait()
