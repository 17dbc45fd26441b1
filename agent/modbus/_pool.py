"""The poller: every configured device polled on its own tasks, readings handed on.

Each register group of each device runs in its own task, so a device that hangs delays
nobody but itself and the devices that share its connection (a serial bus or a gateway
is one wire: their requests take turns under the connection's lock). Ticks that pass
while a poll is still running are dropped, all but the latest, which starts as soon as
the poll ends; nothing queues up. A device
whose poll fails entirely is marked offline, logged once at error level (then at debug
until it recovers) and is not retried within a poll while offline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType

from agent.config import NUMERIC_TYPES, DeviceConfig, RegisterGroup, RegisterSpec, Table
from agent.errors import (
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusTimeout,
    ReadbackMismatch,
    WriteRefused,
)
from agent.modbus._codec import RawValue, decode, encode, to_engineering, to_raw
from agent.modbus._exception import ExceptionFilter
from agent.modbus._link import Link
from agent.modbus._plan import ReadBlock, plan_reads
from agent.reading import Reading, Value
from agent.status import DeviceState, DeviceStatus

log = logging.getLogger("agent.modbus")

OnReading = Callable[[Reading], Awaitable[None]]
RETRYABLE_CODES = frozenset({5, 6, 10, 11})
"""Exception codes that say "not now" (acknowledge, busy, gateway trouble): worth a retry."""


class _Device:
    def __init__(
        self, config: DeviceConfig, link: Link, on_reading: OnReading, seq: int = 0
    ) -> None:
        self.config = config
        self.name = config.name
        self.link = link
        self._on_reading = on_reading
        self._exceptions = ExceptionFilter(
            r for g in config.register_map.groups for r in g.registers
        )
        self.plans: dict[str, tuple[ReadBlock, ...]] = {
            g.name: plan_reads(
                g.registers, max_gap=config.max_gap, single=config.single_register_reads
            )
            for g in config.register_map.groups
        }
        self.state: DeviceState = "starting"
        self.closed = False
        self.seq = seq
        self.polls = 0
        self.errors = 0
        self.skipped = 0
        self.last_poll: float | None = None
        self.last_error: str | None = None
        self._last_good: dict[str, RawValue] = {}
        self._emit_lock = asyncio.Lock()
        self._warned: set[str] = set()
        self._not_finite: set[str] = set()
        self._decided_at = 0.0  # when the poll that last set `state` started (monotonic)

    def status(self) -> DeviceStatus:
        return DeviceStatus(
            name=self.name,
            state=self.state,
            poll_interval_s=min(g.interval_s for g in self.config.register_map.groups),
            last_poll=self.last_poll,
            polls=self.polls,
            errors=self.errors,
            skipped=self.skipped,
            last_error=self.last_error,
        )

    async def run_group(self, group: RegisterGroup) -> None:
        loop = asyncio.get_running_loop()
        blocks = self.plans[group.name]
        due = loop.time()
        # Python 3.11's wait_for (inside pymodbus) can swallow a cancellation that races
        # an answer, so the loop also stops on the flag `DevicePool.close` sets.
        while not self.closed:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._poll(group, blocks)
            due += group.interval_s
            now = loop.time()
            if now > due:
                # Overran: the ticks that passed are dropped but the latest, which runs now.
                self.skipped += int((now - due) // group.interval_s)
                due = now

    async def _poll(self, group: RegisterGroup, blocks: tuple[ReadBlock, ...]) -> None:
        ts = time.time()
        started = time.monotonic()
        words: dict[tuple[Table, int], int] = {}
        failed: dict[tuple[Table, int], str] = {}
        errors: list[ModbusError] = []
        for block in blocks:
            if errors and _unanswered(errors[-1]):
                err = errors[-1]  # not answering: spare the bus the rest of this poll
            else:
                try:
                    got = await self._request(
                        lambda b=block: self.link.read(  # type: ignore[misc]
                            self.config.unit, b.table, b.address, b.count
                        )
                    )
                except ModbusError as e:
                    err = e
                    errors.append(e)
                else:
                    words.update(((block.table, block.address + i), w) for i, w in enumerate(got))
                    continue
            failed.update(((block.table, a), err.reason) for a in range(block.address, block.end))
        if self.closed:
            return  # shutting down: the failures are ours, not the device's
        values = {reg.name: self._value(reg, words, failed) for reg in group.registers}
        self._account(errors, len(blocks), started)
        values = self._exceptions.report(values, time.monotonic())
        if not values:
            return  # nothing changed that the map asks to send
        async with self._emit_lock:
            reading = Reading(self.name, ts, self.seq, values)
            self.seq += 1
            try:
                await self._on_reading(reading)
            except Exception:
                log.exception("device %s: the reading handler failed", self.name)

    def _value(
        self,
        reg: RegisterSpec,
        words: dict[tuple[Table, int], int],
        failed: dict[tuple[Table, int], str],
    ) -> Value:
        addresses = [(reg.table, a) for a in range(reg.address, reg.end)]
        reasons = [failed[k] for k in addresses if k in failed]
        if reasons:
            last = self._last_good.get(reg.name, _ZERO[reg.type])
            return Value(last, reg.unit, "bad", reasons[0])
        raw = decode(reg.type, reg.order, [words[k] for k in addresses], reg.bit)
        value = to_engineering(raw, reg.scale, reg.offset)
        if isinstance(value, float) and not math.isfinite(value):
            # A sensor's fault marker, often: JSON has no NaN, and a module must not
            # compute with it as if it were a reading.
            reason = f"{reg.type} register {reg.address} gave {value}, not a finite number"
            if reg.name not in self._not_finite:  # logged once until it reads finite again
                self._not_finite.add(reg.name)
                log.warning("device %s: %s: %s", self.name, reg.name, reason)
            return Value(self._last_good.get(reg.name, _ZERO[reg.type]), reg.unit, "bad", reason)
        self._not_finite.discard(reg.name)
        self._last_good[reg.name] = value
        return Value(value, reg.unit)

    def _account(self, errors: list[ModbusError], requests: int, started: float) -> None:
        """Count a finished poll and let it decide the device's state, unless a poll
        that started after it already did: groups poll concurrently, and a slow poll
        sent before a device recovered must not mark it offline again (nor the reverse)."""
        self.polls += 1
        self.last_poll = time.time()
        self.errors += len(errors)
        if errors:
            self.last_error = errors[-1].reason
        if started < self._decided_at:
            return
        self._decided_at = started
        answered = not errors or (len(errors) < requests and not _unanswered(errors[-1]))
        if answered and self.state == "offline":
            log.info("device %s is back online", self.name)
        if not errors:
            self.state = "online"
            self._warned.clear()
            return
        if answered:
            self.state = "online"
            reason = errors[-1].reason
            if reason not in self._warned:
                self._warned.add(reason)
                log.warning("device %s: some reads failed: %s", self.name, reason)
            return
        if self.state != "offline":
            log.error("device %s is offline: %s", self.name, errors[-1])
        else:
            log.debug("device %s still offline: %s", self.name, errors[-1])
        self.state = "offline"

    async def _request(self, op: Callable[[], Awaitable[list[int]]]) -> list[int]:
        """`op` under the connection's lock, retried with backoff while the device is online."""
        attempt = 0
        while True:
            async with self.link.lock:
                await self.link.ensure_connected()
                try:
                    return await op()
                except ModbusError as err:
                    if (
                        attempt >= self.config.retries
                        or self.state == "offline"
                        or not _retryable(err)
                    ):
                        raise
            await asyncio.sleep(self.config.retry_backoff_s * 2**attempt)
            attempt += 1

    async def write(self, name: str, value: RawValue) -> RawValue:
        reg = self.config.register_map.register(name)
        if reg is None:
            raise WriteRefused(self.name, f"no register {name!r} in its map")
        if not reg.writable:
            raise WriteRefused(self.name, f"register {name!r} is not writable")
        words = _encode_for_write(self.name, reg, value)
        try:
            async with self.link.lock:
                await self.link.ensure_connected()
                await self.link.write(self.config.unit, reg.table, reg.address, words)
                back = await self.link.read(self.config.unit, reg.table, reg.address, reg.size)
        except ModbusError as err:
            raise _for_device(err, self.name) from err
        if back != words:
            raise ReadbackMismatch(self.name, f"{name}: wrote {words}, read back {back}")
        return to_engineering(decode(reg.type, reg.order, back, reg.bit), reg.scale, reg.offset)


