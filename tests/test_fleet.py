"""A fleet of real agents on a real clustered broker, driven by the real `edge-agent fleet`.

Twenty agent processes (one group, one simulated pump, the module `faulty` from Debian's
docker-registry), three nats-server nodes with JetStream and MQTT, and an independent
observer on the third broker node that keeps every node's report and every raw reading
(QoS 1, persistent session). The tests share the running fleet and go in order: each
deploys a version of its own, so each checks its own outcome.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import aiomqtt
import pytest

from agent.fleet import desired_topic
from tests.brokers import until
from tests.cluster import NatsCluster
from tests.fleet_nodes import Fleet, Observer, Pump, fleet_command, fleet_command_async
from tests.supply.conftest import _start, make_keys

pytestmark = [pytest.mark.nats, pytest.mark.registry]

SIZE = 20
GROUP = "line-1"
OFFLINE = "n20"
"""Stopped before the first rollout and started again after it."""


@dataclass
class Site:
    cluster: NatsCluster
    fleet: Fleet
    loop: asyncio.AbstractEventLoop
    observer: Observer
    refs: dict[str, str]

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def fleet_cli(self, *args: str) -> tuple[int, str]:
        done = fleet_command(*args, endpoints=self.cluster.endpoints[::-1])
        return done.returncode, done.stdout + done.stderr

    def digest(self, node: str) -> str | None:
        report = self.observer.reports.get(node)
        module = next((m for m in report.modules if m.name == "faulty"), None) if report else None
        return module.digest if module is not None else None

    def wait(self, condition: object, seconds: float = 120) -> None:
        self.run(until(condition, seconds))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("fleet")
    loop = asyncio.new_event_loop()
    cluster = NatsCluster(root / "nats")
    (root / "registry").mkdir()
    registry_gen = _start(root / "registry", secure=False)
    registry = next(registry_gen)
    pump = Pump()
    cluster.start()
    fleet = Fleet(
        root,
        size=SIZE,
        group=GROUP,
        endpoints=cluster.endpoints,
        registry=registry,
        key=make_keys(root / "keys"),
        pump_port=pump.port,
        report_interval_s=5.0,
    )
    observer = Observer(cluster.endpoints[2])
    try:
        refs = {
            version: loop.run_until_complete(fleet.push(version, fault))
            for version, fault in (
                ("1.0.0", "none"),
                ("1.1.0", "none"),
                ("1.2.0", "trap"),
                ("1.3.0", "none"),
            )
        }
        loop.run_until_complete(observer.__aenter__())
        fleet.start_all()
        site = Site(cluster, fleet, loop, observer, refs)
        site.wait(lambda: len(observer.reports) == SIZE)
        code, out = site.fleet_cli(
            "desired", "set", "--group", GROUP, "--module", "faulty", "--ref", refs["1.0.0"]
        )
        assert code == 0, out
        site.wait(lambda: all(site.digest(n) is not None for n in fleet.nodes))
        yield site
    finally:
        fleet.stop_all()
        loop.run_until_complete(observer.__aexit__())
        loop.close()
        pump.stop()
        cluster.close()
        registry_gen.close()


def rollout_doc(site: Site) -> dict[str, object]:
    _, out = site.fleet_cli("rollout", "status", "--group", GROUP, "--json")
    assert out.startswith("{"), out
    return json.loads(out[: out.rindex("}") + 1])  # type: ignore[no-any-return]


def test_a_rollout_in_three_waves_reaches_every_node_through_a_broker_node_lost(
    site: Site,
) -> None:
    fleet = site.fleet
    fleet.stop(OFFLINE)
    before = {n: site.digest(n) for n in fleet.nodes}

    async def deploy() -> tuple[int, str]:
        proc = await fleet_command_async(
            "deploy", site.refs["1.1.0"], "--group", GROUP, "--waves", "1,10%,100%",
            "--soak", "2", "--max-failures", "0", "--wave-timeout", "90",
            endpoints=site.cluster.endpoints[::-1],
        )  # fmt: skip
        # Mid-rollout, the broker node most agents are on goes away for good.
        await until(lambda: sum(d != before[n] for n, d in _digests(site).items()) >= 1, 120)
        site.cluster.kill(0)
        out, err = await asyncio.wait_for(proc.communicate(), 300)
        return proc.returncode or 0, out.decode() + err.decode()

    code, out = site.run(deploy())  # type: ignore[misc]
    assert code == 0, out
    site.cluster.restart(0)  # the operator repairs the cluster
    target = site.digest("n01")
    assert target is not None
    assert target != before["n01"]
    online = [n for n in fleet.nodes if n != OFFLINE]
    site.wait(lambda: all(site.digest(n) == target for n in online))
    doc = rollout_doc(site)
    assert doc["phase"] == "done", doc

    # The node that was away catches up from the group's document when it is back.
    fleet.start(OFFLINE)
    site.wait(lambda: site.digest(OFFLINE) == target)

    code, out = site.fleet_cli("status", "--group", GROUP)
    assert code == 0, out
    assert all(n in out for n in fleet.nodes)


def _digests(site: Site) -> dict[str, str | None]:
    return {n: site.digest(n) for n in site.fleet.nodes}


def test_a_version_that_traps_halts_in_the_first_wave_and_no_other_node_runs_it(
    site: Site,
) -> None:
    before = _digests(site)
    code, out = site.fleet_cli(
        "deploy", site.refs["1.2.0"], "--group", GROUP, "--waves", "1,50%,100%",
        "--soak", "3", "--max-failures", "0", "--wave-timeout", "120",
    )  # fmt: skip
    assert code != 0, out
    doc = rollout_doc(site)
    assert doc["phase"] == "halted", doc
    # The first wave's node took it back; every node runs what it ran before.
    site.wait(lambda: _digests(site) == before)
    nodes: dict[str, dict[str, object]] = doc["nodes"]  # type: ignore[assignment]
    wave_1 = [n for n, progress in nodes.items() if progress["wave"] == 0]
    assert len(wave_1) == 1
    assert nodes[wave_1[0]]["state"] == "failed"
    for node in site.fleet.nodes:
        if node not in wave_1:
            assert "faulty 1.2.0" not in site.fleet.log(node), node


def test_a_deploy_interrupted_is_finished_by_a_second_process(site: Site) -> None:
    fleet = site.fleet
    before = site.digest("n01")

    async def interrupted() -> None:
        proc = await fleet_command_async(
            "deploy", site.refs["1.3.0"], "--group", GROUP, "--waves", "1,50%,100%",
            "--soak", "2", endpoints=site.cluster.endpoints[1:],
        )  # fmt: skip
        await until(lambda: any(_wants(site, n, site.refs["1.3.0"]) for n in fleet.nodes), 120)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    site.run(interrupted())
    assert rollout_doc(site)["phase"] not in ("done", "halted", "aborted")
    code, out = site.fleet_cli("rollout", "resume", "--group", GROUP, "--force")
    assert code == 0, out
    assert rollout_doc(site)["phase"] == "done"
    # Every node on one new version (the observer may be a report behind the driver).
    site.wait(
        lambda: (
            len(set(_digests(site).values()) - {before}) == 1
            and before not in _digests(site).values()
        )
    )


def _wants(site: Site, node: str, ref: str) -> bool:
    report = site.observer.reports.get(node)
    return report is not None and any(w.name == "faulty" and w.ref == ref for w in report.desired)


def test_bad_input_is_named_and_changes_nothing(site: Site) -> None:
    before = _digests(site)
    code, out = site.fleet_cli("deploy", site.refs["1.1.0"], "--group", "nowhere")
    assert code != 0
    assert "nowhere" in out
    # A malformed document for the group: every node names it, and runs what it ran.
    code, out = site.fleet_cli("desired", "show", "--group", GROUP)
    assert code == 0, out

    async def publish_bad() -> None:
        host, port = site.cluster.endpoints[2].rsplit(":", 1)
        async with aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V311) as client:
            await client.publish(
                desired_topic("edge", group=GROUP), b"{not json", qos=1, retain=True
            )

    site.run(publish_bad())
    site.wait(
        lambda: all(
            (r := site.observer.reports.get(n)) is not None and r.desired_errors
            for n in site.fleet.nodes
        )
    )
    assert _digests(site) == before


def test_no_node_lost_a_reading(site: Site) -> None:
    """Through the broker node killed, the node stopped and every version swap: the
    readings each node polled reached the observer without a gap."""
    readings = site.observer.readings
    assert set(readings) == set(site.fleet.nodes)
    assert all(len(seqs) > 20 for seqs in readings.values())
    assert site.observer.gaps() == {}
