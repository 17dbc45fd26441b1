"""Small nodes that play a fleet member over a real broker, for the operator's tool.

A `SimNode` does what a node does on the fleet's topics: it publishes its status
(online/offline) and its report, follows its groups' and its own retained desired-state
documents (merged as the contract says), and converges: a version the `Catalog` marks as
failing is reported `failed` and not tried again until the entry changes; a held node
leaves its entries `pending` until released. It runs no modules and polls no devices:
what the rollout sees of a node is the broker's traffic, and that is real here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from agent.config import MqttConfig
from agent.fleet import (
    DesiredDocument,
    DesiredModule,
    Report,
    ReportDevice,
    ReportModule,
    ReportWanted,
    desired_topic,
    merge,
    parse_desired,
    report_topic,
    status_topic,
)
from agent.mqtt import BrokerSession

REGISTRY = "registry.test:5000/edge"


def digest_of(version: str) -> str:
    return "sha256:" + hashlib.sha256(version.encode()).hexdigest()


@dataclass
class Catalog:
    """The registry the simulated nodes pull from: tags to versions, and versions that
    fail their smoke test."""

    tags: dict[str, str] = field(default_factory=dict)
    """`repo:tag` -> version; a version's digest is `digest_of(version)`."""
    failing: set[str] = field(default_factory=set)

    def ref(self, module: str, version: str) -> str:
        """Tag `version` in the catalog and return its reference."""
        ref = f"{REGISTRY}/{module}:{version}"
        self.tags[ref] = version
        return ref

    def resolve(self, entry: DesiredModule) -> tuple[str, str]:
        """(version, digest) the entry names: its pin, a digest reference, or a tag."""
        pinned = entry.digest or (entry.ref.partition("@")[2] or None)
        if pinned is not None:
            version = next(v for v in self.tags.values() if digest_of(v) == pinned)
            return version, pinned
        version = self.tags[entry.ref]
        return version, digest_of(version)


