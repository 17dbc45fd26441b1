"""WASI-NN: the anomaly module's scores against LiteRT run directly, and the host ABI's
answers to bad input, on every available engine."""

from __future__ import annotations

import functools
import importlib.util
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import wasmtime
from ai_edge_litert.interpreter import Interpreter

from agent import errors
from agent.nn import FUNCTIONS, ErrNo, ModelSet, NNLimits, TensorType, nn_host_functions
from agent.reading import Reading
from agent.supply import read_module_dir
from agent.wasm import CompiledModule, Engine, Instance, Limits, ReactorModule, WasiSpec

from .conftest import DIST, ENGINES, REPO, module_bytes
from .test_cli import edge_agent

pytestmark = pytest.mark.arm64

MODEL = REPO / "modules" / "anomaly" / "model.tflite"
PUMP_READINGS = REPO / "modules" / "anomaly" / "pump-readings.jsonl"
F32 = int(TensorType.F32)


@functools.cache
def make_model() -> ModuleType:
    """scripts/make-model.py, whose `features` the module must reproduce."""
    spec = importlib.util.spec_from_file_location("make_model", REPO / "scripts" / "make-model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ModelSet.from_files({"anomaly": MODEL})


def litert_scores(features: np.ndarray) -> list[float]:
    """The reference: LiteRT's own interpreter, default options, one row at a time."""
    interpreter = Interpreter(model_path=str(MODEL))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    scores = []
    for row in features:
        interpreter.set_tensor(inp["index"], row[None, :])
        interpreter.invoke()
        scores.append(float(interpreter.get_tensor(out["index"])[0, 0]))
    return scores


def expected_scores(docs: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """The seqs the module scores (every full window) and LiteRT's scores for them."""
    mm = make_model()
    samples = np.array([[d["values"][c]["value"] for c in mm.CHANNELS] for d in docs])
    seqs = list(range(mm.WINDOW - 1, len(docs)))
    windows = np.stack([samples[s - mm.WINDOW + 1 : s + 1] for s in seqs])
    return seqs, litert_scores(mm.features(windows))


def test_guest_scores_equal_litert_on_the_same_features(engine: Engine, models: ModelSet) -> None:
    docs = [json.loads(line) for line in PUMP_READINGS.read_text().splitlines()]
    compiled = engine.compile(module_bytes("anomaly"), "anomaly")
    module = ReactorModule(compiled, {}, instance_host=functools.partial(nn_host_functions, models))
    scores: dict[int, float] = {}
    alerts = []
    for doc in docs:
        for message in module.on_reading(Reading.from_json(doc)):
            payload = json.loads(message.payload)
            if message.topic == "anomaly":
                scores[payload["seq"]] = payload["score"]
                assert payload["anomaly"] == (payload["score"] >= 0.5)
            else:
                assert message.topic == "alerts/anomaly"
                alerts.append(payload["seq"])
    module.close()

    seqs, expected = expected_scores(docs)
    assert sorted(scores) == seqs
    np.testing.assert_allclose([scores[s] for s in seqs], expected, rtol=0, atol=1e-5)
    # The stream turns faulty at 120: the model must see it, once, and not before.
    first = min(s for s in seqs if scores[s] >= 0.5)
    assert 120 <= first < 130
    assert alerts[0] == first


def test_a_module_importing_wasi_nn_without_models_is_refused(engine: Engine) -> None:
    compiled = engine.compile(module_bytes("anomaly"), "anomaly")
    with pytest.raises(errors.MissingImport, match=r"wasi_ephemeral_nn\..*--model NAME=PATH"):
        ReactorModule(compiled, {})


def test_an_unknown_model_name_fails_configure_and_the_module_says_why(
    engine: Engine, models: ModelSet, caplog: pytest.LogCaptureFixture
) -> None:
    compiled = engine.compile(module_bytes("anomaly"), "anomaly")
    with pytest.raises(errors.CallFailed) as failure:
        ReactorModule(
            compiled,
            {"model": "missing"},
            instance_host=functools.partial(nn_host_functions, models),
        )
    assert (failure.value.function, failure.value.code) == ("edge_configure", 1)
    assert f'load_by_name("missing") failed: error {int(ErrNo.NOT_FOUND)}' in caplog.text


@pytest.mark.parametrize("engine_name", [p for p in ENGINES if "interpreter" not in p.id])
def test_module_run_with_a_model_gives_the_same_lines_on_every_engine(
    tmp_path: Path, engine_name: str
) -> None:
    args = (
        "module",
        "run",
        str(DIST / "anomaly.wasm"),
        "--model",
        f"anomaly={MODEL}",
        "--input",
        str(PUMP_READINGS),
        "--cache-dir",
        str(tmp_path / "c"),
    )
    reference = edge_agent(*args, "--engine", "wasmtime")
    result = edge_agent(*args, "--engine", engine_name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference.stdout
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    docs = [json.loads(line) for line in PUMP_READINGS.read_text().splitlines()]
    seqs, expected = expected_scores(docs)
    scores = [m["payload"]["score"] for m in lines if m["topic"] == "anomaly"]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert seqs == [m["payload"]["seq"] for m in lines if m["topic"] == "anomaly"]


def test_module_run_refuses_a_bad_model_argument(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a model")
    run = ("module", "run", str(DIST / "anomaly.wasm"), "--input", str(PUMP_READINGS))
    result = edge_agent(*run, "--model", f"anomaly={garbage}")
    assert result.returncode == 1
    assert "model 'anomaly' is not a usable TFLite model" in result.stderr
    result = edge_agent(*run, "--model", "anomaly")
    assert result.returncode == 2
    assert "'anomaly' is not NAME=PATH" in result.stderr
    result = edge_agent(*run)
    assert result.returncode == 1
    assert "wasi_ephemeral_nn" in result.stderr
    assert "--model NAME=PATH" in result.stderr


# A guest that hands each import straight to the test: the ABI's edge cases need
# pointers and lengths no C module would pass.


def _probe_wat() -> str:
    parts = []
    for name, n in FUNCTIONS.items():
        params = " ".join(["i32"] * n)
        gets = " ".join(f"local.get {i}" for i in range(n))
        parts.append(
            f'(import "wasi_ephemeral_nn" "{name}" (func ${name} (param {params}) (result i32)))'
        )
        parts.append(f'(func (export "{name}") (param {params}) (result i32) {gets} call ${name})')
    imports = [p for p in parts if p.startswith("(import")]
    funcs = [p for p in parts if p.startswith("(func")]
    return "(module\n" + "\n".join([*imports, '(memory (export "memory") 1)', *funcs]) + ")"


class Probe:
    """The probe guest's instance, with a bump allocator over its memory."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self._next = 1024

    def put(self, data: bytes) -> int:
        ptr = self._next
        self.instance.memory.write(ptr, data)
        self._next += (len(data) + 15) // 16 * 16 or 16
        return ptr

    def u32(self, ptr: int) -> int:
        return int(struct.unpack("<I", self.instance.memory.read(ptr, 4))[0])

    def call(self, name: str, *args: int) -> int:
        return int(self.instance.call(name, *args) or 0)

    def out(self) -> int:
        return self.put(b"\xff" * 4)

    def graph(self, name: str = "anomaly") -> int:
        raw = name.encode()
        out = self.out()
        assert self.call("load_by_name", self.put(raw), len(raw), out) == ErrNo.SUCCESS
        return self.u32(out)

    def context(self, graph: int) -> tuple[int, int]:
        out = self.out()
        code = self.call("init_execution_context", graph, out)
        return code, self.u32(out)

    def tensor(
        self, dims: list[int], data: bytes, rtype: int = F32, data_len: int | None = None
    ) -> int:
        dims_ptr = self.put(struct.pack(f"<{len(dims)}I", *dims))
        data_ptr = self.put(data)
        length = len(data) if data_len is None else data_len
        return self.put(struct.pack("<5I", dims_ptr, len(dims), rtype, data_ptr, length))


@pytest.fixture
def probe_module(engine: Engine) -> Iterator[CompiledModule]:
    compiled = engine.compile(wasmtime.wat2wasm(_probe_wat()), "nn-probe")
    yield compiled
    compiled.close()


def start_probe(
    compiled: CompiledModule, models: ModelSet, limits: NNLimits | None = None
) -> Probe:
    host = nn_host_functions(models, limits)
    return Probe(compiled.instantiate(host, WasiSpec(), Limits()))


FEATURES = np.linspace(0.5, 60, 12, dtype=np.float32)


def test_probe_inference_equals_litert(probe_module: CompiledModule, models: ModelSet) -> None:
    p = start_probe(probe_module, models)
    code, ctx = p.context(p.graph())
    assert code == ErrNo.SUCCESS
    assert p.call("set_input", ctx, 0, p.tensor([1, 12], FEATURES.tobytes())) == ErrNo.SUCCESS
    assert p.call("compute", ctx) == ErrNo.SUCCESS
    out, written = p.put(bytes(8)), p.out()
    assert p.call("get_output", ctx, 0, out, 8, written) == ErrNo.SUCCESS
    assert p.u32(written) == 4
    score = struct.unpack("<f", p.instance.memory.read(out, 4))[0]
    assert score == pytest.approx(litert_scores(FEATURES[None, :])[0], abs=1e-6)
    assert p.call("finalize_execution_context", ctx) == ErrNo.SUCCESS
    assert p.call("compute", ctx) == ErrNo.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("dims", "rtype", "data", "data_len"),
    [
        pytest.param([12, 1], F32, FEATURES.tobytes(), None, id="wrong-dims"),
        pytest.param([12], F32, FEATURES.tobytes(), None, id="wrong-rank"),
        pytest.param([1, 12], int(TensorType.I32), FEATURES.tobytes(), None, id="wrong-type"),
        pytest.param([1, 12], int(TensorType.F64), bytes(96), None, id="f64-unsupported"),
        pytest.param([1, 12], 99, FEATURES.tobytes(), None, id="unknown-type"),
        pytest.param([1, 12], F32, FEATURES.tobytes()[:40], None, id="short-buffer"),
        pytest.param([1, 12], F32, FEATURES.tobytes(), 1 << 20, id="data-past-memory"),
    ],
)
def test_bad_input_tensors_are_invalid_arguments_and_the_context_goes_on(
    probe_module: CompiledModule,
    models: ModelSet,
    dims: list[int],
    rtype: int,
    data: bytes,
    data_len: int | None,
) -> None:
    p = start_probe(probe_module, models)
    _, ctx = p.context(p.graph())
    bad = p.tensor(dims, data, rtype, data_len)
    assert p.call("set_input", ctx, 0, bad) == ErrNo.INVALID_ARGUMENT
    assert p.call("set_input", ctx, 1, p.tensor([1, 12], FEATURES.tobytes())) == (
        ErrNo.INVALID_ARGUMENT
    )
    assert p.call("set_input", ctx, 0, p.tensor([1, 12], FEATURES.tobytes())) == ErrNo.SUCCESS
    assert p.call("compute", ctx) == ErrNo.SUCCESS


def test_output_buffer_too_small_is_too_large_and_reports_the_size(
    probe_module: CompiledModule, models: ModelSet
) -> None:
    p = start_probe(probe_module, models)
    _, ctx = p.context(p.graph())
    p.call("set_input", ctx, 0, p.tensor([1, 12], FEATURES.tobytes()))
    p.call("compute", ctx)
    out, written = p.put(bytes(4)), p.out()
    assert p.call("get_output", ctx, 0, out, 3, written) == ErrNo.TOO_LARGE
    assert p.u32(written) == 4
    assert p.call("get_output", ctx, 1, out, 4, written) == ErrNo.INVALID_ARGUMENT
    assert p.call("get_output", ctx, 0, 1 << 20, 4, written) == ErrNo.INVALID_ARGUMENT
    assert p.call("get_output", ctx, 0, out, 4, written) == ErrNo.SUCCESS


def test_unknown_names_and_graphs(probe_module: CompiledModule, models: ModelSet) -> None:
    p = start_probe(probe_module, models)
    out = p.out()
    name = p.put(b"nope")
    assert p.call("load_by_name", name, 4, out) == ErrNo.NOT_FOUND
    config = p.put(b"{}")
    assert p.call("load_by_name_with_config", name, 4, config, 2, out) == ErrNo.NOT_FOUND
    good = p.put(b"anomaly")
    assert p.call("load_by_name_with_config", good, 7, config, 2, out) == ErrNo.SUCCESS
    graph = p.u32(out)
    assert p.graph() == graph  # the same name is the same graph
    assert p.call("load_by_name", good, 7, 1 << 20) == ErrNo.INVALID_ARGUMENT
    assert p.context(graph + 1)[0] == ErrNo.INVALID_ARGUMENT
    assert p.call("unload", graph) == ErrNo.SUCCESS
    assert p.context(graph)[0] == ErrNo.INVALID_ARGUMENT
    assert p.call("unload", graph) == ErrNo.INVALID_ARGUMENT
    assert p.context(p.graph())[0] == ErrNo.SUCCESS


def load_from_memory(p: Probe, model: bytes, encoding: int = 4, target: int = 0) -> int:
    builder = p.put(struct.pack("<II", p.put(model), len(model)))
    out = p.out()
    code = p.call("load", builder, 1, encoding, target, out)
    return code if code else -p.u32(out) - 1


def test_load_checks_encoding_target_size_and_bytes(
    probe_module: CompiledModule, models: ModelSet
) -> None:
    p = start_probe(probe_module, models, NNLimits(max_model_bytes=4096))
    model = MODEL.read_bytes()
    assert load_from_memory(p, b"\x00garbage, not a flatbuffer" * 4) == ErrNo.INVALID_ARGUMENT
    assert load_from_memory(p, model, encoding=1) == ErrNo.INVALID_ENCODING
    assert load_from_memory(p, model, target=1) == ErrNo.INVALID_ARGUMENT
    assert load_from_memory(p, model + bytes(4096)) == ErrNo.TOO_LARGE
    builder = p.put(struct.pack("<IIII", 0, 0, 0, 0))
    assert p.call("load", builder, 2, 4, 0, p.out()) == ErrNo.INVALID_ARGUMENT
    graph = -load_from_memory(p, model) - 1
    assert graph >= 0
    code, ctx = p.context(graph)
    assert code == ErrNo.SUCCESS
    assert p.call("set_input", ctx, 0, p.tensor([1, 12], FEATURES.tobytes())) == ErrNo.SUCCESS


def test_contexts_and_graphs_are_bounded_per_instance(
    probe_module: CompiledModule, models: ModelSet
) -> None:
    limits = NNLimits(max_graphs=2, max_contexts=3)
    p = start_probe(probe_module, models, limits)
    graph = p.graph()
    contexts = [p.context(graph) for _ in range(4)]
    assert [code for code, _ in contexts] == [0, 0, 0, ErrNo.BUSY]
    assert p.call("finalize_execution_context", contexts[0][1]) == ErrNo.SUCCESS
    assert p.context(graph)[0] == ErrNo.SUCCESS
    model = MODEL.read_bytes()
    assert load_from_memory(p, model) < 0
    assert load_from_memory(p, model) == ErrNo.BUSY
    # Another instance has bounds of its own.
    other = start_probe(probe_module, models, limits)
    assert other.context(other.graph())[0] == ErrNo.SUCCESS


def test_model_set_reports_bad_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"TFL3 but not really" * 10)
    rng = np.random.default_rng(1)
    params = [rng.normal(0, 0.1, (16, 12)), np.zeros(16), rng.normal(0, 0.1, (1, 16)), np.zeros(1)]
    dynamic = tmp_path / "dynamic.tflite"  # tensors that move inside invoke(): refused
    dynamic.write_bytes(make_model().tflite_model(params, dynamic_batch=True))
    cases: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
        ({"m": dynamic}, r"'m' has a dynamic shape \(tensor 'features': \[-1, 12\]\)", {}),
        ({"m": tmp_path / "absent.tflite"}, "cannot read .*absent.tflite", {}),
        ({"m": garbage}, "'m' is not a usable TFLite model", {}),
        ({"m": MODEL}, "larger than 100 bytes", {"max_bytes": 100}),
        ({"bad name": MODEL}, "model name 'bad name'", {}),
    ]
    for paths, message, kwargs in cases:
        with pytest.raises(errors.ModelError, match=message):
            ModelSet.from_files(paths, **kwargs)


def test_the_anomaly_package_ships_its_model() -> None:
    source, manifest = read_module_dir(REPO / "modules" / "anomaly")
    assert manifest.capabilities.models == ("anomaly",)
    models = {name: REPO / "modules" / "anomaly" / path for name, path in source.models.items()}
    assert models == {"anomaly": MODEL}
    assert list(ModelSet.from_files(models)) == ["anomaly"]
