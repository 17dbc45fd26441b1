"""The status snapshot: its JSON form and the health verdict."""

from __future__ import annotations

import json

import pytest

from agent.status import StatusSnapshot, judge

from .snapshots import make_snapshot


def test_a_healthy_snapshot_round_trips_through_json() -> None:
    snapshot = make_snapshot()
    doc = json.loads(snapshot.model_dump_json())
    assert set(doc) == {
        *("agent", "mqtt", "journal", "sparkplug", "devices", "modules", "models", "health")
    }
    assert doc["sparkplug"]["bd_seq"] == 4
    assert doc["agent"]["engine"]["name"] == "wasmtime"
    assert doc["agent"]["engine"]["version"]
    assert doc["health"] == {"healthy": True, "reasons": []}
    again = StatusSnapshot.model_validate(doc)
    assert again == snapshot


def test_module_latency_comes_from_real_calls() -> None:
    module = make_snapshot(calls=20).modules[0]
    assert module.invocations == 20
    assert module.p50_ms is not None
    assert module.p99_ms is not None
    assert 0 < module.p50_ms <= module.p99_ms


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"device_state": "offline"}, ["device 'pump-1' offline: no response from unit 1"]),
        ({"mqtt_connected": False}, ["MQTT disconnected from 127.0.0.1:1883: connection refused"]),
        ({"module_failed": True}, ["module 'faulty' failed: trap: unreachable"]),
        ({"device_state": "starting"}, []),
    ],
)
def test_health_names_what_is_wrong(kwargs: dict[str, object], expected: list[str]) -> None:
    health = judge(make_snapshot(**kwargs))  # type: ignore[arg-type]
    assert list(health.reasons) == expected
    assert health.healthy is (not expected)


def test_newer_agents_fields_are_ignored_by_older_clients() -> None:
    doc = json.loads(make_snapshot().model_dump_json())
    doc["agent"]["something_new"] = 1
    doc["future_section"] = {}
    assert StatusSnapshot.model_validate(doc).agent.node_id == "gateway-17"
