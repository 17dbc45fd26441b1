"""The simulated pump: normal operation in the ranges the anomaly model is trained on, and
each fault moving its channel the way the real fault would."""

from __future__ import annotations

import statistics

import pytest

from agent.sim import FAULTS, PumpModel


def sample(model: PumpModel, seconds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"temperature": [], "vibration": [], "pressure": []}
    for _ in range(seconds):
        model.advance(1.0)
        for name, series in out.items():
            series.append(getattr(model, name))
    return out


def test_normal_operation_stays_in_range_with_noise() -> None:
    normal = sample(PumpModel(seed=1, fault_rate_per_h=0), 600)
    for name, (low, high) in {
        "temperature": (55, 65),
        "vibration": (2, 4),
        "pressure": (5, 7),
    }.items():
        assert low <= min(normal[name]), name
        assert max(normal[name]) <= high, name
        assert statistics.stdev(normal[name]) > 0, name


@pytest.mark.parametrize(
    ("fault", "channel", "direction"),
    [
        ("bearing", "vibration", 1),
        ("overheat", "temperature", 1),
        ("pressure_drop", "pressure", -1),
    ],
)
def test_faults_move_their_channel(fault: str, channel: str, direction: int) -> None:
    model = PumpModel(seed=2, fault_rate_per_h=0)
    before = statistics.mean(sample(model, 60)[channel])
    model.inject(fault, duration_s=300)  # type: ignore[arg-type]
    during = statistics.mean(sample(model, 200)[channel][-60:])
    assert (during - before) * direction > 1.0, (before, during)


def test_faults_come_on_their_own_and_pass() -> None:
    model = PumpModel(seed=5, fault_rate_per_h=60)
    seen = set()
    for _ in range(4 * 3600):
        model.advance(1.0)
        if model.fault is not None:
            seen.add(model.fault.kind)
    assert seen == set(FAULTS)
    assert model.fault is None or model.fault.elapsed_s < model.fault.duration_s


def test_same_seed_same_pump() -> None:
    assert sample(PumpModel(seed=9), 30) == sample(PumpModel(seed=9), 30)


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="fault must be one of"):
        PumpModel().inject("flood")  # type: ignore[arg-type]
