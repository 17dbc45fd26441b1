"""The OPC UA devices: one session per device, kept up, its data changes handed on.

Each device runs one task that opens a session, subscribes to its node map and turns
every publish response's data changes into one `Reading` for the same `on_reading` the
Modbus pool feeds. When the session is lost (the server restarted, the network went),
the device is offline and the task opens a new session and a new subscription, with a
doubling pause up to `reconnect_max_s`: a subscription is never left behind on a dead
session. A device is logged at error level once when it goes offline, then at debug
until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from agent.config import OpcuaDeviceConfig
from agent.errors import OpcuaConnectionError, OpcuaError, ReadbackMismatch, WriteRefused
from agent.opcua._points import ZERO, PointValue, coerce, plain, stored, to_value
from agent.opcua._session import Sample, Session
from agent.reading import Reading, Value
from agent.status import DeviceState, DeviceStatus

log = logging.getLogger("agent.opcua")

OnReading = Callable[[Reading], Awaitable[None]]
FIRST_PAUSE_S = 0.25
"""The first pause before reconnecting; it doubles up to the device's reconnect_max_s."""


class _Device:
    def __init__(self, config: OpcuaDeviceConfig, on_reading: OnReading, seq: int) -> None:
        self.config = config
        self.name = config.name
        self._on_reading = on_reading
        self.seq = seq
        self.state: DeviceState = "starting"
        self.session: Session | None = None
        self.closed = False
        self.readings = 0
        self.errors = 0
        self.last_batch: float | None = None
        self.last_error: str | None = None
        self._last_good: dict[str, PointValue] = {}
        self._refused: Mapping[str, str] = {}
        """The points this session's server would not monitor, with why."""
        self._write_lock = asyncio.Lock()

    def status(self) -> DeviceStatus:
        return DeviceStatus(
            name=self.name,
            state=self.state,
            poll_interval_s=self.config.node_map.publishing_interval_s,
            last_poll=self.last_batch,
            polls=self.readings,
            errors=self.errors,
            last_error=self.last_error,
        )

    async def run(self) -> None:
        failures = 0
        while not self.closed:
            try:
                session = await Session.open(self.config)
            except OpcuaError as err:
                self._offline(err)
            else:
                try:
                    self._online(session, await session.subscribe())
                    failures = 0
                    while True:
                        await self._emit(await session.batch())
                except OpcuaError as err:
                    self._offline(err)
                finally:
                    self.session = None
                    await session.close()
            if self.closed:
                return
            await asyncio.sleep(min(self.config.reconnect_max_s, FIRST_PAUSE_S * 2**failures))
            failures += 1

    def _online(self, session: Session, refused: Mapping[str, str]) -> None:
        if self.state == "offline":
            log.info("device %s is back online", self.name)
        self.session = session
        self.state = "online"
        self._refused = refused
        if refused:
            # Online with the points that work; the status says which do not, and why.
            problem = "; ".join(refused.values())
            if problem != self.last_error:
                log.error("device %s: %s", self.name, problem)
            self.errors += len(refused)
            self.last_error = problem

    def _offline(self, err: OpcuaError) -> None:
        if self.closed:
            return  # shutting down: the failure is ours, not the device's
        self.errors += 1
        self.last_error = err.reason
        if self.state != "offline":
            log.error("device %s is offline: %s", self.name, err)
        else:
            log.debug("device %s still offline: %s", self.name, err)
        self.state = "offline"

    async def _emit(self, batch: list[Sample]) -> None:
        # A batch may hold two changes of one point (the consumer fell behind a publish
        # response): each reading carries one value per point, so those split.
        readings: list[dict[str, Value]] = [{}]
        for sample in batch:
            if sample.point in readings[-1]:
                readings.append({})
            readings[-1][sample.point] = self._value(sample)
        self.last_batch = time.time()
        for values in readings:
            self.readings += 1
            reading = Reading(self.name, time.time(), self.seq, values)
            self.seq += 1
            try:
                await self._on_reading(reading)
            except Exception:
                log.exception("device %s: the reading handler failed", self.name)

    def _value(self, sample: Sample) -> Value:
        point = self.config.node_map.point(sample.point)
        assert point is not None  # the session only reports the map's points
        last = self._last_good.get(point.name, ZERO[point.type])
        value = to_value(point, sample.value, sample.quality, sample.reason, last)
        if value.quality != "bad":
            self._last_good[point.name] = value.value
        return value

    async def write(self, name: str, value: PointValue) -> PointValue:
        point = self.config.node_map.point(name)
        if point is None:
            raise WriteRefused(self.name, f"no point {name!r} in its node map")
        if not point.writable:
            raise WriteRefused(self.name, f"point {name!r} is not writable")
        wanted = coerce(self.name, point, value)
        if name in self._refused:
            raise WriteRefused(self.name, self._refused[name])
        session = self.session
        if session is None:
            raise OpcuaConnectionError(f"device {self.name!r}", "no session: it is offline")
        async with self._write_lock:  # a read-back must see this write, not another's
            await session.write(point, wanted)
            back = await session.read(point)
        got = plain(point, back.value)
        if back.quality != "good" or got != stored(point, wanted):
            why = f" ({back.reason})" if back.reason else ""
            raise ReadbackMismatch(self.name, f"{name}: wrote {wanted!r}, read back {got!r}{why}")
        return got


class OpcuaPool:
    """The config's OPC UA devices, each kept in session while the pool is entered."""

    def __init__(self, devices: Sequence[_Device]) -> None:
        self._devices = {d.name: d for d in devices}
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def create(
        cls,
        devices: Sequence[OpcuaDeviceConfig],
        on_reading: OnReading,
        *,
        seqs: Mapping[str, int] | None = None,
    ) -> OpcuaPool:
        """A pool for `devices`; `seqs` gives each device's first sequence number."""
        seqs = seqs or {}
        return cls([_Device(c, on_reading, seqs.get(c.name, 0)) for c in devices])

    def __contains__(self, device: str) -> bool:
        return device in self._devices

    async def __aenter__(self) -> OpcuaPool:
        for device in self._devices.values():
            self._tasks.append(asyncio.create_task(device.run(), name=f"opcua {device.name}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End every session; safe to call twice."""
        for device in self._devices.values():
            device.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def status(self) -> tuple[DeviceStatus, ...]:
        return tuple(d.status() for d in self._devices.values())

    async def write(self, device: str, point: str, value: PointValue) -> PointValue:
        """Write `value` to a writable point, then read it back; returns what was read.

        Raises `WriteRefused` (unknown device or point, not writable, wrong type, out of
        range, a node the server would not monitor) before anything is sent,
        `ReadbackMismatch` when the server holds something else afterwards, or an
        `OpcuaError` (offline, a bad status code).
        """
        target = self._devices.get(device)
        if target is None:
            raise WriteRefused(device, "no such device")
        return await target.write(point, value)
