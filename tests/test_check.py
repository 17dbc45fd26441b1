"""`edge-agent check` against real peers: mosquitto, the simulated pump, files on disk."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.sim import PumpDevice, PumpModel, SimServer
from agent.supply import generate_key, public_key_of

from .brokers import Mosquitto, Pki, free_port, make_pki

REPO = Path(__file__).resolve().parent.parent
PUMP_MAP = REPO / "config" / "devices" / "pump.toml"


def write_config(
    tmp_path: Path,
    *,
    broker_port: int,
    pump_port: int,
    state_dir: Path | None = None,
    keys: list[Path] | None = None,
    mqtt_extra: str = "",
) -> Path:
    if keys is None:
        key = tmp_path / "cosign.pub"
        key.write_bytes(public_key_of(generate_key(), "test").pem())
        keys = [key]
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[node]
id = "gw-1"
state_dir = "{state_dir or tmp_path / "state"}"

[engine]
kind = "wasmtime"

[control]
socket = "{tmp_path / "run" / "control.sock"}"

[supply]
trusted_keys = {json.dumps([str(k) for k in keys])}

[mqtt]
host = "127.0.0.1"
port = {broker_port}
connect_timeout_s = 2
{mqtt_extra}

[[devices]]
name = "pump-1"
transport = "tcp"
host = "127.0.0.1"
port = {pump_port}
map = "{PUMP_MAP}"
"""
    )
    return config


def check(
    config: Path, capsys: pytest.CaptureFixture[str], *, pump_port: int | None, timeout: float = 3
) -> Report:
    """Run `edge-agent check --json`, with the pump serving on `pump_port` if given."""
    argv = ["check", "--config", str(config), "--json", "--timeout", str(timeout)]

    async def scenario() -> int:
        if pump_port is None:
            return await asyncio.to_thread(main, argv)
        async with SimServer({1: PumpDevice(PumpModel(seed=1)).image}, port=pump_port):
            return await asyncio.to_thread(main, argv)

    started = time.monotonic()
    code = asyncio.run(scenario())
    elapsed = time.monotonic() - started
    doc = json.loads(capsys.readouterr().out)
    return Report(code, {c["name"]: c for c in doc["checks"]}, doc["ok"], elapsed)


class Report:
    def __init__(self, code: int, checks: dict[str, dict[str, str]], ok: bool, elapsed: float):
        self.code = code
        self.checks = checks
        self.ok = ok
        self.elapsed = elapsed

    def verdicts(self) -> dict[str, str]:
        return {name: c["verdict"] for name, c in self.checks.items()}

    def errors(self) -> dict[str, str]:
        return {n: c["message"] for n, c in self.checks.items() if c["verdict"] == "error"}


@pytest.fixture
def pump_port() -> int:
    return free_port()


def test_all_ok_with_a_broker_and_a_pump(
    tmp_path: Path, mosquitto: Mosquitto, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, broker_port=mosquitto.port, pump_port=pump_port)
    report = check(config, capsys, pump_port=pump_port)
    assert report.code == 0
    assert report.ok
    assert set(report.verdicts().values()) == {"ok"}, report.checks
    assert list(report.checks) == [
        "config",
        "engine",
        "engine wasmedge",
        "engine wasmtime",
        "state dir",
        "control socket",
        "trusted keys",
        "mqtt",
        "device pump-1",
    ]
    assert "wasmtime" in report.checks["engine"]["message"]
    assert (
        f"127.0.0.1:{mosquitto.port} accepted an MQTT 5 CONNECT"
        in (report.checks["mqtt"]["message"])
    )
    assert not (tmp_path / "state").exists(), "a check creates nothing"


