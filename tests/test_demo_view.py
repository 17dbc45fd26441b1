"""The demo's live view: what a subscriber of the node sees, drawn as tables."""

from __future__ import annotations

import json

from rich.console import Console

from agent.demo._view import DemoView

ROOT = "edge/demo-node"


def draw(view: DemoView) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(view.render())
    return console.export_text()


def send(view: DemoView, topic: str, body: object) -> None:
    view.update(f"{ROOT}/{topic}", json.dumps(body).encode())


def test_the_view_shows_readings_outputs_and_alerts() -> None:
    view = DemoView(ROOT)
    send(view, "status", {"state": "online"})
    reading = {
        "device": "pump-1",
        "seq": 41,
        "ts": 1.0,
        "values": {
            "temperature": {"value": 61.25, "unit": "degC"},
            "pressure": {"value": 0.0, "unit": "bar", "quality": "bad"},
        },
    }
    send(view, "devices/pump-1", reading)
    settings = {"device": "pump-1", "seq": 42, "ts": 1.5, "values": {"setpoint": {"value": 1450}}}
    send(view, "devices/pump-1", settings)
    send(view, "anomaly", {"device": "pump-1", "seq": 41, "score": 0.91, "anomaly": True})
    stats = {"device": "pump-1", "seq": 41, "channels": {"vibration": {"mean": 3.5, "std": 0.25}}}
    send(view, "stats", stats)
    send(view, "alerts/anomaly", {"device": "pump-1", "seq": 41, "score": 0.91, "threshold": 0.5})
    view.update("elsewhere/topic", b"{}")
    text = draw(view)
    assert "agent online" in text
    assert "5 messages" in text
    assert "temperature 61.25 degC" in text
    assert "setpoint 1450" in text
    assert "pressure 0.00 bar (bad)" in text
    assert "pump-1 #41: score 0.91 ANOMALY" in text
    assert "vibration mean 3.50 std 0.25" in text
    assert "alerts/anomaly: pump-1 #41: score 0.91 reached the threshold 0.50" in text


def test_payloads_that_are_not_json_are_shown_as_text() -> None:
    view = DemoView(ROOT)
    view.update(f"{ROOT}/notes", b"\xffplain")
    assert "plain" in draw(view)
    assert "no anomaly alert yet" in draw(view)