_ZERO: dict[str, RawValue] = {"bool": False, "bit": False, "string": ""}
_ZERO.update(dict.fromkeys(NUMERIC_TYPES, 0))
"""What a bad value carries when the register was never read: the type's zero."""


def _unanswered(err: ModbusError) -> bool:
    return isinstance(err, ModbusTimeout | ModbusConnectionError)


def _retryable(err: ModbusError) -> bool:
    if isinstance(err, ModbusExceptionResponse):
        return err.code in RETRYABLE_CODES
    return _unanswered(err)


def _for_device(err: ModbusError, device: str) -> ModbusError:
    """The same failure, named after the device rather than its connection."""
    if isinstance(err, ModbusExceptionResponse):
        return ModbusExceptionResponse(device, err.code)
    return type(err)(device, err.reason)


def _encode_for_write(device: str, reg: RegisterSpec, value: RawValue) -> list[int]:
    expected = "a boolean" if reg.type == "bool" else "a string" if reg.type == "string" else None
    if expected is None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WriteRefused(device, f"{reg.name} takes a number, got {value!r}")
        low = -float("inf") if reg.min is None else reg.min
        high = float("inf") if reg.max is None else reg.max
        if not low <= value <= high:
            raise WriteRefused(device, f"{reg.name}: {value!r} is outside [{reg.min}, {reg.max}]")
    elif not isinstance(value, bool if reg.type == "bool" else str):
        raise WriteRefused(device, f"{reg.name} takes {expected}, got {value!r}")
    try:
        return encode(
            reg.type, reg.order, to_raw(reg.type, value, reg.scale, reg.offset), reg.length or 0
        )
    except ValueError as err:
        raise WriteRefused(device, f"{reg.name}: {err}") from err


