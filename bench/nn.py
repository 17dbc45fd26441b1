"""Per-inference cost of WASI-NN through a guest, per engine, against LiteRT from Python.

Both sides run the bundled anomaly model on the same 12 features, in the same run:
- guest: one `infer` call into a small WAT guest that does what a module does per
  inference (set_input, compute, get_output through `wasi_ephemeral_nn`), so the
  figure is the ABI's cost and not the module's JSON work;
- module: one reading through `modules/dist/anomaly.wasm` (features, inference, JSON
  and emit), for scale;
- baseline: LiteRT's `set_tensor`, `invoke()` and `get_tensor` called from Python.

    .venv/bin/python bench/nn.py [--runs N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import wasmtime
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from agent.errors import EngineUnavailable
from agent.nn import ModelSet, nn_host_functions
from agent.reading import Reading
from agent.wasm import Limits, ReactorModule, WasiSpec, create_engine

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "modules" / "anomaly" / "model.tflite"
READINGS = ROOT / "modules" / "anomaly" / "pump-readings.jsonl"
FEATURES = np.linspace(0.5, 60, 12, dtype=np.float32)

# infer(ctx, tensor_ptr, out_ptr, written_ptr): set_input, compute, get_output.
GUEST = """(module
  (import "wasi_ephemeral_nn" "set_input" (func $set (param i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "compute" (func $compute (param i32) (result i32)))
  (import "wasi_ephemeral_nn" "get_output"
    (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "load_by_name" (func $load (param i32 i32 i32) (result i32)))
  (import "wasi_ephemeral_nn" "init_execution_context"
    (func $init (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "open") (param $name i32) (param $len i32) (param $out i32) (result i32)
    (local $rc i32)
    (local.set $rc (call $load (local.get $name) (local.get $len) (local.get $out)))
    (if (local.get $rc) (then (return (local.get $rc))))
    (call $init (i32.load (local.get $out)) (local.get $out)))
  (func (export "infer") (param $ctx i32) (param $t i32) (param $o i32) (param $w i32)
    (result i32)
    (local $rc i32)
    (local.set $rc (call $set (local.get $ctx) (i32.const 0) (local.get $t)))
    (if (local.get $rc) (then (return (local.get $rc))))
    (local.set $rc (call $compute (local.get $ctx)))
    (if (local.get $rc) (then (return (local.get $rc))))
    (call $get (local.get $ctx) (i32.const 0) (local.get $o) (i32.const 4) (local.get $w))))
"""


def per_call_us(fn: Callable[[], object], runs: int) -> float:
    """Median of 5 rounds of `runs` calls, in microseconds per call."""
    for _ in range(min(runs, 200)):
        fn()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(runs):
            fn()
        rounds.append((time.perf_counter() - start) / runs * 1e6)
    return statistics.median(rounds)


def wide_model(directory: Path, hidden: int = 16384) -> Path:
    """The anomaly model's shape, 12 -> `hidden` -> 1, with random weights: a model whose
    inference costs about what a real one does, so the ABI's fixed cost shows in scale."""
    spec = importlib.util.spec_from_file_location("make_model", ROOT / "scripts/make-model.py")
    assert spec is not None
    assert spec.loader is not None
    make_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_model)
    rng = np.random.default_rng(1)
    params = [rng.normal(0, 0.1, (hidden, 12)), np.zeros(hidden), rng.normal(0, 0.01, (1, hidden))]
    path = directory / "wide.tflite"
    path.write_bytes(make_model.tflite_model([*params, np.zeros(1)]))
    return path


def litert_call(model: Path) -> Callable[[], object]:
    interpreter = Interpreter(
        model_path=str(model),
        num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    row = FEATURES[None, :]

    def call() -> object:
        interpreter.set_tensor(inp, row)
        interpreter.invoke()
        return interpreter.get_tensor(out)

    return call


def guest_call(engine: object, models: ModelSet) -> Callable[[], object]:
    compiled = engine.compile(wasmtime.wat2wasm(GUEST), "nn-bench")  # type: ignore[attr-defined]
    instance = compiled.instantiate(nn_host_functions(models), WasiSpec(), Limits())
    memory = instance.memory
    memory.write(0, b"anomaly")
    if instance.call("open", 0, 7, 16):
        raise SystemExit("bench/nn.py: the guest could not open the model")
    ctx = struct.unpack("<I", memory.read(16, 4))[0]
    memory.write(64, struct.pack("<2I", 1, 12))
    memory.write(128, FEATURES.tobytes())
    memory.write(32, struct.pack("<5I", 64, 2, 1, 128, 48))

    def call() -> object:
        return instance.call("infer", ctx, 32, 256, 260)

    if call():
        raise SystemExit("bench/nn.py: the guest's inference failed")
    return call


def module_call(engine: object, models: ModelSet) -> Callable[[], object]:
    compiled = engine.compile((ROOT / "modules/dist/anomaly.wasm").read_bytes(), "anomaly")  # type: ignore[attr-defined]
    module = ReactorModule(compiled, {}, instance_host=lambda: nn_host_functions(models))
    readings = [Reading.from_json(json.loads(line)) for line in READINGS.read_text().splitlines()]
    for r in readings[:32]:
        module.on_reading(r)
    reading = readings[40]
    return lambda: module.on_reading(reading)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for title, model, runs in (
            ("bundled anomaly model (12 -> 16 -> 1)", MODEL, args.runs),
            ("a wide model (12 -> 16384 -> 1, random weights)", wide_model(Path(tmp)), 200),
        ):
            print(title)
            measure(Path(tmp), model, runs, with_module=model == MODEL)
    return 0


def measure(cache: Path, model: Path, runs: int, *, with_module: bool) -> None:
    models = ModelSet.from_files({"anomaly": model})
    baseline = per_call_us(litert_call(model), runs)
    print(f"  {'LiteRT from Python':32} {baseline:8.2f} us/inference (baseline)")
    for label, kind, aot in (
        ("wasmtime", "wasmtime", True),
        ("WasmEdge AOT", "wasmedge", True),
        ("WasmEdge interpreter", "wasmedge", False),
    ):
        try:
            engine = create_engine(kind, cache_dir=cache, aot=aot)  # type: ignore[arg-type]
        except EngineUnavailable as err:
            print(f"  {label:32} skipped: {err}")
            continue
        if aot and engine.mode != "aot" and kind == "wasmedge":
            print(f"  {label:32} skipped: this libwasmedge has no AOT compiler")
            continue
        guest = per_call_us(guest_call(engine, models), runs)
        line = f"  {label + ' guest':32} {guest:8.2f} us/inference  {guest / baseline:5.2f}x"
        if with_module:
            module = per_call_us(module_call(engine, models), runs // 4)
            line += f" (module, one reading: {module:.2f} us, {module / baseline:.2f}x)"
        print(line)
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