class SimNode:
    """One node: `async with SimNode(...)` publishes it online and follows its documents."""

    def __init__(
        self,
        port: int,
        node: str,
        groups: tuple[str, ...],
        catalog: Catalog,
        *,
        running: dict[str, str] | None = None,
        prefix: str = "edge",
    ) -> None:
        self.node = node
        self.groups = groups
        self.catalog = catalog
        self.prefix = prefix
        self.running = {name: (v, digest_of(v)) for name, v in (running or {}).items()}
        """Module name -> (version, digest)."""
        self.history: list[tuple[float, str, str]] = []
        """(time, module, version) of every change of what it runs."""
        self.healthy = True
        self.module_states: dict[str, str] = {}
        """A module's state in the report when not `running` (`failed`, ...)."""
        self.hold = False
        """Leave entries pending (a slow registry) until `release()`."""
        self.online = False
        self._config = MqttConfig(host="127.0.0.1", port=port)
        self._session = BrokerSession(self._config)
        self._documents: dict[str, DesiredDocument] = {}
        self._failed: dict[str, tuple[str, str | None, str]] = {}
        """Module name -> (ref, digest, reason) of the entry that failed."""
        self._wanted: tuple[ReportWanted, ...] = ()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SimNode:
        await self._session.__aenter__()
        await self.come_online()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_following()
        await self._session.__aexit__(None, None, None)

    async def come_online(self) -> None:
        """Publish online and follow the desired documents (a node that reconnects)."""
        await self._publish_status("online")
        self.online = True
        topics = [desired_topic(self.prefix, group=g) for g in self.groups]
        topics.append(desired_topic(self.prefix, node=self.node))
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._follow(topics, ready))
        await ready.wait()

    async def go_offline(self) -> None:
        """What the will says when a node dies: it stops following."""
        await self._stop_following()
        self.online = False
        await self._publish_status("offline")

    async def release(self) -> None:
        self.hold = False
        await self._converge()

    async def set_healthy(self, healthy: bool) -> None:
        self.healthy = healthy
        await self._publish_report()

    def version(self, module: str) -> str | None:
        return self.running[module][0] if module in self.running else None

    async def _stop_following(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self, topics: list[str], ready: asyncio.Event) -> None:
        async with self._session.subscribe(topics) as subscription:
            for topic, payload in subscription.retained.items():
                self._take(topic, payload)
            await self._converge()
            ready.set()
            async for topic, payload in subscription:
                self._take(topic, payload)
                await self._converge()

    def _take(self, topic: str, payload: bytes) -> None:
        document = parse_desired(topic, payload, None)
        if document is None:
            self._documents.pop(topic, None)
        else:
            self._documents[topic] = document

    async def _converge(self) -> None:
        layers = [
            (f"group:{g}", self._documents[t])
            for g in self.groups
            if (t := desired_topic(self.prefix, group=g)) in self._documents
        ]
        own = desired_topic(self.prefix, node=self.node)
        if own in self._documents:
            layers.append(("node", self._documents[own]))
        entries = []
        for name, wanted in merge(layers).items():
            module = wanted.module
            state, reason = "converged", None
            failed = self._failed.get(name)
            if failed is not None and failed[:2] == (module.ref, module.digest):
                state, reason = "failed", failed[2]
            elif module.absent:
                if self.running.pop(name, None) is not None:
                    self.history.append((time.monotonic(), name, "absent"))
            elif self.hold:
                state = "pending"
            else:
                version, digest = self.catalog.resolve(module)
                if version in self.catalog.failing:
                    reason = f"smoke test failed: {version} trapped"
                    self._failed[name] = (module.ref, module.digest, reason)
                    state = "failed"
                else:
                    self._failed.pop(name, None)
                    if self.running.get(name) != (version, digest):
                        self.history.append((time.monotonic(), name, version))
                    self.running[name] = (version, digest)
            entries.append(
                ReportWanted(
                    name=name,
                    ref=module.ref,
                    digest=module.digest,
                    absent=module.absent,
                    source=wanted.source,
                    state=state,
                    reason=reason,
                )
            )
        self._wanted = tuple(entries)
        await self._publish_report()

    async def _publish_report(self) -> None:
        report = Report(
            node=self.node,
            groups=self.groups,
            ts=time.time(),
            agent="0.0.0-sim",
            healthy=self.healthy,
            reasons=() if self.healthy else ("device 'meter' offline",),
            modules=tuple(
                ReportModule(
                    name=n, version=v, digest=d, state=self.module_states.get(n, "running")
                )
                for n, (v, d) in sorted(self.running.items())
            ),
            desired=self._wanted,
            devices=(ReportDevice(name="meter", state="online" if self.healthy else "offline"),),
        )
        await self._session.publish(report_topic(self.prefix, self.node), report.payload())

    async def _publish_status(self, state: str) -> None:
        payload = json.dumps({"state": state, "version": "0.0.0-sim", "ts": time.time()})
        await self._session.publish(status_topic(self.prefix, self.node), payload.encode())


@contextlib.asynccontextmanager
async def simulated_fleet(
    port: int,
    count: int,
    catalog: Catalog,
    *,
    group: str = "pumps",
    running: dict[str, str] | None = None,
) -> AsyncIterator[list[SimNode]]:
    """`count` nodes `n01`, `n02`, ... in `group`, online, running `running`."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                SimNode(port, f"n{i:02d}", (group,), catalog, running=running)
            )
            for i in range(1, count + 1)
        ]
        yield nodes


async def publish(port: int, topic: str, payload: bytes) -> None:
    """Publish retained, as another client of the broker would."""
    async with BrokerSession(MqttConfig(host="127.0.0.1", port=port)) as session:
        await session.publish(topic, payload)


async def read_retained(port: int, topics: list[str]) -> dict[str, bytes]:
    """What the broker retains on `topics`, as a fresh client sees it."""
    async with BrokerSession(MqttConfig(host="127.0.0.1", port=port)) as session:
        return await session.read_retained(topics)
