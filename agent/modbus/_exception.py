"""Report by exception: which values of a poll are worth sending on.

Polling every point every cycle floods a constrained uplink with values nobody needs
again. A register map marks points `on_change`, or gives a `deadband` (engineering
units) or a `deadband_percent` (of the last value sent); such a point is sent when it
moved past its band, when its quality changed, and at least every `max_interval_s` if
that is set (a heartbeat, so a subscriber can tell "unchanged" from "gone"). Changes
are measured from the last value sent, not the last one read, so a slow drift is still
reported once it adds up. Every other point is sent with every poll, as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.config import RegisterSpec
from agent.reading import Value


class ExceptionFilter:
    """The values of one device's polls to send on; keeps what was last sent."""

    def __init__(self, registers: Iterable[RegisterSpec]) -> None:
        self._specs = {r.name: r for r in registers if r.by_exception}
        self._sent: dict[str, tuple[Value, float]] = {}

    def report(self, values: dict[str, Value], now: float) -> dict[str, Value]:
        """The values to send at `now` (monotonic seconds); may be empty."""
        if not self._specs:
            return values
        out = {}
        for name, value in values.items():
            spec = self._specs.get(name)
            if spec is None or self._due(spec, value, now):
                out[name] = value
                if spec is not None:
                    self._sent[name] = (value, now)
        return out

    def _due(self, spec: RegisterSpec, value: Value, now: float) -> bool:
        sent = self._sent.get(spec.name)
        if sent is None:
            return True
        last, at = sent
        if spec.max_interval_s is not None and now - at >= spec.max_interval_s:
            return True
        if value.quality != last.quality:
            return True
        new, old = value.value, last.value
        if isinstance(new, bool) or isinstance(old, bool) or isinstance(new, str):
            return new != old
        if isinstance(old, str):
            return True
        band = spec.deadband or 0.0
        if spec.deadband_percent is not None:
            band = abs(old) * spec.deadband_percent / 100
        return abs(new - old) > band if band else new != old
