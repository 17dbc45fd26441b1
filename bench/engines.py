"""Per-invocation cost of `window-stats` through the agent's call path, per engine.

Each figure comes with its baseline from the same run: the same rolling-window
algorithm in pure Python, fed the same readings (a 1,000-sample f32 series and two
scalar values each, emitting every reading). Also: loading a module from the compiled
cache and starting an instance (`_initialize`, ABI check, `edge_configure`).

    .venv/bin/python bench/engines.py [--readings N]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path

from agent.errors import EngineUnavailable
from agent.reading import Reading, Series, Value
from agent.wasm import ReactorModule, create_engine

ROOT = Path(__file__).resolve().parent.parent
WASM = (ROOT / "modules" / "dist" / "window-stats.wasm").read_bytes()
WINDOW = 1000


class PythonWindowStats:
    """window-stats in pure Python: a ring per channel, two passes at emit time."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.rings: dict[str, tuple[list[float], list[int]]] = {}

    def _push(self, name: str, samples: list[float]) -> None:
        ring, state = self.rings.setdefault(name, ([0.0] * self.window, [0, 0]))
        head, n = state
        for x in samples:
            ring[head] = x
            head = (head + 1) % self.window
            n = min(n + 1, self.window)
        state[0], state[1] = head, n

    def on_reading(self, r: Reading) -> bytes:
        for name, v in r.values.items():
            if isinstance(v.value, int | float) and not isinstance(v.value, bool):
                self._push(name, [float(v.value)])
        for name, s in r.series.items():
            self._push(name, array("f", s.data).tolist())
        channels = {}
        for name, (ring, (head, n)) in self.rings.items():
            start = (head - n) % self.window
            xs = [ring[(start + i) % self.window] for i in range(n)]
            mean = sum(xs) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)
            rms = math.sqrt(sum(x * x for x in xs) / n)
            channels[name] = {
                "n": n,
                "mean": mean,
                "std": std,
                "min": min(xs),
                "max": max(xs),
                "rms": rms,
            }
        doc = {
            "device": r.device,
            "seq": r.seq,
            "ts": r.ts,
            "window": self.window,
            "channels": channels,
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def readings(n: int) -> list[Reading]:
    rng = random.Random(1)
    return [
        Reading(
            "pump-1",
            1764118800.0 + i,
            i,
            {
                "temperature": Value(60 + rng.random(), "degC"),
                "pressure": Value(2 + rng.random(), "bar"),
            },
            {"vibration": Series.pack("f32", [rng.gauss(0, 1) for _ in range(1000)])},
        )
        for i in range(n)
    ]


def per_call_us(fn: Callable[[Reading], object], data: list[Reading], rounds: int = 5) -> float:
    """Median over rounds of the mean time per reading, after a warm-up pass."""
    for r in data[:50]:
        fn(r)
    results = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for r in data:
            fn(r)
        results.append((time.perf_counter() - t0) / len(data) * 1e6)
    return statistics.median(results)


def instantiate_us(kind: str, aot: bool, cache: Path, n: int = 50) -> tuple[float, float]:
    """(load from the compiled cache, start an instance), median microseconds."""
    engine = create_engine(kind, cache_dir=cache, aot=aot)  # type: ignore[arg-type]
    engine.compile(WASM, "window-stats").close()  # fills the cache
    loads, starts = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        compiled = engine.compile(WASM, "window-stats")
        t1 = time.perf_counter()
        module = ReactorModule(compiled, {"window": WINDOW})
        t2 = time.perf_counter()
        module.close()
        compiled.close()
        loads.append((t1 - t0) * 1e6)
        starts.append((t2 - t1) * 1e6)
    engine.close()
    return statistics.median(loads), statistics.median(starts)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=400)
    args = parser.parse_args()
    data = readings(args.readings)
    configs = [
        ("wasmtime", True, "wasmtime (cranelift)"),
        ("wasmedge", True, "wasmedge (aot)"),
        ("wasmedge", False, "wasmedge (interpreter)"),
    ]
    print(
        f"window-stats, window {WINDOW}, {args.readings} readings of 1,000 f32 samples + 2 values"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind, aot, label in configs:
            try:
                engine = create_engine(kind, cache_dir=Path(tmp), aot=aot)  # type: ignore[arg-type]
            except EngineUnavailable as err:
                print(f"{label:24} skipped: {err}")
                continue
            if kind == "wasmedge" and engine.mode != ("aot" if aot else "interpreter"):
                print(f"{label:24} skipped: this libwasmedge has no AOT compiler")
                engine.close()
                continue
            module = ReactorModule(engine.compile(WASM, "window-stats"), {"window": WINDOW})
            python = PythonWindowStats(WINDOW)
            assert (
                json.loads(module.on_reading(data[0])[0].payload)["channels"].keys()
                == json.loads(python.on_reading(data[0]))["channels"].keys()
            )
            wasm_us = per_call_us(module.on_reading, data)
            py_us = per_call_us(python.on_reading, data)
            module.close()
            engine.close()
            load_us, start_us = instantiate_us(kind, aot, Path(tmp) / label.replace(" ", ""))
            print(
                f"{label:24} {wasm_us:8.1f} us/reading   pure Python {py_us:8.1f} us"
                f"   speed-up {py_us / wasm_us:5.1f}x"
                f"   | load from cache {load_us:7.1f} us, start instance {start_us:7.1f} us"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
