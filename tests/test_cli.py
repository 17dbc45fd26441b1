"""`edge-agent` as an operator runs it: a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.reading import Reading
from agent.wasm import encode_reading

from .conftest import DIST, ENGINES, REPO
from .test_engines import pump_readings

pytestmark = pytest.mark.arm64


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def write_readings(path: Path, readings: list[Reading]) -> Path:
    lines = []
    for r in readings:
        doc = json.loads(encode_reading(r)[0])
        doc["series"] = {
            name: {"type": s.dtype, "unit": s.unit, "data": s.values()}
            for name, s in r.series.items()
        }
        lines.append(json.dumps(doc))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("engine_name", [p for p in ENGINES if "interpreter" not in p.id])
def test_module_run_prints_the_same_lines_on_every_engine(tmp_path: Path, engine_name: str) -> None:
    readings = write_readings(tmp_path / "in.jsonl", pump_readings(4, samples=200))
    args = (
        "module",
        "run",
        str(DIST / "window-stats.wasm"),
        "--input",
        str(readings),
        "--config",
        '{"window": 300, "every": 2}',
        "--cache-dir",
        str(tmp_path / "c"),
    )
    reference = edge_agent(*args, "--engine", "wasmtime")
    result = edge_agent(*args, "--engine", engine_name)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(m["topic"], m["payload"]["seq"]) for m in lines] == [("stats", 1), ("stats", 3)]
    assert result.stdout == reference.stdout


def test_module_run_names_the_bad_input_line(tmp_path: Path) -> None:
    readings = tmp_path / "in.jsonl"
    readings.write_text('{"device": "d", "ts": 1, "seq": 0}\n{"device": "d", "ts": 1, "seq": -4}\n')
    result = edge_agent("module", "run", str(DIST / "scale.wasm"), "--input", str(readings))
    assert result.returncode == 2
    assert f"{readings}:2: 'seq' must be a non-negative integer, got -4" in result.stderr


def test_module_run_reports_a_fault_and_fails(tmp_path: Path) -> None:
    readings = write_readings(tmp_path / "in.jsonl", pump_readings(1, samples=1))
    result = edge_agent(
        "module",
        "run",
        str(DIST / "faulty.wasm"),
        "--input",
        str(readings),
        "--config",
        '{"fault": "trap"}',
        "--engine",
        "wasmtime",
    )
    assert result.returncode == 1
    assert "module 'faulty': trapped: wasm `unreachable` instruction executed" in result.stderr


def test_config_show_validates(tmp_path: Path) -> None:
    assert edge_agent("config", "show", str(REPO / "config" / "agent.toml")).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nkind = 3\n")
    result = edge_agent("config", "show", str(bad))
    assert result.returncode == 1
    assert "engine.kind: Input should be 'auto', 'wasmedge' or 'wasmtime'" in result.stderr


def test_help_lists_the_commands() -> None:
    result = edge_agent("--help")
    assert result.returncode == 0
    assert "module" in result.stdout
    assert "config" in result.stdout
