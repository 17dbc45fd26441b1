"""The Modbus adapter: the only module that imports pymodbus (pinned: it breaks APIs in
minor releases).

A `Link` is one connection (a TCP socket or a serial port) that one or more devices
share. It serialises their requests under one lock, paces them, opens the connection on
demand with exponential backoff, and turns pymodbus's failures into `ModbusError`s. It
does not retry: the caller retries, outside the lock, so other devices get the bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from agent.config import Connection, Table
from agent.errors import (
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusTimeout,
)

# pymodbus logs every failed request at error level; the poller reports a failing device
# once, so the library's own lines would only repeat it on every poll.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

_RECONNECT_MIN_S = 0.05


class Link:
    def __init__(self, settings: Connection) -> None:
        self.settings = settings
        self.lock = asyncio.Lock()
        s = settings
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if s.serial is not None:
            self._client = AsyncModbusSerialClient(
                s.serial.port,
                framer=FramerType.RTU,
                baudrate=s.serial.baudrate,
                bytesize=s.serial.bytesize,
                parity=s.serial.parity,
                stopbits=s.serial.stopbits,
                timeout=s.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        else:
            self._client = AsyncModbusTcpClient(
                s.host,
                port=s.port,
                framer=FramerType.RTU if s.transport == "rtu-tcp" else FramerType.SOCKET,
                timeout=s.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        self._next_connect = 0.0
        self._reconnect_delay = _RECONNECT_MIN_S
        self._last_request = 0.0
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._client.connected

    async def read(self, unit: int, table: Table, address: int, count: int) -> list[int]:
        """Registers, or bits as 0/1, from `address` on. Call with `lock` held."""
        c = self._ready()
        if table == "holding":
            call = c.read_holding_registers(address, count=count, device_id=unit)
        elif table == "input":
            call = c.read_input_registers(address, count=count, device_id=unit)
        elif table == "coil":
            call = c.read_coils(address, count=count, device_id=unit)
        else:
            call = c.read_discrete_inputs(address, count=count, device_id=unit)
        response = await self._execute(call)
        if table in ("holding", "input"):
            got = list(response.registers)
        else:
            got = [int(b) for b in response.bits[:count]]
        if len(got) != count:
            # pymodbus takes the answer's own byte count; the poller needs what it asked for.
            what = "registers" if table in ("holding", "input") else "bits"
            raise ModbusError(
                self.settings.name, f"bad answer: {len(got)} {what} for the {count} asked"
            )
        return got

    async def write(self, unit: int, table: Table, address: int, words: Sequence[int]) -> None:
        """Holding registers (one: function 6, more: 16) or coils. Call with `lock` held."""
        c = self._ready()
        if table == "coil":
            bits = [bool(w) for w in words]
            call = (
                c.write_coil(address, bits[0], device_id=unit)
                if len(bits) == 1
                else c.write_coils(address, bits, device_id=unit)
            )
        elif len(words) == 1:
            call = c.write_register(address, words[0], device_id=unit)
        else:
            call = c.write_registers(address, list(words), device_id=unit)
        await self._execute(call)

    def _ready(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # pymodbus raises when a request is built on a closed connection: check first.
        if not self._client.connected:
            raise ModbusConnectionError(self.settings.name, "not connected")
        return self._client

    async def _execute(self, call: Awaitable[ModbusPDU]) -> ModbusPDU:
        pause = self._last_request + self.settings.request_pause_s - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        try:
            response = await call
        except ConnectionException as err:
            raise ModbusConnectionError(self.settings.name, f"connection lost: {err}") from err
        except ModbusException as err:
            # With retries=0, pymodbus reports an unanswered request this way (its text is
            # the only tell; the version is pinned); anything else is a garbled answer.
            if "No response" in str(err):
                raise ModbusTimeout(
                    self.settings.name, f"no answer within {self.settings.timeout_s:g} s"
                ) from err
            raise ModbusError(self.settings.name, f"bad answer: {err}") from err
        finally:
            self._last_request = time.monotonic()
        if response.isError():
            raise ModbusExceptionResponse(self.settings.name, int(response.exception_code))
        return response

    async def ensure_connected(self) -> None:
        """Open the connection unless it is open; backs off after each failed attempt."""
        if self._closed:
            raise ModbusConnectionError(self.settings.name, "closed")
        if self._client.connected:
            return
        now = time.monotonic()
        if now < self._next_connect:
            raise ModbusConnectionError(
                self.settings.name,
                f"not connected; next attempt in {self._next_connect - now:.2f} s",
            )
        if not await self._client.connect():
            self._next_connect = time.monotonic() + self._reconnect_delay
            self._reconnect_delay = min(2 * self._reconnect_delay, self.settings.reconnect_max_s)
            raise ModbusConnectionError(self.settings.name, "cannot connect")
        self._reconnect_delay = _RECONNECT_MIN_S
        if self.settings.connect_pause_s:
            await asyncio.sleep(self.settings.connect_pause_s)

    def close(self) -> None:
        self._closed = True
        self._client.close()
