"""A centrifugal pump, simulated: the demo's device and the anomaly model's training source.

At its nominal 1450 rpm the pump runs at about 60 degC, 3 mm/s RMS vibration and 6 bar,
with sensor noise. Now and then a fault develops: bearing wear (vibration climbs),
overheating (temperature climbs), or a pressure drop (a leak or cavitation). The model
advances in simulated time; `PumpDevice` ties it to the wall clock and to a
`DeviceImage` laid out as `config/devices/pump.toml` describes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Literal

from agent.modbus import decode, encode
from agent.sim._image import DeviceImage

FaultKind = Literal["bearing", "overheat", "pressure_drop"]
FAULTS: tuple[FaultKind, ...] = ("bearing", "overheat", "pressure_drop")

NOMINAL_RPM = 1450.0
AMBIENT_C = 25.0


@dataclass
class ActiveFault:
    kind: FaultKind
    elapsed_s: float
    duration_s: float

    @property
    def severity(self) -> float:
        """0 to 1: faults develop over their first third, then hold."""
        return min(1.0, self.elapsed_s / (self.duration_s / 3))


class PumpModel:
    """The pump's physics, stepped in simulated seconds; deterministic for a given seed."""

    def __init__(self, seed: int | None = None, fault_rate_per_h: float = 6.0) -> None:
        self.rng = random.Random(seed)
        self.fault_rate_per_h = fault_rate_per_h
        self.running = True
        self.setpoint_rpm = NOMINAL_RPM
        self.temperature_limit_c = 80.0
        self.rpm = NOMINAL_RPM
        self.temperature_c = 60.0
        self.runtime_s = 0.0
        self.fault: ActiveFault | None = None
        # Last sensor outputs (with noise), as the registers show them.
        self.temperature = 60.0
        self.vibration = 3.0
        self.pressure = 6.0
        self.flow = 58.0

    def inject(self, kind: FaultKind, duration_s: float = 90.0) -> None:
        """Start a fault now (the demo and tests use this; faults also come on their own)."""
        if kind not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {kind!r}")
        self.fault = ActiveFault(kind, 0.0, duration_s)

    def advance(self, seconds: float) -> None:
        """Step the model by `seconds` of simulated time (in steps of at most 0.5 s)."""
        while seconds > 0:
            dt = min(seconds, 0.5)
            self._step(dt)
            seconds -= dt

    @property
    def visible_fault(self) -> FaultKind | None:
        """The fault the pump's status shows: one past a fifth of its severity."""
        return self.fault.kind if self.fault and self.fault.severity > 0.2 else None

    def _severity(self, kind: FaultKind) -> float:
        return self.fault.severity if self.fault and self.fault.kind == kind else 0.0

    def _step(self, dt: float) -> None:
        if self.fault is not None:
            self.fault.elapsed_s += dt
            if self.fault.elapsed_s >= self.fault.duration_s:
                self.fault = None
        elif self.running and self.rng.random() < self.fault_rate_per_h * dt / 3600:
            self.inject(self.rng.choice(FAULTS), self.rng.uniform(60.0, 180.0))
        target = self.setpoint_rpm if self.running else 0.0
        self.rpm += (target - self.rpm) * (1 - math.exp(-dt / 3.0))
        load = self.rpm / NOMINAL_RPM
        heat = AMBIENT_C + 35.0 * load + 30.0 * self._severity("overheat")
        self.temperature_c += (heat - self.temperature_c) * (1 - math.exp(-dt / 20.0))
        if self.running:
            self.runtime_s += dt
        g = self.rng.gauss
        self.temperature = self.temperature_c + g(0, 0.3)
        self.vibration = max(0.0, 3.0 * load + 6.0 * self._severity("bearing") + g(0, 0.2))
        pressure = 6.0 * load**2 * (1 - 0.5 * self._severity("pressure_drop"))
        self.pressure = max(0.0, pressure + g(0, 0.08))
        self.flow = max(0.0, 40.0 * load * (1 - 0.3 * self._severity("pressure_drop")) + g(0, 0.5))


class PumpDevice:
    """The model behind a register image, advanced by the wall clock on every read."""

    def __init__(self, model: PumpModel | None = None) -> None:
        self.model = model or PumpModel()
        self.image = DeviceImage(before_read=self.refresh, after_write=self._written)
        self._clock = time.monotonic()
        self._publish()

    def refresh(self) -> None:
        now = time.monotonic()
        self.model.advance(now - self._clock)
        self._clock = now
        self._publish()

    def _publish(self) -> None:
        m, img = self.model, self.image
        fault = m.visible_fault
        img.set("input", 0, encode("float32", "ABCD", m.temperature))
        img.set("input", 2, encode("float32", "CDAB", m.vibration))
        img.set("input", 4, encode("int16", "ABCD", round(m.pressure * 100)))
        img.set("input", 5, encode("uint32", "DCBA", round(m.flow * 1000)))
        img.set("input", 7, encode("uint16", "BADC", round(m.rpm)))
        img.set("input", 8, encode("uint64", "BADC", int(m.runtime_s)))
        status = (
            int(m.running)
            | int(fault == "overheat") << 1
            | int(fault == "bearing") << 2
            | int(fault == "pressure_drop") << 3
        )
        img.set("input", 12, [status])
        img.set("discrete_input", 0, [int(fault is not None)])
        img.set("coil", 0, [int(m.running)])
        img.set("holding", 100, encode("uint16", "ABCD", round(m.setpoint_rpm)))
        img.set("holding", 101, encode("float32", "ABCD", m.temperature_limit_c))
        img.set("holding", 110, encode("string", "ABCD", "P-200 pump", 8))

    def _written(self, table: str, address: int, words: list[int]) -> None:
        m, img = self.model, self.image
        if table == "coil":
            m.running = bool(img.get("coil", 0, 1)[0])
        elif table == "holding":
            m.setpoint_rpm = float(decode("uint16", "ABCD", img.get("holding", 100, 1)))
            m.temperature_limit_c = float(decode("float32", "ABCD", img.get("holding", 101, 2)))
