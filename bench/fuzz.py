"""Fuzzing every parser of outside input: bad input must get a typed error, fast.

    .venv/bin/python bench/fuzz.py TARGET --runs N     # one target (--help lists them)
    .venv/bin/python bench/fuzz.py --all --runs N      # every target, one after another
    .venv/bin/python bench/fuzz.py --write-corpus      # rewrite fuzz/corpus/ from the repo

Targets (in `bench/fuzz_targets.py`): the command router in plain and signed mode,
`Reading.from_json`, the config and register map files, `module.toml` and the manifest
layer, OCI manifests, indexes and references, cosign bundles, simple signatures and
public keys, and Modbus reply decoding. An escape is any exception but the errors the
parser documents (`AgentError` subclasses; `ValueError` for readings and the codec), or
an input that takes more than a second. The first input of each kind of escape is kept
in `--artifacts` (default: $TMPDIR/edge-agent-fuzz), with libFuzzer's log and the corpus
it grew; the command exits 1 when anything escaped.

The engine is libFuzzer through atheris (coverage-guided; x86_64: atheris ships no
aarch64 wheels), each target in a child process, starting from `fuzz/corpus/<target>/`,
with a dictionary and a fifth of the mutations of our own (`mutate`): the values that
break parsers (NaN, a 400-digit number, 3000 brackets) take coverage alone long to build.
`--engine builtin` is that mutator alone, seeded and without coverage feedback, needing
nothing but the standard library; tests/test_fuzz.py runs a short slice of it in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_targets import CORPUS, TARGETS, Target, write_corpus

SLOW_S = 1.0
"""An input the parser takes longer than this over is an escape too."""


@dataclass
class Tally:
    target: str
    inputs: int = 0
    escapes: int = 0
    seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)
    """Escapes by exception type and the line that raised it."""


class Harness:
    """Runs one target on one input and judges the outcome; a context manager."""

    def __init__(self, target: Target, artifacts: Path | None) -> None:
        self.target = target
        self._resources = ExitStack()
        scratch = Path(self._resources.enter_context(tempfile.TemporaryDirectory()))
        self.run = self._resources.enter_context(target.setup(scratch))
        self.allowed = target.allowed()
        self.tally = Tally(target.name)
        self.artifacts = artifacts

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self._resources.close()

    def __call__(self, data: bytes) -> str | None:
        """None when the target answered as documented, else what escaped."""
        self.tally.inputs += 1
        started = time.perf_counter()
        escape = None
        try:
            self.run(data)
        except self.allowed:
            pass
        except Exception as err:
            escape = _describe(err)
        took = time.perf_counter() - started
        if escape is None and took > SLOW_S:
            escape = f"slow: {took:.2f} s"
        if escape is not None:
            self._record(escape, data)
        return escape

    def _record(self, escape: str, data: bytes) -> None:
        self.tally.escapes += 1
        first = escape not in self.tally.kinds
        self.tally.kinds[escape] = self.tally.kinds.get(escape, 0) + 1
        if first and self.artifacts is not None:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            name = f"{self.target.name}-{hashlib.sha256(data).hexdigest()[:16]}"
            (self.artifacts / name).write_bytes(data)
            print(f"escape {escape}\n  input: {self.artifacts / name}", file=sys.stderr)


def _describe(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(err).__name__} at {where}"


def seeds(target: str) -> list[bytes]:
    directory = CORPUS / target
    return [p.read_bytes() for p in sorted(directory.iterdir())] if directory.is_dir() else []


# --- the builtin engine --------------------------------------------------------------

_TOKENS = [
    b"[" * 3000,  # past the interpreter's recursion limit
    b"[" * 40,
    b"{" * 40,
    b'"\\ud800"',
    b"NaN",
    b"-Infinity",
    b"1" + b"0" * 400,
    b"1e400",
    b"-1",
    b"[]",
    b"{}",
    b"null",
    b"true",
    b'""',
    b"\x00",
    b"\xff\xfe",
    b"9223372036854775808",
    b"nan",
    b"inf",
    b"[[[[[[[[",
    b"a.a.a.a.a = 1\n",
    b"= [{a=[{a=[",
]


def mutate(rng: random.Random, data: bytes, pool: list[bytes], max_len: int) -> bytes:
    """One to four random edits: flips, inserts, deletes, copies, splices, tokens."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        op = rng.randrange(7)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and out:
            del out[at : at + rng.randint(1, 16)]
        elif op == 3 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 64)] * rng.randint(1, 4)
        elif op == 4:
            other = rng.choice(pool)
            out[at:] = other[rng.randint(0, len(other)) :]
        elif op == 5:
            out[at:at] = rng.choice(_TOKENS)
        elif out:
            out[min(at, len(out) - 1)] = rng.choice(b'[]{}",:=.\\0-9eE+ \n')
    return bytes(out[:max_len])


def builtin_inputs(target: Target, runs: int, seed: int) -> Iterator[bytes]:
    """The seeds themselves, then `runs` mutants of them, the same for the same seed."""
    rng = random.Random(f"{target.name}:{seed}")
    pool = seeds(target.name) or [b""]
    yield from pool[:runs]
    for _ in range(runs - min(runs, len(pool))):
        yield mutate(rng, rng.choice(pool), pool, target.max_len)