def test_broker_down_is_an_error_naming_it_and_fast(
    tmp_path: Path, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    config = write_config(tmp_path, broker_port=port, pump_port=pump_port)
    report = check(config, capsys, pump_port=pump_port)
    assert report.code == 1
    assert not report.ok
    assert report.errors() == {"mqtt": f"broker 127.0.0.1:{port}: connection refused"}
    assert "start the broker" in (report.checks["mqtt"]["fix"] or "")
    assert report.elapsed < 5


def test_a_cluster_node_down_is_a_warning_naming_who_answered(
    tmp_path: Path, mosquitto: Mosquitto, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `mqtt.hosts`, one node that answers is enough to run; every node is probed."""
    down = free_port()
    config = write_config(tmp_path, broker_port=mosquitto.port, pump_port=pump_port)
    hosts = f'hosts = ["127.0.0.1:{down}", "127.0.0.1:{mosquitto.port}"]'
    config.write_text(config.read_text().replace('host = "127.0.0.1"', hosts, 1))
    report = check(config, capsys, pump_port=pump_port)
    assert report.code == 0
    assert report.verdicts()["mqtt"] == "warning"
    assert report.checks["mqtt"]["message"] == (
        f"127.0.0.1:{mosquitto.port} accepted an MQTT 5 CONNECT (no TLS, anonymous); "
        f"broker 127.0.0.1:{down}: connection refused"
    )
    assert "start the broker, or correct mqtt.hosts" in (report.checks["mqtt"]["fix"] or "")

    mosquitto.stop()
    report = check(config, capsys, pump_port=pump_port)
    assert report.code == 1
    assert report.errors()["mqtt"] == (
        f"broker 127.0.0.1:{down}: connection refused; "
        f"broker 127.0.0.1:{mosquitto.port}: connection refused"
    )


@pytest.mark.mosquitto
def test_wrong_password_says_authentication_failed(
    tmp_path: Path, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Mosquitto(tmp_path, passwords={"node": "s3cret"})
    broker.start()
    try:
        for protocol in ("5", "3.1.1"):
            extra = f'protocol = "{protocol}"\nusername = "node"\npassword = "wrong"'
            config = write_config(
                tmp_path, broker_port=broker.port, pump_port=pump_port, mqtt_extra=extra
            )
            report = check(config, capsys, pump_port=pump_port)
            assert report.code == 1
            assert list(report.errors()) == ["mqtt"]
            assert "authentication failed" in report.errors()["mqtt"], protocol
            assert "mqtt.username" in (report.checks["mqtt"]["fix"] or "")
    finally:
        broker.stop()


# paho-mqtt 2.2 does not close its socket when the TLS handshake fails
# (`Client._ssl_wrap_socket`); it is closed when collected, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.mosquitto
def test_an_untrusted_broker_certificate_is_a_tls_error(
    tmp_path: Path, pki: Pki, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Mosquitto(tmp_path, pki=pki)
    broker.start()
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")  # a CA that did not sign the broker's certificate
    try:
        extra = (
            f'[mqtt.tls]\nca = "{other.ca}"\ncert = "{pki.client_cert}"\nkey = "{pki.client_key}"'
        )
        config = write_config(
            tmp_path, broker_port=broker.port, pump_port=pump_port, mqtt_extra=extra
        )
        report = check(config, capsys, pump_port=pump_port)
    finally:
        broker.stop()
    assert list(report.errors()) == ["mqtt"]
    assert "TLS handshake failed" in report.errors()["mqtt"]
    assert "mqtt.tls.ca" in (report.checks["mqtt"]["fix"] or "")


def test_silent_peers_time_out_within_the_timeout(
    tmp_path: Path, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        config = write_config(tmp_path, broker_port=port, pump_port=pump_port)
        config.write_text(
            config.read_text().replace(
                "[mqtt]",
                f'[[supply.registries]]\nhost = "127.0.0.1:{port}"\ninsecure = true\n\n[mqtt]',
            )
        )
        report = check(config, capsys, pump_port=pump_port, timeout=0.5)
    assert report.errors() == {
        "mqtt": f"broker 127.0.0.1:{port}: no CONNACK within 0.5 s",
        f"registry 127.0.0.1:{port}": f"GET http://127.0.0.1:{port}/v2/: no answer within 0.5 s",
    }
    assert report.elapsed < 3


def test_device_down_is_an_error_naming_it(
    tmp_path: Path, mosquitto: Mosquitto, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, broker_port=mosquitto.port, pump_port=pump_port)
    report = check(config, capsys, pump_port=None)
    assert report.code == 1
    assert report.errors() == {
        "device pump-1": f"device 'pump-1': cannot connect to 127.0.0.1:{pump_port}: "
        "Connection refused"
    }


def test_missing_trusted_key_is_an_error_and_no_key_a_warning(
    tmp_path: Path, mosquitto: Mosquitto, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "keys" / "cosign.pub"
    config = write_config(tmp_path, broker_port=mosquitto.port, pump_port=pump_port, keys=[missing])
    report = check(config, capsys, pump_port=pump_port)
    assert report.code == 1
    assert list(report.errors()) == ["trusted keys"]
    assert str(missing) in report.errors()["trusted keys"]

    config = write_config(tmp_path, broker_port=mosquitto.port, pump_port=pump_port, keys=[])
    report = check(config, capsys, pump_port=pump_port)
    assert report.code == 0
    assert report.checks["trusted keys"]["verdict"] == "warning"
    assert "no signed module can run" in report.checks["trusted keys"]["message"]


def test_a_state_dir_under_a_regular_file_is_an_error(
    tmp_path: Path, mosquitto: Mosquitto, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain").write_text("not a directory")
    state = tmp_path / "plain" / "state"
    config = write_config(
        tmp_path, broker_port=mosquitto.port, pump_port=pump_port, state_dir=state
    )
    report = check(config, capsys, pump_port=pump_port)
    assert report.code == 1
    assert report.errors() == {
        "state dir": f"cannot create {state}: {tmp_path / 'plain'} is not a directory"
    }


def test_a_broken_config_names_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, broker_port=1883, pump_port=502)
    config.write_text(config.read_text().replace('kind = "wasmtime"', 'kind = "v8"'))
    report = check(config, capsys, pump_port=None)
    assert report.code == 1
    assert list(report.checks) == ["config"]
    assert report.errors()["config"].startswith(f"{config}: engine.kind: ")


def test_module_refs_and_registries(
    tmp_path: Path, mosquitto: Mosquitto, pump_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    down = free_port()
    config = write_config(tmp_path, broker_port=mosquitto.port, pump_port=pump_port)
    config.write_text(
        config.read_text().replace(
            "[mqtt]",
            f'[[supply.registries]]\nhost = "127.0.0.1:{down}"\ninsecure = true\n\n'
            f'[[modules]]\nname = "scale"\nref = "127.0.0.1:{down}/edge/scale:1.0.0"\n\n'
            '[[modules]]\nname = "bad"\nref = "scale:1.0.0"\n\n'
            '[[modules]]\nname = "layout"\nref = "oci:nowhere:1.0.0"\n\n[mqtt]',
        )
    )
    report = check(config, capsys, pump_port=pump_port)
    assert report.verdicts()["module scale"] == "ok"
    errors = report.errors()
    assert set(errors) == {f"registry 127.0.0.1:{down}", "module bad", "module layout"}
    assert "GET http://127.0.0.1:" in errors[f"registry 127.0.0.1:{down}"]
    assert "explicit registry host" in errors["module bad"]
    assert "not an OCI layout" in errors["module layout"]


def test_the_text_report_has_the_same_verdicts(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    pump_port = free_port()
    config = write_config(tmp_path, broker_port=mosquitto.port, pump_port=pump_port)
    json_report = check(config, capsys, pump_port=None)
    assert main(["check", "--config", str(config)]) == json_report.code == 1
    lines = capsys.readouterr().out.splitlines()
    shown = {
        name: line.split()[0]
        for line in lines
        for name in json_report.checks
        if line.split()[0] in ("ok", "warning", "error") and f" {name} " in f" {line} "
    }
    assert shown == json_report.verdicts()
    assert any(line.strip().startswith("fix: check that the device") for line in lines)
    assert lines[-1] == f"{len(json_report.checks) - 1} ok, 0 warnings, 1 error"
