"""The demo's live view: what a subscriber of the node sees, drawn as tables."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from agent.config import DeviceConfig, OpcuaDeviceConfig, load_config
from agent.demo._run import variant
from agent.demo._view import DemoView

from .test_agent import demo_config

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


def test_sparkplug_messages_are_shown_by_type_device_and_size() -> None:
    view = DemoView(ROOT, sparkplug_root="spBv1.0/demo")
    view.update("spBv1.0/demo/NBIRTH/demo", b"\x08" * 300)
    for size in (80, 61):
        view.update("spBv1.0/demo/DDATA/demo/pump-1", b"\x08" * size)
    view.update("spBv1.0/other/DDATA/demo/pump-1", b"\x08")  # another group: not ours
    text = draw(view)
    assert "Sparkplug B (spBv1.0/demo/#)" in text
    assert re.search(r"NBIRTH demo\s+│\s+1\s+│\s+300 B", text), text
    assert re.search(r"DDATA demo / pump-1\s+│\s+2\s+│\s+61 B", text), text
    assert "0 messages" in text  # the JSON topics' count
    assert view.plain("spBv1.0/demo/DDATA/demo/pump-1", b"\x08" * 61) == "[Sparkplug B, 61 bytes]"
    assert view.plain(f"{ROOT}/scaled", b'{"a":1}') == '{"a":1}'


def test_without_sparkplug_the_view_has_no_sparkplug_table() -> None:
    view = DemoView(ROOT)
    view.update("spBv1.0/demo/NBIRTH/demo", b"\x08")
    assert "Sparkplug" not in draw(view)
    assert view.plain("spBv1.0/demo/NBIRTH/demo", b"{}") == "{}"


def test_the_flags_make_the_pump_sparkplug_and_opcua(tmp_path: Path) -> None:
    config = load_config(demo_config(tmp_path))
    modbus = config.devices[0]
    assert isinstance(modbus, DeviceConfig)
    assert variant(config, sparkplug=False, opcua=False) == config
    both = variant(config, sparkplug=True, opcua=True)
    assert both.sparkplug.enabled
    assert both.sparkplug.group_id == "demo"
    (pump,) = both.devices
    assert isinstance(pump, OpcuaDeviceConfig)
    assert pump.name == "pump-1"  # the modules' routes still name it
    assert pump.endpoint == f"opc.tcp://127.0.0.1:{modbus.port}/pump/"
    assert {p.name for p in pump.node_map.points} >= {"temperature", "vibration", "pressure"}


def run_demo(config: Path, *flags: str) -> list[str]:
    command = [sys.executable, "-m", "agent", "demo", "--plain", "--seconds", "10"]
    result = subprocess.run(
        [*command, "--config", str(config), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_demo_with_sparkplug_shows_births_and_data(tmp_path: Path) -> None:
    lines = run_demo(demo_config(tmp_path), "--sparkplug")
    kinds = {line.split(" ", 1)[0] for line in lines}
    assert "spBv1.0/demo/NBIRTH/demo" in kinds
    assert "spBv1.0/demo/DBIRTH/demo/pump-1" in kinds
    assert "spBv1.0/demo/DDATA/demo/pump-1" in kinds
    assert "edge/demo/devices/pump-1" in kinds  # the JSON topics as before
    ddata = next(line for line in lines if "/DDATA/" in line)
    assert re.fullmatch(r"\S+ \[Sparkplug B, \d+ bytes\]", ddata), ddata


@pytest.mark.opcua
def test_the_demo_with_opcua_polls_the_opcua_pump(tmp_path: Path) -> None:
    lines = run_demo(demo_config(tmp_path), "--opcua")
    readings = [json.loads(line.split(" ", 1)[1]) for line in lines if "/devices/pump-1 " in line]
    assert readings, lines
    # The subscription's first values may arrive in more than one batch (one reading
    # each) on a loaded machine; between them they hold every point.
    first: dict[str, dict[str, object]] = {}
    for reading in readings:
        first = reading["values"] | first
    assert first["model"]["value"] == "P-200 pump"
    assert "edge/demo/scaled" in {line.split(" ", 1)[0] for line in lines}