def run_builtin(name: str, runs: int, seed: int, artifacts: Path | None) -> Tally:
    with Harness(TARGETS[name], artifacts) as harness:
        started = time.perf_counter()
        for data in builtin_inputs(harness.target, runs, seed):
            harness(data)
        harness.tally.seconds = time.perf_counter() - started
    return harness.tally


# --- the atheris engine --------------------------------------------------------------


def run_atheris_child(name: str, runs: int, seed: int, artifacts: Path, result: Path) -> None:
    """In a child process: libFuzzer runs once per process and exits by itself."""
    atheris: Any = importlib.import_module("atheris")  # x86_64 only: not imported up top

    target = TARGETS[name]
    result.parent.mkdir(parents=True, exist_ok=True)
    with atheris.instrument_imports(include=["agent", "tomllib", "json"]):
        harness = Harness(target, artifacts)  # never closed: libFuzzer ends the process
    started = time.perf_counter()

    def one(data: bytes) -> None:
        harness(data)
        if harness.tally.inputs >= runs:
            harness.tally.seconds = time.perf_counter() - started
            result.write_text(json.dumps(harness.tally.__dict__))
            sys.stdout.flush()
            os._exit(0)

    work = artifacts / f"{name}.corpus"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    dictionary = artifacts / "tokens.dict"
    dictionary.write_text(libfuzzer_dict([*_TOKENS, b"0" * 60]))
    argv = [
        sys.argv[0],
        str(work),  # libFuzzer adds what it finds to the first directory: not the seeds
        str(CORPUS / name),
        f"-seed={seed}",
        f"-max_len={target.max_len}",
        "-len_control=0",  # the long tokens need room from the start
        "-timeout=60",
        "-rss_limit_mb=4096",
        "-print_final_stats=0",
        f"-dict={dictionary}",
        f"-artifact_prefix={artifacts}/",  # where libFuzzer leaves an input that killed it
    ]
    pool = seeds(name) or [b""]

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        # A fifth of the mutations are ours, half of those of a valid seed.
        rng = random.Random(seed)
        if rng.random() < 0.8:
            mutated: bytes = atheris.Mutate(data, max_size)
            return mutated
        return mutate(rng, rng.choice((data, rng.choice(pool))), pool, max_size)

    atheris.Setup(argv, one, custom_mutator=mutator)
    atheris.Fuzz()


def libfuzzer_dict(tokens: list[bytes]) -> str:
    """`tokens` as a libFuzzer dictionary (entries of 64 bytes at most): the values
    that break parsers, which coverage alone reaches slowly (a 400-digit number)."""
    lines = []
    for i, token in enumerate(t for t in tokens if len(t) <= 64):
        text = "".join(
            chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token
        )
        lines.append(f'token{i}="{text}"')
    return "\n".join(lines) + "\n"


def run_atheris(name: str, runs: int, seed: int, artifacts: Path) -> Tally:
    result = artifacts / f"{name}.result.json"
    log = artifacts / f"{name}.libfuzzer.log"
    artifacts.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", name, "--runs", str(runs)]
    command += ["--seed", str(seed), "--artifacts", str(artifacts)]
    started = time.perf_counter()
    with log.open("wb") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if not result.exists():  # libFuzzer stopped it: a hang, a crash or memory
        lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
        why = f"the fuzzer died ({lines[-1][:120]}); see {log}"
        return Tally(name, 0, 1, time.perf_counter() - started, {why: 1})
    return Tally(**json.loads(result.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", choices=sorted(TARGETS))
    parser.add_argument("--all", action="store_true", help="every target, one at a time")
    parser.add_argument("--runs", type=int, default=10_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=("atheris", "builtin"), default=None)
    parser.add_argument("--artifacts", type=Path, default=None, help="where escapes go")
    parser.add_argument("--write-corpus", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    artifacts = args.artifacts or Path(tempfile.gettempdir()) / "edge-agent-fuzz"
    if args.child:
        run_atheris_child(args.child, args.runs, args.seed, artifacts, _result(artifacts, args))
        return 0
    if args.write_corpus:
        write_corpus()
        return 0
    names = sorted(TARGETS) if args.all else [args.target] if args.target else []
    if not names:
        parser.error("name a target or give --all")
    engine = args.engine or ("atheris" if _has_atheris() else "builtin")
    run: Callable[[str, int, int, Path], Tally] = (
        run_atheris if engine == "atheris" else run_builtin
    )
    print(f"engine {engine}, seed {args.seed}, escapes' inputs in {artifacts}")
    print(f"{'target':<10} {'inputs':>10} {'escapes':>8} {'seconds':>8}")
    failed = 0
    for name in names:
        tally = run(name, args.runs, args.seed, artifacts)
        failed += tally.escapes
        print(f"{name:<10} {tally.inputs:>10} {tally.escapes:>8} {tally.seconds:>8.1f}")
        for kind, count in sorted(tally.kinds.items()):
            print(f"    {count:>8} x {kind}")
    return 1 if failed else 0


def _result(artifacts: Path, args: argparse.Namespace) -> Path:
    return artifacts / f"{args.child}.result.json"


def _has_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


if __name__ == "__main__":
    sys.exit(main())
