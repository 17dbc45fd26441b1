"""A short, seeded slice of every fuzz target of `bench/fuzz.py`, so a parser that starts
answering bad input with a bare exception again fails here, not in production.

The slice uses the builtin mutator (seeded: the same inputs on every run and machine);
the long coverage-guided runs are `bench/fuzz.py --all --runs 1000000` on atheris.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fuzz = _load("fuzz")

RUNS = {
    "commands": 10_000,
    "reading": 20_000,
    "modbus": 20_000,
    "oci": 10_000,
    "cosign": 4000,
    "module": 2000,
    "registers": 2000,
    "config": 1500,
    "fleet": 3000,
}
"""Inputs per target: one to two seconds each on a 2-core machine."""


def test_every_target_has_a_slice_and_seeds() -> None:
    assert set(RUNS) == set(fuzz.TARGETS)
    for name in fuzz.TARGETS:
        assert fuzz.seeds(name), f"fuzz/corpus/{name}/ has no seeds"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_seeds_are_valid_input(name: str, tmp_path: Path) -> None:
    """`seed-*` files are real, valid inputs: they must get through without any error."""
    with fuzz.TARGETS[name].setup(tmp_path) as run:
        for path in sorted((fuzz.CORPUS / name).glob("seed-*")):
            run(path.read_bytes())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_seeded_slice_finds_no_escape(name: str, tmp_path: Path) -> None:
    tally = fuzz.run_builtin(name, RUNS[name], seed=13, artifacts=tmp_path)
    assert tally.inputs == RUNS[name]
    assert tally.kinds == {}, f"escapes; their inputs are in {tmp_path}"


def test_the_mutator_is_deterministic() -> None:
    target = fuzz.TARGETS["reading"]
    first = list(fuzz.builtin_inputs(target, 200, 7))
    assert first == list(fuzz.builtin_inputs(target, 200, 7))
    assert first != list(fuzz.builtin_inputs(target, 200, 8))


def test_an_escape_is_counted_and_kept(tmp_path: Path) -> None:
    with fuzz.Harness(fuzz.TARGETS["modbus"], tmp_path) as harness:
        harness.allowed = ()  # now the codec's documented ValueError counts as an escape
        escape = harness(bytes([8, 0, 0, 0]) + b"\x00\x01")
    assert escape is not None
    assert escape.startswith("ValueError at _codec.py:")
    assert harness.tally.escapes == 1
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.skipif(not fuzz._has_atheris(), reason="atheris is not installed (x86_64 only)")
def test_the_coverage_guided_engine_runs(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH / "fuzz.py"), "reading", "--runs", "3000"]
    command += ["--engine", "atheris", "--artifacts", str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].split()[:3] == ["reading", "3000", "0"]