class DevicePool:
    """All devices of the config, polled while the pool is entered (`async with`)."""

    def __init__(self, devices: Sequence[_Device], links: Sequence[Link]) -> None:
        self._devices = {d.name: d for d in devices}
        self._links = tuple(links)
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def create(
        cls,
        devices: Sequence[DeviceConfig],
        on_reading: OnReading,
        *,
        seqs: Mapping[str, int] | None = None,
    ) -> DevicePool:
        """A pool for `devices` (validated config); `on_reading` gets every poll's reading.

        `seqs` gives each device's first sequence number (the journal's, so that numbers
        go on across restarts); 0 for a device it does not name.
        """
        seqs = seqs or {}
        links: dict[tuple[str, str, int], Link] = {}
        built = []
        for config in devices:
            key = config.connection.key
            link = links.get(key)
            if link is None:
                link = links[key] = Link(config.connection)
            built.append(_Device(config, link, on_reading, seqs.get(config.name, 0)))
        return cls(built, list(links.values()))

    async def __aenter__(self) -> DevicePool:
        for device in self._devices.values():
            for group in device.config.register_map.groups:
                task = asyncio.create_task(
                    device.run_group(group), name=f"modbus {device.name}/{group.name}"
                )
                self._tasks.append(task)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop polling and close every connection; safe to call twice."""
        for device in self._devices.values():
            device.closed = True
        for task in self._tasks:
            task.cancel()
        for link in self._links:
            link.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def status(self) -> tuple[DeviceStatus, ...]:
        return tuple(d.status() for d in self._devices.values())

    async def write(self, device: str, register: str, value: RawValue) -> RawValue:
        """Write `value` (engineering units) to a writable register, then read it back.

        Returns the value read back. Raises `WriteRefused` (unknown device or register,
        not writable, out of range, wrong type) before anything is sent, `ReadbackMismatch`
        when the device holds something else afterwards, or the request's `ModbusError`.
        """
        target = self._devices.get(device)
        if target is None:
            raise WriteRefused(device, "no such device")
        return await target.write(register, value)
