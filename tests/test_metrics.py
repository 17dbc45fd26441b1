"""The Prometheus endpoint, scraped over loopback like Prometheus would."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from agent.errors import AgentError
from agent.metrics import MetricsServer, render_metrics

from .snapshots import make_snapshot


def scrape(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read().decode()


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_scrape_returns_the_snapshot_figures() -> None:
    snapshot = make_snapshot(device_state="offline", calls=10)

    async def main() -> list[tuple[int, str, str]]:
        async with MetricsServer("127.0.0.1:0", lambda: snapshot) as server:
            return [
                await asyncio.to_thread(scrape, server.port, path, method)
                for path, method in (("/metrics", "GET"), ("/other", "GET"), ("/metrics", "POST"))
            ]

    (code, ctype, body), (missing, _, _), (post, _, _) = asyncio.run(main())
    assert (code, missing, post) == (200, 404, 405)
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    got = samples(body)
    assert got['edge_agent_device_up{device="pump-1"}'] == 0
    assert got['edge_agent_device_errors_total{device="pump-1"}'] == 4
    assert got["edge_agent_healthy"] == 0
    assert got['edge_agent_mqtt_connected{broker="127.0.0.1:1883"}'] == 1
    assert got['edge_agent_mqtt_failovers_total{broker="127.0.0.1:1883"}'] == 1
    assert got['edge_agent_module_invocations_total{module="scale"}'] == 10
    assert (got["edge_agent_journal_readings"], got["edge_agent_journal_dropped_total"]) == (7, 0)
    assert (got["edge_agent_sparkplug_connected"], got["edge_agent_sparkplug_bd_seq"]) == (1, 4)
    assert got["edge_agent_sparkplug_commands_refused_total"] == 1
    p50 = got['edge_agent_module_latency_seconds{module="scale",quantile="0.5"}']
    assert p50 == pytest.approx(snapshot.modules[0].p50_ms / 1000)  # type: ignore[operator]
    assert got['edge_agent_module_memory_bytes{module="scale"}'] == 17 * 65536
    assert "# TYPE edge_agent_device_errors_total counter" in body
    # Absent figures (no fuel metering, empty outbox) are left out, not reported as 0.
    assert "edge_agent_module_fuel_used_total" not in body
    assert "edge_agent_outbox_oldest_age_seconds" not in body


def test_label_values_are_escaped() -> None:
    snapshot = make_snapshot()
    odd = snapshot.agent.model_copy(update={"node_id": 'a"b\\c\nd'})
    text = render_metrics(snapshot.model_copy(update={"agent": odd}))
    assert 'node="a\\"b\\\\c\\nd"' in text


def test_a_port_in_use_is_a_clear_error() -> None:
    snapshot = make_snapshot()

    async def main() -> None:
        async with MetricsServer("127.0.0.1:0", lambda: snapshot) as first:
            taken = rf"cannot serve metrics on 127.0.0.1:{first.port}"
            with pytest.raises(AgentError, match=taken):
                async with MetricsServer(f"127.0.0.1:{first.port}", lambda: snapshot):
                    pass

    asyncio.run(main())
