"""The node's retained report: what `edge-agent fleet status` and rollouts read of it.

Checked every second, published (retained, QoS 1, past the outbox: only the latest
matters) when it changes, on every new connection and at least every
`fleet.report_interval_s`, so that a fleet at rest costs one message per node per
interval. Counters that move on their own (polls, invocations) are left out of it for
that reason; `edge-agent status` has them.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent import __version__
from agent.config import AgentConfig
from agent.errors import MqttUnavailable
from agent.fleet import Report, ReportDevice, ReportModule, report_topic
from agent.mqtt import MqttLink
from agent.runtime._desired import DesiredFollower
from agent.runtime._versions import ModuleVersions
from agent.status import SnapshotProvider

log = logging.getLogger(__name__)

CHECK_S = 1.0


class Reporter:
    def __init__(
        self,
        config: AgentConfig,
        link: MqttLink,
        snapshot: SnapshotProvider,
        versions: ModuleVersions,
        follower: DesiredFollower | None,
    ) -> None:
        self._config = config
        self._link = link
        self._snapshot = snapshot
        self._versions = versions
        self._follower = follower
        self.topic = report_topic(config.mqtt.topic_prefix, config.node.id)

    def report(self) -> Report:
        snap = self._snapshot()
        health = snap.health
        follower = self._follower
        if follower is not None:
            follower.refresh(self._versions)
        return Report(
            node=self._config.node.id,
            groups=self._config.node.groups,
            ts=time.time(),
            agent=__version__,
            broker=snap.mqtt.broker if snap.mqtt is not None else None,
            healthy=health.healthy,
            reasons=health.reasons,
            modules=tuple(
                ReportModule(name=m.name, version=m.version, digest=m.digest, state=m.state)
                for m in snap.modules
            ),
            desired=follower.report() if follower is not None else (),
            desired_errors=follower.errors() if follower is not None else (),
            devices=tuple(ReportDevice(name=d.name, state=d.state) for d in snap.devices),
            outbox_depth=snap.mqtt.outbox_depth if snap.mqtt is not None else 0,
            outbox_dropped=snap.mqtt.dropped if snap.mqtt is not None else 0,
        )

    async def run(self) -> None:
        interval = self._config.fleet.report_interval_s
        last: Report | None = None
        sent_at = 0.0
        session = -1
        while True:
            status = self._link.status()
            if status.connected:
                report = self.report()
                now = time.monotonic()
                due = now - sent_at >= interval or status.reconnects != session
                if due or not report.unchanged_since(last):
                    try:
                        await self._link.publish_now(self.topic, report.payload(), retain=True)
                    except MqttUnavailable as err:
                        log.debug("report not sent: %s", err)
                    else:
                        last, sent_at, session = report, now, status.reconnects
            await asyncio.sleep(CHECK_S)
