#!/usr/bin/env python3
"""Trains the pump anomaly model with NumPy and writes it as a TFLite flatbuffer.

    .venv/bin/python scripts/make-model.py [--out modules/anomaly/model.tflite]

The data is synthetic: a pump's temperature (degC), vibration (mm/s RMS) and pressure
(bar), sampled once per reading around an operating point that varies from pump to
pump, with four injected faults of random severity and onset (overheating, bearing
wear, cavitation, blockage). A window of `WINDOW` samples per channel becomes
`FEATURES`: mean, standard deviation, minimum and maximum of each channel, exactly as
`modules/anomaly` computes them. The model is a small MLP (12 -> 16 ReLU -> 1
logistic) whose input standardisation is folded into the first layer, so the guest
feeds it raw features. Everything is seeded: the same NumPy gives the same model.

It also writes `pump-readings.jsonl` beside the model: a held-out stream of readings
(normal, then a bearing fault) to try the module with `edge-agent module run`.

Needs the dev extra (numpy, tflite, flatbuffers); TensorFlow is not used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import flatbuffers
import numpy as np
import tflite as tfl

SEED = 20251126
WINDOW = 32
CHANNELS = ("temperature", "vibration", "pressure")
STATS = ("mean", "std", "min", "max")
FEATURES = tuple(f"{c}.{s}" for c in CHANNELS for s in STATS)
FAULTS = ("overheating", "bearing", "cavitation", "blockage")
HIDDEN = 16
THRESHOLD = 0.5
REPO = Path(__file__).resolve().parent.parent


def pump_stream(
    rng: np.random.Generator, n: int, fault: str | None, onset: int, severity: float
) -> np.ndarray:
    """`n` samples of (temperature, vibration, pressure); `fault` from sample `onset`."""
    temp0, vib0, press0 = rng.uniform(50, 65), rng.uniform(1.5, 3.0), rng.uniform(3.5, 5.0)
    t = np.arange(n, dtype=np.float64)
    temp = temp0 + rng.uniform(-0.01, 0.01) * t + rng.normal(0, 0.3, n)
    vib = vib0 * (1 + rng.normal(0, 0.06, n))
    press = press0 + rng.normal(0, 0.08, n)
    if fault is not None:
        on = t >= onset
        ramp = np.clip((t - onset) / max(n - onset, 1), 0, 1)
        if fault == "overheating":
            temp += on * ramp * severity * 8
        elif fault == "bearing":
            vib *= 1 + on * severity * rng.uniform(0.2, 1.2, n)
        elif fault == "cavitation":
            press += on * (rng.normal(0, 0.5 * severity, n) - 0.4 * severity)
            vib *= 1 + on * rng.normal(0, 0.3 * severity, n)
        else:  # blockage
            press += on * ramp * severity * 1.5
            temp += on * ramp * severity * 2
    return np.stack([temp, vib, press], axis=-1)


def features(windows: np.ndarray) -> np.ndarray:
    """(..., WINDOW, 3) samples -> (..., 12) float32 features, as the module computes."""
    mean = windows.mean(axis=-2, keepdims=True)
    std = np.sqrt(((windows - mean) ** 2).mean(axis=-2))
    stats = np.stack([mean[..., 0, :], std, windows.min(axis=-2), windows.max(axis=-2)], -1)
    return stats.reshape(*stats.shape[:-2], len(FEATURES)).astype(np.float32)


def dataset(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of normal operation (80 %) and of a fault that starts inside the window."""
    labels = (rng.random(count) < 0.2).astype(np.float64)
    windows = np.empty((count, WINDOW, len(CHANNELS)))
    for i, faulty in enumerate(labels):
        fault = FAULTS[rng.integers(len(FAULTS))] if faulty else None
        onset = int(rng.integers(0, WINDOW * 3 // 4))
        windows[i] = pump_stream(rng, WINDOW, fault, onset, rng.uniform(0.05, 1.0))
    return features(windows).astype(np.float64), labels


def train(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Full-batch Adam on the logistic loss; returns w1 (16x12), b1, w2 (1x16), b2."""
    mu, sigma = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mu) / sigma
    params = [
        rng.normal(0, np.sqrt(2 / z.shape[1]), (HIDDEN, z.shape[1])),
        np.zeros(HIDDEN),
        rng.normal(0, np.sqrt(1 / HIDDEN), (1, HIDDEN)),
        np.zeros(1),
    ]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    for step in range(1, 1501):
        w1, b1, w2, b2 = params
        h = np.maximum(z @ w1.T + b1, 0)
        p = 1 / (1 + np.exp(-(h @ w2.T + b2)))
        d_out = (p[:, 0] - y)[:, None] / len(y)
        d_h = (d_out @ w2) * (h > 0)
        grads = [d_h.T @ z, d_h.sum(axis=0), d_out.T @ h, d_out.sum(axis=0)]
        for i, (g, (m, v)) in enumerate(zip(grads, moments, strict=True)):
            m[:] = 0.9 * m + 0.1 * g
            v[:] = 0.999 * v + 0.001 * g * g
            params[i] = params[i] - 0.01 * (m / (1 - 0.9**step)) / (
                np.sqrt(v / (1 - 0.999**step)) + 1e-8
            )
    w1, b1, w2, b2 = params
    # Fold the standardisation into the first layer: w1 @ ((x - mu) / sigma) + b1.
    return [w1 / sigma, b1 - (w1 / sigma) @ mu, w2, b2]


def predict(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = params
    h = np.maximum(x @ w1.T + b1, 0)
    return (1 / (1 + np.exp(-(h @ w2.T + b2))))[:, 0]


def tflite_model(params: list[np.ndarray], *, dynamic_batch: bool = False) -> bytes:
    """FULLY_CONNECTED (ReLU) -> FULLY_CONNECTED -> LOGISTIC, float32, [1, 12] -> [1, 1].

    The hidden width is the first layer's (`HIDDEN` for the anomaly model).
    `dynamic_batch` marks the batch dimension -1 in the shape signatures: the tests
    check that the agent refuses such a model.
    """
    hidden = len(params[1])
    b = flatbuffers.Builder(4096)
    weights = [p.astype("<f4").tobytes() for p in params]

    def tables(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return int(b.EndVector())

    def ints(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependInt32(item)
        return int(b.EndVector())

    buffers = []
    for data in [b"", *weights]:
        offset = None
        if data:
            b.StartVector(1, len(data), 16)  # weights 16-byte aligned, as TFLite wants
            b.head -= len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            offset = b.EndVector()
        tfl.BufferStart(b)
        if offset is not None:
            tfl.BufferAddData(b, offset)
        buffers.append(tfl.BufferEnd(b))

    # (name, shape, buffer): buffer 0 is the empty one activations use.
    specs = [
        ("features", [1, len(FEATURES)], 0),
        ("dense1/weights", [hidden, len(FEATURES)], 1),
        ("dense1/bias", [hidden], 2),
        ("hidden", [1, hidden], 0),
        ("dense2/weights", [1, hidden], 3),
        ("dense2/bias", [1], 4),
        ("logit", [1, 1], 0),
        ("score", [1, 1], 0),
    ]
    tensors = []
    for name, shape, buffer in specs:
        name_offset = b.CreateString(name)
        shape_offset = ints(shape)
        dynamic = dynamic_batch and buffer == 0
        signature_offset = ints([-1, *shape[1:]]) if dynamic else None
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, shape_offset)
        if signature_offset is not None:
            tfl.TensorAddShapeSignature(b, signature_offset)
        tfl.TensorAddType(b, tfl.TensorType.FLOAT32)
        tfl.TensorAddBuffer(b, buffer)
        tfl.TensorAddName(b, name_offset)
        tensors.append(tfl.TensorEnd(b))

    def fc_options(activation: int) -> int:
        tfl.FullyConnectedOptionsStart(b)
        tfl.FullyConnectedOptionsAddFusedActivationFunction(b, activation)
        return int(tfl.FullyConnectedOptionsEnd(b))

    relu = tfl.ActivationFunctionType.RELU
    plain = tfl.ActivationFunctionType.NONE
    # (opcode index, inputs, outputs, options)
    ops = [(0, [0, 1, 2], [3], fc_options(relu)), (0, [3, 4, 5], [6], fc_options(plain))]
    operators = []
    for opcode, inputs, outputs, options in [*ops, (1, [6], [7], None)]:
        in_offset, out_offset = ints(inputs), ints(outputs)
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, opcode)
        tfl.OperatorAddInputs(b, in_offset)
        tfl.OperatorAddOutputs(b, out_offset)
        if options is not None:
            tfl.OperatorAddBuiltinOptionsType(b, tfl.BuiltinOptions.FullyConnectedOptions)
            tfl.OperatorAddBuiltinOptions(b, options)
        operators.append(tfl.OperatorEnd(b))

    tensors_offset = tables(tensors)
    operators_offset = tables(operators)
    inputs_offset, outputs_offset = ints([0]), ints([7])
    name_offset = b.CreateString("main")
    tfl.SubGraphStart(b)
    tfl.SubGraphAddTensors(b, tensors_offset)
    tfl.SubGraphAddInputs(b, inputs_offset)
    tfl.SubGraphAddOutputs(b, outputs_offset)
    tfl.SubGraphAddOperators(b, operators_offset)
    tfl.SubGraphAddName(b, name_offset)
    subgraph = tfl.SubGraphEnd(b)

    codes = []
    for code in (tfl.BuiltinOperator.FULLY_CONNECTED, tfl.BuiltinOperator.LOGISTIC):
        tfl.OperatorCodeStart(b)
        tfl.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        tfl.OperatorCodeAddBuiltinCode(b, code)
        tfl.OperatorCodeAddVersion(b, 1)
        codes.append(tfl.OperatorCodeEnd(b))

    codes_offset = tables(codes)
    subgraphs_offset = tables([subgraph])
    buffers_offset = tables(buffers)
    description = b.CreateString(
        f"edge-agent pump anomaly: {WINDOW}-sample window features {','.join(FEATURES)}"
    )
    tfl.ModelStart(b)
    tfl.ModelAddVersion(b, 3)
    tfl.ModelAddOperatorCodes(b, codes_offset)
    tfl.ModelAddSubgraphs(b, subgraphs_offset)
    tfl.ModelAddDescription(b, description)
    tfl.ModelAddBuffers(b, buffers_offset)
    b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def sample_readings(rng: np.random.Generator) -> list[dict[str, object]]:
    """A held-out stream: 120 normal readings, then a growing bearing fault."""
    samples = pump_stream(rng, 200, "bearing", 120, 0.8)
    units = ("degC", "mm/s", "bar")
    return [
        {
            "device": "pump-1",
            "ts": 1764118800 + i,
            "seq": i,
            "values": {
                c: {"value": round(float(s[j]), 3), "unit": units[j]}
                for j, c in enumerate(CHANNELS)
            },
        }
        for i, s in enumerate(samples)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "modules/anomaly/model.tflite")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    x_train, y_train = dataset(rng, 8000)
    x_test, y_test = dataset(rng, 2000)
    params = train(x_train, y_train, rng)
    predicted = predict(params, x_test) >= THRESHOLD
    true_positives = int((predicted & (y_test == 1)).sum())
    precision = true_positives / max(int(predicted.sum()), 1)
    recall = true_positives / max(int((y_test == 1).sum()), 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(tflite_model(params))
    readings = args.out.parent / "pump-readings.jsonl"
    readings.write_text("".join(json.dumps(r) + "\n" for r in sample_readings(rng)))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) and {readings}")
    print(
        f"held-out windows: {len(y_test)} ({int(y_test.sum())} faulty); threshold {THRESHOLD}: "
        f"precision {precision:.3f}, recall {recall:.3f}"
    )


if __name__ == "__main__":
    main()
