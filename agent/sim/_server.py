"""A Modbus server for simulated devices (TCP, RTU over TCP, RTU on a serial port).

The simulator's pymodbus adapter: it serves `DeviceImage`s through pymodbus's device
simulator, copying the image into pymodbus's registers before each read, applying each
write to the image, and feigning the image's fault (silence or an exception code).
"""

from __future__ import annotations

import asyncio
from typing import Literal, cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.sim._image import DeviceImage

Transport = Literal["tcp", "rtu-tcp", "rtu"]

_TABLE_OF = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 4: "input"}
_TABLE_OF.update(dict.fromkeys((3, 6, 16, 22, 23), "holding"))


def _action(image: DeviceImage):  # type: ignore[no-untyped-def]  # pymodbus's SimAction
    async def action(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if image.fault == "silent":
            raise NoSuchIdException("feigned silence")  # the server then drops the request
        if image.fault is not None:
            return ExcCodes(image.fault)
        table = _TABLE_OF[function_code]
        if set_values is not None:
            words = [int(v) for v in set_values]
            image.set(table, address, words)
            if image.after_write is not None:
                image.after_write(table, address, words)
            return None
        if image.before_read is not None:
            image.before_read()
        if table in ("coil", "discrete_input"):
            bits = image.tables[table]  # 16 bits a register, bit 0 first
            for reg in range(len(bits) // 16):
                chunk = bits[reg * 16 : reg * 16 + 16]
                registers[reg] = sum(1 << i for i, b in enumerate(chunk) if b)
        else:
            offset = address - start_address
            registers[offset : offset + count] = image.get(table, address, count)
        return None

    return action


def _device(unit: int, image: DeviceImage) -> SimDevice:
    n = image.size
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=[False] * n, datatype=DataType.BITS)],
            [SimData(0, values=[False] * n, datatype=DataType.BITS)],
            [SimData(0, values=[0] * n, datatype=DataType.REGISTERS)],
            [SimData(0, values=[0] * n, datatype=DataType.REGISTERS)],
        ),
        action=_action(image),
    )


class SimServer:
    """Serves `devices` (unit id to image) until closed; `async with` starts it.

    `port=0` picks a free port, kept across `stop()` and `start()`, so a test can take
    the device away and bring it back at the same address.
    """

    def __init__(
        self,
        devices: dict[int, DeviceImage],
        transport: Transport = "tcp",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str = "",
        baudrate: int = 19200,
    ) -> None:
        self.devices = devices
        self.transport = transport
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self.baudrate = baudrate
        self._server: ModbusBaseServer | None = None

    async def start(self) -> None:
        sims = [_device(unit, image) for unit, image in self.devices.items()]
        server: ModbusBaseServer
        if self.transport == "rtu":
            server = ModbusSerialServer(
                sims,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                ignore_missing_devices=True,
            )
        else:
            framer = FramerType.RTU if self.transport == "rtu-tcp" else FramerType.SOCKET
            server = ModbusTcpServer(
                sims,
                framer=framer,
                address=(self.host, self.port),
                ignore_missing_devices=True,
            )
        await server.serve_forever(background=True)
        self._server = server
        if self.transport != "rtu":
            listener = cast(asyncio.Server, server.transport)
            self.port = listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
