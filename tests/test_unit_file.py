"""The systemd unit: valid for `systemd-analyze verify`, exposure at most 3.0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

UNIT = REPO / "systemd" / "edge-agent.service"
EXEC_START = "/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/agent.toml"

pytestmark = pytest.mark.systemd


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's edge-agent.

    verify checks that the command exists; the installed venv does not on a test
    machine, so only that path is swapped and everything else is the shipped unit.
    """
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START}\n" in text
    here = Path(sys.executable).with_name("edge-agent")
    assert here.exists(), f"{here} missing: run through scripts/test"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("/opt/edge-agent/venv/bin/edge-agent", str(here)))
    return copy


def test_unit_verifies(tmp_path: Path) -> None:
    result = analyze("verify", str(unit_here(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_security_exposure_is_at_most_3(tmp_path: Path) -> None:
    result = analyze("security", "--offline=yes", "--no-pager", str(unit_here(tmp_path)))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:]
    assert float(match.group(1)) <= 3.0, result.stdout


def test_wasm_jits_are_not_forbidden_writable_executable_memory() -> None:
    settings = [
        line.split("=", 1)[0]
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    ]
    assert "MemoryDenyWriteExecute" not in settings
    assert "PrivateDevices" not in settings  # would hide the serial ports
    for required in (
        "Type",
        "WatchdogSec",
        "StateDirectory",
        "RuntimeDirectory",
        "ConfigurationDirectory",
        "SupplementaryGroups",
    ):
        assert required in settings, required
